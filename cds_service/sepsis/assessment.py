"""What one sepsis scoring of one patient found: the value objects the cards are built from.

``cds_service.sepsis.assess`` produces a ``SepsisAssessment``; ``cds_service.cards.sepsis`` turns
it into cards. Nothing here talks to Redis, ORT or FHIR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Literal

import numpy as np
import numpy.typing as npt

from cds_service.scores import TimedValue


class RiskBand(StrEnum):
    """Bands cut at the model card's two operating points (chosen on training-side patients)."""

    #: below the high-sensitivity level: no card
    LOW = "low"
    #: at or above the high-sensitivity level, below the alert level
    ELEVATED = "elevated"
    #: at or above the alert level (the utility-optimal operating point)
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {RiskBand.LOW: 0, RiskBand.ELEVATED: 1, RiskBand.HIGH: 2}


@dataclass(frozen=True)
class ModelInfo:
    """The model version behind a score, as its card and manifest describe it."""

    version: str
    #: what the probability means, quoted from the manifest ("the probability that this adult ICU
    #: patient meets Sepsis-3 within about the next 6 hours (or already does)")
    outcome: str
    alert_level: float
    high_sensitivity_level: float
    #: where the service serves this version's model card (an absolute URL)
    card_url: str
    #: held-out figures at the alert level on a hospital the model did not train on, when the
    #: evaluation has them: keys "split" ("A->B"), "sensitivity", "ppv",
    #: "alerts_per_100_patient_days"
    held_out: dict[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Driver:
    """One of the patient's own variables and how much it moves the risk.

    ``effect`` is risk(as measured) - risk(with this variable's features reset to the reference
    population's median): positive raises the risk. ``value``/``time`` are the newest measurement
    in the look-back. Context facts (age, time in ICU, sex, ICU type) have no time, and sex and
    ICU type no number either: their label says it ("Sex: female").
    """

    variable: str
    label: str
    unit: str
    value: float | None
    time: datetime | None
    effect: float

    @property
    def direction(self) -> Literal["raises", "lowers"]:
        return "raises" if self.effect > 0 else "lowers"


@dataclass(frozen=True)
class TrendPoint:
    """The risk of an earlier hour, recomputed from the data held now."""

    hours_ago: int
    time: datetime
    risk: float


@dataclass(frozen=True)
class SepsisAssessment:
    patient_id: str
    encounter_id: str | None
    now: datetime
    #: calibrated probability (model card's outcome)
    risk: float
    band: RiskBand
    model: ModelInfo
    #: oldest first, ending with the current hour (hours_ago 0); may be shorter than 24 h early in
    #: a stay
    trend: list[TrendPoint]
    #: largest |effect| first
    drivers: list[Driver]
    newest_vital: datetime | None
    newest_lab: datetime | None
    #: labels of key sepsis variables not measured within the model's 72 h look-back
    missing: list[str]
    #: "prefetch-only" when the Redis timeline was unavailable: the card must say so
    history: Literal["timeline", "prefetch-only"]
    #: signs of possible septic shock found in the patient's newest values (text, e.g.
    #: "MAP 58 mmHg at 2026-12-01T10:00Z"): hypotension (MAP < 65 mmHg or SBP < 90 mmHg) or
    #: lactate >= 4 mmol/L, the SSC 2018 bundle's triggers for fluids
    shock_signs: list[str]
    hypotension: bool
    lactate: TimedValue | None
    weight_kg: TimedValue | None
    #: observations the service could not use (bad unit, implausible, unmapped code), by reason
    unusable: dict[str, int] = field(default_factory=dict)
    #: the current hour's feature row that gave ``risk`` (for drift counts and the shadow)
    features: npt.NDArray[np.float32] | None = field(default=None, compare=False, repr=False)
