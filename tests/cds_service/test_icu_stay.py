"""Which encounters anchor a sepsis score: an active stay with an ICU location."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cds_service.sepsis.stay import ROLE_TYPE_SYSTEM, icu_stay

ADMITTED = "2026-03-01T02:00:00Z"
ICU_IN = "2026-03-01T08:30:00Z"


def encounter(*locations: dict[str, Any], status: str = "in-progress") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "e1",
        "status": status,
        "period": {"start": ADMITTED},
        "location": list(locations),
    }


def location(display: str, start: str = ICU_IN, **extra: Any) -> dict[str, Any]:
    return {"location": {"display": display}, "period": {"start": start}, **extra}


def test_icu_admission_is_the_icu_location_start() -> None:
    stay = icu_stay(
        encounter(location("Ward 3", ADMITTED), location("Medical Intensive Care Unit (MICU)")),
        [],
        require_icu=True,
    )
    assert stay is not None
    assert stay.icu_start == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    assert stay.unit == "MICU"
    assert stay.hospital_to_icu_hours == 6.5
    assert stay.encounter_id == "e1"


def test_surgical_unit_and_searchset_bundles() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": encounter(location("SICU bed 4"))}],
    }
    stay = icu_stay(bundle, [], require_icu=True)
    assert stay is not None and stay.unit == "SICU"


def test_role_type_code_or_site_location_counts_without_a_display() -> None:
    typed = {
        "location": {"reference": "Location/x"},
        "physicalType": {"coding": [{"system": ROLE_TYPE_SYSTEM, "code": "ICU"}]},
        "period": {"start": ICU_IN},
    }
    assert icu_stay(encounter(typed), [], require_icu=True) is not None
    site = {"location": {"reference": "Location/unit-7"}, "period": {"start": ICU_IN}}
    assert icu_stay(encounter(site), [], require_icu=True) is None
    assert icu_stay(encounter(site), ["Location/unit-7"], require_icu=True) is not None
    stay = icu_stay(encounter(site), ["Location/unit-7"], require_icu=True)
    assert stay is not None and stay.unit is None


def test_not_scored_outside_an_active_icu_stay() -> None:
    ward = encounter(location("Ward 3 (general medicine)", ADMITTED))
    assert icu_stay(ward, [], require_icu=True) is None
    left = location("MICU", ICU_IN, period={"start": ICU_IN, "end": "2026-03-02T08:00:00Z"})
    assert icu_stay(encounter(left), [], require_icu=True) is None
    done = encounter(location("MICU"), status="finished")
    assert icu_stay(done, [], require_icu=True) is None
    assert icu_stay(None, [], require_icu=True) is None
    assert icu_stay({"resourceType": "Patient"}, [], require_icu=True) is None


def test_a_site_may_score_outside_the_icu_anchored_at_admission() -> None:
    ward = encounter(location("Ward 3", ADMITTED))
    stay = icu_stay(ward, [], require_icu=False)
    assert stay is not None
    assert stay.icu_start == datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def test_malformed_parts_are_ignored() -> None:
    broken = encounter(
        "not a location",  # type: ignore[arg-type]
        {"location": "x", "period": []},
        location("MICU", start="yesterday"),
    )
    stay = icu_stay(broken, [], require_icu=True)
    # the MICU entry with an unreadable start falls back to the encounter's own start
    assert stay is not None and stay.icu_start == datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
