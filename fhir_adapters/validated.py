"""The validating reader: Observations through fhir.resources, then the same canonicalisation.

fhir.resources 8.x ships R5 at its top level, plus ``R4B`` and ``STU3``; it has no R4 package.
R4B is the nearest to R4 and identical to it for Observation, Patient and Encounter, so R4B is
what this module uses. It costs about 40 ms for a 200-Observation Bundle (the lean reader in
``fhir_adapters.observations`` about 1 ms), so it runs off the request path: in tests that prove the
two readers agree, and wherever a resource must be validated or built.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from fhir.resources.R4B.observation import Observation, ObservationComponent

from fhir_adapters.observations import UCUM, RawObservation, RawValue


def _codings(concept: Any) -> tuple[tuple[str, str], ...]:
    if concept is None:
        return ()
    return tuple(
        (str(c.system), str(c.code))
        for c in concept.coding or ()
        if c.system is not None and c.code is not None
    )


def _time(value: datetime | date | str | None) -> datetime | None:
    # A `date` (no clock time) is too imprecise to bin by hour: the lean reader skips it too.
    if not isinstance(value, datetime) or value.tzinfo is None:
        return None
    return value.astimezone(UTC)


def _value(element: Observation | ObservationComponent, key: str) -> RawValue:
    value: float | None = None
    unit: str | None = None
    quantity = element.valueQuantity
    if quantity is not None:
        if quantity.value is not None:
            value = float(quantity.value)
            code = str(quantity.code) if quantity.code is not None else None
            if code is not None and quantity.system == UCUM:
                unit = code
            else:
                unit = str(quantity.unit) if quantity.unit is not None else code
    elif element.valueInteger is not None:
        value = float(element.valueInteger)
    elif element.valueBoolean is not None:
        value = 1.0 if element.valueBoolean else 0.0
    return RawValue(
        codings=_codings(element.code),
        value=value,
        unit=unit,
        absent=element.dataAbsentReason is not None,
        key=key,
    )


def extract_validated(resource: dict[str, Any], full_url: str | None = None) -> RawObservation:
    """Like ``observations.extract``, but from a fully validated fhir.resources R4B model."""
    model = Observation.model_validate(resource)
    if model.effectiveDateTime is not None:
        when = _time(model.effectiveDateTime)
    elif model.effectiveInstant is not None:
        when = _time(model.effectiveInstant)
    elif model.effectivePeriod is not None:
        when = _time(model.effectivePeriod.end) or _time(model.effectivePeriod.start)
    else:
        when = None
    reference = model.subject.reference if model.subject is not None else None
    patient = str(reference).removeprefix("urn:uuid:").rsplit("/", 1)[-1] if reference else None
    source = f"Observation/{model.id}" if model.id else (full_url or "Observation/?")
    return RawObservation(
        source=source,
        patient=patient,
        status=str(model.status) if model.status is not None else None,
        time=when,
        main=_value(model, ""),
        components=tuple(_value(c, f"c{i}") for i, c in enumerate(model.component or ())),
    )
