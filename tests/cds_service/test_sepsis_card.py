"""The sepsis risk card across patient states: conformance, tiers, order sets, wording.

``test_sepsis_card_builders.py`` checks the card's exact rows and labels for one typical patient;
this module sweeps the combinations (band, shock, hypotension, weight, lactate, encounter,
configured order sets) and checks what must hold in every one of them.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from cds_service.cards.deterioration import OVERRIDE_REASON_SYSTEM
from cds_service.cards.sepsis import (
    BLOOD_CULTURE_LOINC,
    LACTATE_LOINC,
    SEPSIS_OVERRIDE_CODES,
    build_sepsis_card,
)
from cds_service.hooks_models import Card, HookResponse
from cds_service.scores import TimedValue, iso_utc
from cds_service.sepsis.assessment import (
    Driver,
    ModelInfo,
    RiskBand,
    SepsisAssessment,
    TrendPoint,
)
from cds_service.settings import SepsisSettings

from cds_validator import validate_response

NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
MODEL = ModelInfo(
    version="sepsis-test-7",
    outcome="the chance that this patient meets Sepsis-3 within about 6 hours",
    alert_level=0.021,
    high_sensitivity_level=0.012,
    card_url="https://cds.example/model-cards/sepsis-test-7",
    held_out={
        "split": "B->A",
        "sensitivity": 0.52,
        "ppv": 0.061,
        "alerts_per_100_patient_days": 31.0,
    },
)
CANONICAL = "https://hospital.example/PlanDefinition/"
ORDER_SETS: dict[str, dict[str, Any]] = {
    kind: {
        "label": f"Site {kind} set",
        "resource": {
            "resourceType": "RequestGroup",
            "status": "draft",
            "intent": "proposal",
            "instantiatesCanonical": [CANONICAL + kind],
            "action": [{"title": f"{kind} step"}],
        },
    }
    for kind in ("antibiotics", "fluids", "vasopressors")
}
SITE_LABELS = tuple(order_set["label"] for order_set in ORDER_SETS.values())
LAB_CODES = {LACTATE_LOINC["code"], BLOOD_CULTURE_LOINC["code"]}


def make(risk: float = 0.05, band: RiskBand = RiskBand.HIGH, **changes: Any) -> SepsisAssessment:
    base = SepsisAssessment(
        patient_id="pt-42",
        encounter_id="enc-9",
        now=NOW,
        risk=risk,
        band=band,
        model=MODEL,
        trend=[TrendPoint(h, NOW - timedelta(hours=h), 0.01) for h in range(5, -1, -1)],
        drivers=[
            Driver("heart_rate", "Heart rate", "/min", 128, NOW - timedelta(minutes=45), 0.02),
        ],
        newest_vital=NOW - timedelta(minutes=45),
        newest_lab=NOW - timedelta(hours=3, minutes=10),
        missing=[],
        history="timeline",
        shock_signs=[],
        hypotension=False,
        lactate=None,
        weight_kg=None,
    )
    return dataclasses.replace(base, **changes)


def shocked(**changes: Any) -> SepsisAssessment:
    """High risk with hypotension and a known weight."""
    values: dict[str, Any] = {
        "shock_signs": [f"MAP 58 mmHg at {iso_utc(NOW)}"],
        "hypotension": True,
        "weight_kg": TimedValue(70.0, NOW - timedelta(days=2)),
    }
    return make(**(values | changes))


def site(*kinds: str, smart: str | None = None) -> SepsisSettings:
    return SepsisSettings(
        order_sets={kind: ORDER_SETS[kind] for kind in kinds}, smart_app_url=smart
    )


def build(a: SepsisAssessment, s: SepsisSettings | None = None) -> Card:
    card = build_sepsis_card(a, s or site(), card_uuid=uuid4())
    assert card is not None
    return card


def resources(card: Card) -> list[dict[str, Any]]:
    return [
        action.resource
        for suggestion in card.suggestions or []
        for action in suggestion.actions or []
        if action.resource is not None
    ]


def lab_codes(card: Card) -> set[str]:
    return {
        coding["code"]
        for r in resources(card)
        if r["resourceType"] == "ServiceRequest" and "code" in r
        for coding in r["code"]["coding"]
    }


def site_kinds(card: Card) -> list[str]:
    """Which configured order sets a card offers, by their canonical."""
    return [
        r["instantiatesCanonical"][0].removeprefix(CANONICAL)
        for r in resources(card)
        if "instantiatesCanonical" in r
    ]


def text(card: Card) -> str:
    return card.summary + "\n" + (card.detail or "")


# ------------------------------------------------------------- every state, the invariants

STATES = list(
    itertools.product(
        (RiskBand.ELEVATED, RiskBand.HIGH),
        (False, True),  # shock sign present
        (False, True),  # hypotension (only with a shock sign)
        (None, 82.5),  # weight
        (None, 1.4, 4.8),  # lactate
        (None, "enc-9"),  # encounter
        ((), ("antibiotics", "fluids", "vasopressors")),
        ("timeline", "prefetch-only"),
    )
)


@pytest.mark.parametrize(
    ("band", "shock", "hypotension", "weight", "lactate", "encounter", "kinds", "history"),
    [state for state in STATES if state[1] or not state[2]],
)
def test_every_state_gives_a_conformant_card(
    band: RiskBand,
    shock: bool,
    hypotension: bool,
    weight: float | None,
    lactate: float | None,
    encounter: str | None,
    kinds: tuple[str, ...],
    history: str,
) -> None:
    a = make(
        0.999 if band is RiskBand.HIGH else 0.015,
        band,
        shock_signs=["SBP 72 mmHg"] if shock else [],
        hypotension=hypotension,
        weight_kg=None if weight is None else TimedValue(weight, NOW - timedelta(hours=30)),
        lactate=None if lactate is None else TimedValue(lactate, NOW - timedelta(hours=2)),
        encounter_id=encounter,
        history=history,
    )
    card_uuid = uuid4()
    card = build_sepsis_card(a, site(*kinds), card_uuid=card_uuid)
    assert card is not None
    assert validate_response(HookResponse(cards=[card]).to_json()) == []
    assert card.uuid == card_uuid
    assert len(card.summary) < 140
    assert "NEWS2" not in text(card)
    suggestion_ids = [s.uuid for s in card.suggestions or []]
    assert None not in suggestion_ids
    assert len(set(suggestion_ids)) == len(suggestion_ids)
    assert card_uuid not in suggestion_ids
    # The end-to-end test walks every suggestion's actions: none may be text only.
    assert all(s.actions for s in card.suggestions or [])
    assert card.selectionBehavior == "any"
    for resource in resources(card):
        assert resource["subject"] == {"reference": "Patient/pt-42"}
        if encounter is None:
            assert "encounter" not in resource
        else:
            assert resource["encounter"] == {"reference": f"Encounter/{encounter}"}
    assert ("partial history" in (card.detail or "").lower()) is (history == "prefetch-only")


def test_a_card_uuid_is_the_one_passed_in_and_low_gets_none() -> None:
    given = UUID("12345678-1234-5678-1234-567812345678")
    card = build_sepsis_card(make(), site(), card_uuid=given)
    assert card is not None and card.uuid == given
    for kinds in ((), tuple(ORDER_SETS)):
        low = make(0.002, RiskBand.LOW, shock_signs=["x"], hypotension=True)
        assert build_sepsis_card(low, site(*kinds), card_uuid=given) is None


# ----------------------------------------------------------------------- summary and band


def test_summary_rounds_halves_up_and_names_the_band() -> None:
    # 1.25 % would read 1.2 % with Python's round (halves to even).
    elevated = build(make(0.0125, RiskBand.ELEVATED))
    assert "1.3 %" in elevated.summary
    assert "elevated" in elevated.summary.lower()
    assert elevated.indicator == "info"
    high = build(make(0.0455))
    assert "4.6 %" in high.summary and "high" in high.summary.lower()
    assert high.indicator == "warning"


def test_possible_septic_shock_is_critical_and_said_in_the_summary() -> None:
    lactate_only = make(shock_signs=["Lactate 4.6 mmol/L"], lactate=TimedValue(4.6, NOW))
    card = build(lactate_only)
    assert card.indicator == "critical"
    assert "septic shock" in card.summary.lower()
    assert "septic shock" not in build(make()).summary.lower()


# ------------------------------------------------------------------------------- tiers


def test_elevated_offers_only_a_lactate_even_with_every_order_set_configured() -> None:
    card = build(make(0.015, RiskBand.ELEVATED), site(*ORDER_SETS))
    assert lab_codes(card) == {LACTATE_LOINC["code"]}
    assert site_kinds(card) == []
    assert len(card.suggestions or []) == 1
    assert not any(s.isRecommended for s in card.suggestions or [])
    assert resources(card)[0]["priority"] != "stat"
    assert "reassess" in (card.detail or "").lower()


def test_high_without_shock_offers_cultures_lactate_and_antibiotics_but_no_fluids() -> None:
    card = build(make(), site(*ORDER_SETS))
    assert lab_codes(card) == LAB_CODES
    assert site_kinds(card) == ["antibiotics"]
    antibiotics = next(s for s in card.suggestions or [] if s.label.startswith("Site antibiotics"))
    assert "3 h" in antibiotics.label and "1 h" in antibiotics.label
    assert all(s.isRecommended for s in card.suggestions or [])
    assert {r["priority"] for r in resources(card) if r["resourceType"] == "ServiceRequest"} == {
        "stat"
    }
    assert "mL/kg" not in text(card)


def test_shock_with_hypotension_offers_fluids_and_vasopressors_last() -> None:
    card = build(shocked(), site(*ORDER_SETS))
    assert site_kinds(card) == ["antibiotics", "fluids", "vasopressors"]
    labels = [s.label for s in card.suggestions or []]
    antibiotics = next(label for label in labels if label.startswith("Site antibiotics"))
    assert "within 1 h" in antibiotics and "3 h" not in antibiotics
    fluids = next(label for label in labels if label.startswith("Site fluids"))
    # 30 mL/kg x 70 kg, and when the weight was taken
    assert "2,100 mL" in fluids and "70 kg" in fluids
    assert iso_utc(NOW - timedelta(days=2)) in fluids
    assert labels[-1].startswith("Site vasopressors")
    assert "MAP ≥ 65" in (card.detail or "")  # the target of the vasopressors


@pytest.mark.parametrize(
    ("kg", "ml"), [(55.0, "1,650 mL"), (100.0, "3,000 mL"), (41.0, "1,230 mL")]
)
def test_the_fluid_volume_is_thirty_millilitres_a_kilogram(kg: float, ml: str) -> None:
    a = shocked(weight_kg=TimedValue(kg, NOW - timedelta(hours=5)))
    with_set = build(a, site("fluids"))
    assert any(ml in s.label for s in with_set.suggestions or [])
    without_set = build(a)
    assert ml in (without_set.detail or "")


def test_raised_lactate_without_hypotension_gives_fluids_but_no_vasopressors() -> None:
    a = make(shock_signs=["Lactate 5.2 mmol/L"], lactate=TimedValue(5.2, NOW - timedelta(hours=1)))
    card = build(a, site(*ORDER_SETS))
    assert site_kinds(card) == ["antibiotics", "fluids"]
    assert "vasopressor" not in (card.detail or "").lower()


def test_no_weight_says_the_dose_needs_one() -> None:
    a = shocked(weight_kg=None)
    for card in (build(a, site("fluids")), build(a)):
        assert "weigh" in text(card).lower()
        assert " mL for " not in text(card)


@pytest.mark.parametrize(("value", "remeasure"), [(1.1, False), (2.0, False), (2.1, True)])
def test_lactate_is_re_measured_only_above_two(value: float, remeasure: bool) -> None:
    card = build(make(lactate=TimedValue(value, NOW - timedelta(hours=2))))
    lactate = next(
        s
        for s in card.suggestions or []
        if s.actions
        and s.actions[0].resource
        and s.actions[0].resource["code"]["coding"][0]["code"] == LACTATE_LOINC["code"]
    )
    assert ("re-measure" in lactate.label.lower()) is remeasure


def test_blood_cultures_say_before_antibiotics_in_the_order() -> None:
    card = build(make())
    cultures = next(
        r for r in resources(card) if r["code"]["coding"][0]["code"] == BLOOD_CULTURE_LOINC["code"]
    )
    assert (cultures["status"], cultures["intent"]) == ("draft", "proposal")
    assert "before" in cultures["note"][0]["text"].lower()
    assert cultures["code"]["text"]
    assert cultures["code"]["coding"][0]["system"] == "http://loinc.org"


# ---------------------------------------------------------------- order sets and drugs


def test_without_order_sets_no_drug_is_offered_and_the_text_sends_to_the_local_set() -> None:
    card = build(shocked())
    assert site_kinds(card) == []
    assert {r["resourceType"] for r in resources(card)} == {"ServiceRequest"}
    assert lab_codes(card) == LAB_CODES
    detail = card.detail or ""
    assert "local sepsis antibiotic" in detail
    assert "fluid" in detail and "vasopressor" in detail
    assert not any(label in detail for label in SITE_LABELS)


def test_configured_order_sets_are_copied_not_shared() -> None:
    settings = site(*ORDER_SETS)
    before = settings.model_dump()
    card = build(shocked(), settings)
    offered = [r for r in resources(card) if "instantiatesCanonical" in r]
    assert len(offered) == 3
    for resource in offered:
        resource["action"].append({"title": "changed by the client"})
        resource["instantiatesCanonical"].clear()
    assert settings.model_dump() == before
    again = build(shocked(), settings)
    assert site_kinds(again) == ["antibiotics", "fluids", "vasopressors"]
    assert all("subject" not in s.resource for s in settings.order_sets.values())


# ------------------------------------------------------------------------------- detail


def test_detail_quotes_the_outcome_levels_and_the_held_out_figures() -> None:
    detail = build(make()).detail or ""
    assert MODEL.outcome in detail
    assert "2.1 %" in detail and "1.2 %" in detail  # alert and high-sensitivity levels
    assert "B->A" in detail and "52" in detail and "6.1" in detail
    bare = dataclasses.replace(MODEL, held_out={})
    assert "B->A" not in (build(make(model=bare)).detail or "")


def test_detail_handles_a_short_trend_a_context_driver_and_no_lab() -> None:
    a = make(
        trend=[TrendPoint(0, NOW, 0.05)],
        drivers=[Driver("sex", "Sex: female", "", None, None, -0.001)],
        newest_lab=None,
        missing=["Lactate", "White cell count"],
        unusable={"implausible value": 3},
    )
    detail = build(a).detail or ""
    assert "no earlier hour" in detail.lower()
    assert "| Sex: female |" in detail and "lowers risk" in detail
    assert "none in the last 72 h" in detail
    assert "Lactate, White cell count" in detail
    assert "3 (implausible value)" in detail


def test_detail_gives_each_trend_hour_and_the_version() -> None:
    trend = [TrendPoint(h, NOW - timedelta(hours=h), 0.001 * (30 - h)) for h in range(23, -1, -1)]
    detail = build(make(trend=trend)).detail or ""
    assert "recomputed" in detail
    assert "now 3.0 %" in detail
    assert MODEL.version in detail


# -------------------------------------------------------- source, links, override reasons


def test_source_links_and_override_reasons() -> None:
    card = build(make())
    assert MODEL.version in card.source.label
    assert card.source.url == MODEL.card_url
    assert [link.type for link in card.links or []] == ["absolute"]
    reasons = card.overrideReasons or []
    assert [(r.code, r.display) for r in reasons] == list(SEPSIS_OVERRIDE_CODES)
    assert {r.system for r in reasons} == {OVERRIDE_REASON_SYSTEM}
    assert {"already-treated", "other-diagnosis", "comfort-care", "not-septic"} == {
        r.code for r in reasons
    }
    smart = build(make(), site(smart="https://apps.example/sepsis/launch"))
    assert [(link.type, link.url) for link in smart.links or []] == [
        ("absolute", MODEL.card_url),
        ("smart", "https://apps.example/sepsis/launch"),
    ]
