"""The canonical observation: the one currency between FHIR, Redis and training (DESIGN.md).

Every source (a FHIR Observation, a PhysioNet PSV row) becomes a list of these: one variable from
the catalogue (``fhir_adapters.variables``), one UTC time, one value in that variable's canonical
UCUM unit. ``source`` identifies where it came from, stably, so the same observation merged twice
is stored once (e.g. ``Observation/abc`` or ``Observation/abc#component-1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class CanonicalObservation:
    patient: str
    variable: str
    time: datetime
    value: float
    source: str
