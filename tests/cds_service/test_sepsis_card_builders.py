"""The sepsis card and the order work-up card, built from hand-made assessments."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from cds_service.cards.sepsis import build_sepsis_card, value_text
from cds_service.cards.sepsis_orders import build_workup_card, draft_order_content
from cds_service.hooks_models import Card, HookResponse
from cds_service.scores import TimedValue
from cds_service.sepsis.assessment import (
    Driver,
    ModelInfo,
    RiskBand,
    SepsisAssessment,
    TrendPoint,
)
from cds_service.settings import SepsisSettings

from cds_validator import validate_response

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MODEL = ModelInfo(
    version="sepsis-gbdt-test-1",
    outcome="the probability of Sepsis-3 within about 6 hours",
    alert_level=0.021,
    high_sensitivity_level=0.013,
    card_url="https://cds.example/model-cards/sepsis-gbdt-test-1",
    held_out={
        "split": "A->B",
        "sensitivity": 0.48,
        "ppv": 0.068,
        "alerts_per_100_patient_days": 27.7,
    },
)
ABX = {
    "label": "Adult sepsis antibiotics",
    "resource": {"resourceType": "RequestGroup", "status": "draft", "intent": "proposal"},
}
FLUIDS = {
    "label": "Sepsis crystalloid bolus",
    "resource": {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal"},
}
PRESSORS = {
    "label": "Vasopressor protocol",
    "resource": {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal"},
}


def assessment(
    risk: float = 0.05, band: RiskBand = RiskBand.HIGH, **changes: Any
) -> SepsisAssessment:
    base = SepsisAssessment(
        patient_id="p1",
        encounter_id="e1",
        now=NOW,
        risk=risk,
        band=band,
        model=MODEL,
        trend=[
            TrendPoint(h, NOW - timedelta(hours=h), 0.004 + 0.002 * (23 - h))
            for h in range(23, -1, -1)
        ],
        drivers=[
            Driver(
                "sbp", "Systolic blood pressure", "mm[Hg]", 84, NOW - timedelta(minutes=20), 0.012
            ),
            Driver("temperature", "Body temperature", "Cel", 38.9, NOW - timedelta(hours=2), 0.008),
            Driver("platelets", "Platelets", "10*3/uL", 310, NOW - timedelta(hours=9), -0.003),
        ],
        newest_vital=NOW - timedelta(minutes=20),
        newest_lab=NOW - timedelta(hours=9),
        missing=["Lactate", "Bilirubin total"],
        history="timeline",
        shock_signs=[],
        hypotension=False,
        lactate=None,
        weight_kg=None,
        unusable={"unit not convertible": 2},
    )
    return dataclasses.replace(base, **changes)


def settings(**order_sets: Any) -> SepsisSettings:
    return SepsisSettings(order_sets=order_sets)


def card_of(a: SepsisAssessment, s: SepsisSettings | None = None) -> Card:
    card = build_sepsis_card(a, s or settings(), card_uuid=uuid4())
    assert card is not None
    assert validate_response(HookResponse(cards=[card]).to_json()) == []
    return card


def labels(card: Card) -> list[str]:
    return [s.label for s in card.suggestions or []]


def resources(card: Card) -> list[dict[str, Any]]:
    return [a.resource for s in card.suggestions or [] for a in s.actions or [] if a.resource]


def test_no_card_below_the_high_sensitivity_level() -> None:
    assert build_sepsis_card(assessment(0.005, RiskBand.LOW), settings(), card_uuid=uuid4()) is None


@pytest.mark.parametrize(
    ("band", "shock", "indicator"),
    [
        (RiskBand.ELEVATED, [], "info"),
        (RiskBand.HIGH, [], "warning"),
        (RiskBand.HIGH, ["Mean arterial pressure 58 mmHg"], "critical"),
    ],
)
def test_indicator_follows_the_operating_points_and_shock(
    band: RiskBand, shock: list[str], indicator: str
) -> None:
    card = card_of(assessment(0.03, band, shock_signs=shock, hypotension=bool(shock)))
    assert card.indicator == indicator
    assert "3.0 %" in card.summary


@pytest.mark.parametrize("risk", [0.0135, 0.999, 0.0205])
def test_summary_is_short_and_states_band_and_risk(risk: float) -> None:
    band = RiskBand.HIGH if risk >= MODEL.alert_level else RiskBand.ELEVATED
    long_model = dataclasses.replace(MODEL, version="sepsis-gbdt-" + "x" * 80)
    card = card_of(assessment(risk, band, model=long_model, shock_signs=["SBP 70 mmHg"]))
    assert len(card.summary) < 140
    assert band.value in card.summary.lower()


def test_detail_names_drivers_trend_freshness_missing_and_version() -> None:
    detail = card_of(assessment()).detail or ""
    assert (
        "| Systolic blood pressure | 84 mmHg | 2026-03-01T11:40:00Z | raises risk by 1.2 points |"
        in detail
    )
    assert "| Body temperature | 38.9 °C |" in detail
    assert "lowers risk by 0.3 points" in detail
    assert "Trend over the last 24 h (rising)" in detail
    assert "20 h ago 1.0 %" in detail and "now 5.0 %" in detail
    assert "newest vital sign 2026-03-01T11:40:00Z (20 min ago)" in detail
    assert "(9 h 0 min ago)" in detail
    assert "Not measured in the last 72 h: Lactate, Bilirubin total." in detail
    assert "2 (unit not convertible)" in detail
    assert "sepsis-gbdt-test-1" in detail
    assert "A->B" in detail and "48%" in detail
    assert "Partial history" not in detail


def test_partial_history_is_said_only_when_the_timeline_was_missing() -> None:
    detail = card_of(assessment(history="prefetch-only")).detail or ""
    assert detail.startswith("**Partial history:**")


def test_the_sepsis_card_never_mentions_news2() -> None:
    for band in (RiskBand.ELEVATED, RiskBand.HIGH):
        card = card_of(
            assessment(band=band, shock_signs=["x"], hypotension=True), settings(antibiotics=ABX)
        )
        assert "NEWS2" not in card.summary + (card.detail or "")


def test_elevated_risk_suggests_a_lactate_only() -> None:
    card = card_of(assessment(0.015, RiskBand.ELEVATED), settings(antibiotics=ABX, fluids=FLUIDS))
    assert labels(card) == ["Measure lactate"]
    assert "not suggested" in (card.detail or "")


def test_high_risk_suggests_cultures_and_lactate_and_only_configured_order_sets() -> None:
    bare = card_of(assessment())
    codes = {c["code"] for r in resources(bare) for c in r["code"]["coding"]}
    assert codes == {"600-7", "2524-7"}
    assert all(r["resourceType"] == "ServiceRequest" for r in resources(bare))
    assert "Use your local sepsis antibiotic order set" in (bare.detail or "")
    configured = settings(antibiotics=ABX)
    card = card_of(assessment(), configured)
    assert any(label.startswith("Adult sepsis antibiotics: within 3 h") for label in labels(card))
    group = next(r for r in resources(card) if r["resourceType"] == "RequestGroup")
    assert group["subject"] == {"reference": "Patient/p1"}
    assert group["encounter"] == {"reference": "Encounter/e1"}
    assert "subject" not in configured.order_sets["antibiotics"].resource  # not mutated
    uuids = [s.uuid for s in card.suggestions or []]
    assert len(set(uuids)) == len(uuids) and None not in uuids
    assert card.selectionBehavior == "any"


def test_shock_adds_fluids_with_the_weight_based_volume_and_pressors_when_hypotensive() -> None:
    shocked = assessment(
        shock_signs=["Mean arterial pressure 58 mmHg"],
        hypotension=True,
        weight_kg=TimedValue(72.4, NOW - timedelta(days=1)),
        lactate=TimedValue(4.6, NOW - timedelta(hours=1)),
    )
    card = card_of(shocked, settings(antibiotics=ABX, fluids=FLUIDS, vasopressors=PRESSORS))
    found = labels(card)
    assert any("within 1 h" in label for label in found)
    assert any("30 mL/kg = 2,170 mL for 72.4 kg" in label for label in found)
    assert any(label.startswith("Vasopressor protocol") for label in found)
    assert any(label.startswith("Re-measure lactate (last 4.6 mmol/L") for label in found)
    no_weight = card_of(
        dataclasses.replace(shocked, weight_kg=None, hypotension=False), settings(fluids=FLUIDS)
    )
    assert any("needs the patient's weight" in label for label in labels(no_weight))
    assert not any("Vasopressor" in label for label in labels(no_weight))


def test_links_and_override_reasons() -> None:
    card = card_of(assessment())
    assert [(link.type, link.url) for link in card.links or []] == [("absolute", MODEL.card_url)]
    assert {r.code for r in card.overrideReasons or []} == {
        "already-treated", "other-diagnosis", "comfort-care", "not-septic",
    }  # fmt: skip
    smart = card_of(assessment(), SepsisSettings(smart_app_url="https://apps.example/launch"))
    assert ("smart", "https://apps.example/launch") in [(x.type, x.url) for x in smart.links or []]


def test_value_text_uses_charted_units() -> None:
    assert value_text(7.312, "[pH]") == "7.31"
    assert value_text(0.25, "1") == "0.25"
    assert value_text(120.0, "/min") == "120 /min"


def _order(kind: str, system: str, code: str, key: str = "code") -> dict[str, Any]:
    return {"resource": {"resourceType": kind, key: {"coding": [{"system": system, "code": code}]}}}


def _bundle(*entries: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": list(entries)}


LOINC = "http://loinc.org"
ATC = "http://www.whocc.no/atc"


def test_draft_order_content_reads_lactate_cultures_and_atc_antibiotics() -> None:
    content = draft_order_content(
        _bundle(
            _order("ServiceRequest", LOINC, "32693-4"),
            _order("ServiceRequest", LOINC, "17928-3"),
            _order("MedicationRequest", ATC, "J01DD04", key="medicationCodeableConcept"),
        )
    )
    assert (content.has_lactate, content.has_blood_culture, content.has_antibiotic) == (
        True,
        True,
        True,
    )
    other = draft_order_content(
        _bundle(
            _order(
                "ServiceRequest", "http://snomed.info/sct", "2524-7"
            ),  # right code, wrong system
            _order("MedicationRequest", ATC, "N02BE01", key="medicationCodeableConcept"),
        )
    )
    assert (other.has_lactate, other.has_blood_culture, other.has_antibiotic) == (
        False,
        False,
        False,
    )


@pytest.mark.parametrize(
    "broken",
    [{}, {"entry": "x"}, {"entry": [None, 3, {"resource": []}, {"resource": {"code": "x"}}]},
     _bundle({"resource": {"resourceType": "ServiceRequest", "code": {"coding": [None, "x"]}}})],
)  # fmt: skip
def test_malformed_draft_orders_are_read_as_empty(broken: dict[str, Any]) -> None:
    content = draft_order_content(broken)
    assert not (content.has_lactate or content.has_blood_culture or content.has_antibiotic)


def test_workup_card_only_when_high_and_incomplete() -> None:
    nothing = draft_order_content(_bundle())
    card = build_workup_card(assessment(), nothing, card_uuid=uuid4())
    assert card is not None
    assert validate_response(HookResponse(cards=[card]).to_json()) == []
    assert "blood cultures and a lactate" in card.summary
    assert "NEWS2" not in card.summary + (card.detail or "")
    assert (
        build_workup_card(assessment(0.015, RiskBand.ELEVATED), nothing, card_uuid=uuid4()) is None
    )
    both = draft_order_content(
        _bundle(_order("ServiceRequest", LOINC, "2524-7"), _order("ServiceRequest", LOINC, "600-7"))
    )
    assert build_workup_card(assessment(), both, card_uuid=uuid4()) is None
    only_lactate = draft_order_content(_bundle(_order("ServiceRequest", LOINC, "2524-7")))
    partial = build_workup_card(assessment(), only_lactate, card_uuid=uuid4())
    assert partial is not None
    assert [s.label for s in partial.suggestions or []] == ["Blood cultures, before antibiotics"]


def test_antibiotic_without_cultures_says_draw_cultures_first() -> None:
    drafts = draft_order_content(
        _bundle(_order("MedicationRequest", ATC, "J01CR05", key="medicationCodeableConcept"))
    )
    card = build_workup_card(assessment(), drafts, card_uuid=uuid4())
    assert card is not None
    assert "blood cultures before the antibiotic" in card.summary
