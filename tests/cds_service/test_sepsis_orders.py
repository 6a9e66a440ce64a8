"""order-select/order-sign: reading draftOrders leniently, and the sepsis work-up card."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from cds_service.cards.sepsis import (
    BLOOD_CULTURE_LOINC,
    LACTATE_LOINC,
    SEPSIS_OVERRIDE_CODES,
)
from cds_service.cards.sepsis_orders import (
    DraftOrderContent,
    build_workup_card,
    draft_order_content,
)
from cds_service.hooks_models import Card, HookResponse
from cds_service.scores import TimedValue
from cds_service.sepsis.assessment import ModelInfo, RiskBand, SepsisAssessment, TrendPoint

from cds_validator import validate_response

NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
LOINC = "http://loinc.org"
LOINC_OID = "urn:oid:2.16.840.1.113883.6.1"
ATC = "http://www.whocc.no/atc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MODEL = ModelInfo(
    version="sepsis-test-7",
    outcome="the chance that this patient meets Sepsis-3 within about 6 hours",
    alert_level=0.021,
    high_sensitivity_level=0.012,
    card_url="https://cds.example/model-cards/sepsis-test-7",
)


def make(risk: float = 0.06, band: RiskBand = RiskBand.HIGH, **changes: Any) -> SepsisAssessment:
    base = SepsisAssessment(
        patient_id="pt-42",
        encounter_id="enc-9",
        now=NOW,
        risk=risk,
        band=band,
        model=MODEL,
        trend=[TrendPoint(0, NOW, risk)],
        drivers=[],
        newest_vital=NOW - timedelta(minutes=30),
        newest_lab=None,
        missing=[],
        history="timeline",
        shock_signs=[],
        hypotension=False,
        lactate=None,
        weight_kg=None,
    )
    return dataclasses.replace(base, **changes)


def service_request(code: str, system: str = LOINC) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "order",
            "code": {"coding": [{"system": system, "code": code}]},
        }
    }


def medication(code: str, system: str = ATC) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "MedicationRequest",
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": system, "code": code}]},
        }
    }


def bundle(*entries: Any) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": list(entries)}


def found(*entries: Any) -> tuple[bool, bool, bool]:
    content = draft_order_content(bundle(*entries))
    return content.has_lactate, content.has_blood_culture, content.has_antibiotic


def workup(a: SepsisAssessment, content: DraftOrderContent) -> Card:
    card = build_workup_card(a, content, card_uuid=uuid4())
    assert card is not None
    assert validate_response(HookResponse(cards=[card]).to_json()) == []
    return card


def suggested_codes(card: Card) -> list[str]:
    return [
        action.resource["code"]["coding"][0]["code"]
        for suggestion in card.suggestions or []
        for action in suggestion.actions or []
        if action.resource is not None
    ]


# ------------------------------------------------------------------------- reading drafts


@pytest.mark.parametrize("code", ["2524-7", "32693-4", "2518-9", "2519-7"])
@pytest.mark.parametrize("system", [LOINC, LOINC_OID])
def test_each_lactate_code_is_a_lactate(code: str, system: str) -> None:
    assert found(service_request(code, system)) == (True, False, False)


@pytest.mark.parametrize("code", ["600-7", "17928-3", "17934-1"])
@pytest.mark.parametrize("system", [LOINC, LOINC_OID])
def test_each_blood_culture_code_is_a_culture(code: str, system: str) -> None:
    assert found(service_request(code, system)) == (False, True, False)


@pytest.mark.parametrize(
    "entry",
    [
        service_request(
            "17929-1"
        ),  # "Bacteria # 2 identified in Blood by Aerobe culture": a result
        service_request("630-4"),  # urine culture
        service_request("2524-7", "http://snomed.info/sct"),  # right code, another system
        service_request("2524-7", ""),
        medication("2524-7", LOINC),  # a lactate code on a medication is no lactate
    ],
)
def test_other_codes_count_as_nothing(entry: dict[str, Any]) -> None:
    assert found(entry) == (False, False, False)


@pytest.mark.parametrize(("code", "antibiotic"), [
    ("J01DD04", True),  # ceftriaxone
    ("J01CR05", True),  # piperacillin and beta-lactamase inhibitor
    ("J01", True),
    ("J02AC01", False),  # fluconazole: an antimycotic, not J01
    ("J05AB01", False),  # aciclovir
    ("N02BE01", False),  # paracetamol
    ("j01dd04", False),  # ATC codes are upper case
])  # fmt: skip
def test_atc_j01_medications_are_antibiotics(code: str, antibiotic: bool) -> None:
    assert found(medication(code)) == (False, False, antibiotic)


def test_drug_codings_other_than_atc_are_not_classified() -> None:
    assert found(medication("2193", RXNORM)) == (False, False, False)
    # An ATC code on a ServiceRequest is not a medication order.
    assert found(service_request("J01DD04", ATC)) == (False, False, False)


def test_any_coding_of_a_concept_and_any_entry_counts() -> None:
    mixed = service_request("LAC-1", "https://lab.example/codes")
    mixed["resource"]["code"]["coding"].append({"system": LOINC, "code": "32693-4"})
    entries = [mixed, service_request("24323-8"), service_request("17928-3"), medication("J01MA02")]
    assert found(*entries) == (True, True, True)
    assert found(*reversed(entries)) == (True, True, True)


@pytest.mark.parametrize(
    "broken",
    [
        None,
        [],
        "Bundle",
        {"resourceType": "Bundle"},
        {"entry": None},
        {"entry": {"resource": service_request("2524-7")["resource"]}},
        {"entry": [[], "x", 7, {"resource": None}, {"resource": "ServiceRequest"}]},
        bundle({"resource": {"resourceType": "ServiceRequest", "code": "2524-7"}}),
        bundle({"resource": {"resourceType": "ServiceRequest", "code": {"coding": "2524-7"}}}),
        bundle({"resource": {"resourceType": "ServiceRequest", "code": {"coding": [7, None]}}}),
        bundle({"resource": {"resourceType": "ServiceRequest", "code": {"coding": [{}]}}}),
        bundle({"resource": {"resourceType": "ServiceRequest", "code": {"coding": [
            {"system": None, "code": None}, {"system": 3, "code": 2524}]}}}),
        bundle({"resource": {"resourceType": "MedicationRequest", "medicationCodeableConcept": []}}),
        bundle({"resource": {"resourceType": "MedicationRequest", "medicationCodeableConcept": {
            "coding": [{"system": ATC, "code": None}, {"system": ATC}]}}}),
        bundle({"resource": {"resourceType": 5, "code": {"coding": [{"system": LOINC, "code": "600-7"}]}}}),
    ],
)  # fmt: skip
def test_malformed_drafts_never_raise_and_count_as_nothing(broken: Any) -> None:
    content = draft_order_content(broken)
    assert content == DraftOrderContent(False, False, False)


def test_a_malformed_entry_does_not_hide_a_good_one() -> None:
    drafts = bundle(
        None, {"resource": {"resourceType": "ServiceRequest"}}, service_request("600-7")
    )
    assert draft_order_content(drafts).has_blood_culture


# ---------------------------------------------------------------------------- the card


@pytest.mark.parametrize(
    ("lactate", "culture", "antibiotic"), list(itertools.product((False, True), repeat=3))
)
def test_a_card_exactly_when_high_and_the_work_up_is_incomplete(
    lactate: bool, culture: bool, antibiotic: bool
) -> None:
    content = DraftOrderContent(lactate, culture, antibiotic)
    for band in (RiskBand.LOW, RiskBand.ELEVATED):
        assert build_workup_card(make(0.015, band), content, card_uuid=uuid4()) is None
    card = build_workup_card(make(), content, card_uuid=uuid4())
    if lactate and culture:
        assert card is None
        return
    assert card is not None
    assert validate_response(HookResponse(cards=[card]).to_json()) == []
    assert card.indicator == "warning"
    assert len(card.summary) < 140
    assert "6.0 %" in card.summary
    assert "NEWS2" not in card.summary + (card.detail or "")
    wanted = [BLOOD_CULTURE_LOINC["code"]] * (not culture) + [LACTATE_LOINC["code"]] * (not lactate)
    assert suggested_codes(card) == wanted
    ids = [s.uuid for s in card.suggestions or []]
    assert None not in ids and len(set(ids)) == len(ids)
    assert card.selectionBehavior == "any"
    resources = [a.resource for s in card.suggestions or [] for a in s.actions or []]
    assert all(r and r["subject"] == {"reference": "Patient/pt-42"} for r in resources)
    assert all(r and r["encounter"] == {"reference": "Encounter/enc-9"} for r in resources)
    # Cultures before antibiotics is the summary's point only when an antibiotic is drafted.
    assert ("before the antibiotic" in card.summary) is (antibiotic and not culture)


def test_the_summary_names_what_is_missing() -> None:
    none = workup(make(), DraftOrderContent(False, False, False)).summary
    assert "blood cultures" in none and "lactate" in none
    no_lactate = workup(make(), DraftOrderContent(False, True, True)).summary
    assert "lactate" in no_lactate and "cultures" not in no_lactate
    abx_only = workup(make(), DraftOrderContent(False, False, True)).summary
    assert "cultures before the antibiotic" in abx_only and "lactate" in abx_only
    abx_and_lactate = workup(make(), DraftOrderContent(True, False, True)).summary
    assert "cultures before the antibiotic" in abx_and_lactate
    assert "lactate" not in abx_and_lactate


def test_the_summary_stays_short_at_the_extremes() -> None:
    long_model = dataclasses.replace(MODEL, version="sepsis-" + "v" * 120)
    for content in (DraftOrderContent(False, False, True), DraftOrderContent(False, False, False)):
        card = workup(make(0.999, model=long_model), content)
        assert len(card.summary) < 140
        assert "99.9 %" in card.summary
        assert long_model.version in (card.detail or "")


def test_override_reasons_links_source_and_partial_history() -> None:
    card = workup(make(), DraftOrderContent(False, False, False))
    assert [(r.code, r.display) for r in card.overrideReasons or []] == list(SEPSIS_OVERRIDE_CODES)
    assert [(link.type, link.url) for link in card.links or []] == [("absolute", MODEL.card_url)]
    assert card.source.url == MODEL.card_url
    assert "partial history" not in (card.detail or "").lower()
    partial = workup(make(history="prefetch-only"), DraftOrderContent(True, False, False))
    assert "partial history" in (partial.detail or "").lower()


def test_a_known_high_lactate_is_suggested_as_a_re_measure() -> None:
    a = make(lactate=TimedValue(3.4, NOW - timedelta(hours=3)))
    card = workup(a, DraftOrderContent(False, True, False))
    assert [s.label.lower().startswith("re-measure") for s in card.suggestions or []] == [True]
