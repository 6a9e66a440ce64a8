"""order-select / order-sign: when the risk is high, does the order set being drafted hold the
sepsis work-up — a lactate and blood cultures (drawn before antibiotics, SSC 2018)?

``draftOrders`` is kept opaque by the request models (clients may send orders that are not yet
valid FHIR), so it is read leniently here: anything malformed is skipped, never an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cds_service.cards.sepsis import (
    cultures_suggestion,
    lactate_suggestion,
    model_card_link,
    override_reasons,
    pct,
    source_of,
)
from cds_service.hooks_models import Card
from cds_service.sepsis.assessment import RiskBand, SepsisAssessment
from fhir_adapters.variables import VARIABLES, is_loinc

#: The catalogue's lactate codes (serum/plasma, blood, arterial) and 2519-7, venous blood.
LACTATE_CODES = frozenset({*VARIABLES["lactate"].loinc, "2519-7"})
#: 600-7 Bacteria identified in Blood by Culture; 17928-3 ... by Aerobe culture; 17934-1 ... by
#: Anaerobe culture. Not 17929-1: that is "Bacteria # 2 identified in Blood by Aerobe culture", a
#: second isolate's result, never what a clinician orders.
BLOOD_CULTURE_CODES = frozenset({"600-7", "17928-3", "17934-1"})
ATC = "http://www.whocc.no/atc"
#: ATC J01: antibacterials for systemic use. Drugs coded only in RxNorm or a local system are not
#: classified (that needs a drug-class terminology service): such a draft counts as no antibiotic.
ATC_ANTIBACTERIALS = "J01"


@dataclass(frozen=True)
class DraftOrderContent:
    has_lactate: bool
    has_blood_culture: bool
    has_antibiotic: bool


def _resources(bundle: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(bundle, dict):
        return
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            yield resource


def _codings(concept: Any) -> Iterator[tuple[str, str]]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    for coding in codings if isinstance(codings, list) else ():
        if isinstance(coding, dict):
            yield str(coding.get("system")), str(coding.get("code"))


def draft_order_content(draft_orders: dict[str, Any]) -> DraftOrderContent:
    """What of the sepsis work-up the ``draftOrders`` Bundle of order-select/order-sign holds."""
    lactate = culture = antibiotic = False
    for resource in _resources(draft_orders):
        kind = resource.get("resourceType")
        if kind == "ServiceRequest":
            # The LOINC OID counts too (is_loinc), as it does for observations: a lactate coded
            # that way is still a lactate, and missing it would raise a false alert.
            codes = {code for system, code in _codings(resource.get("code")) if is_loinc(system)}
            lactate |= bool(codes & LACTATE_CODES)
            culture |= bool(codes & BLOOD_CULTURE_CODES)
        elif kind == "MedicationRequest":
            antibiotic |= any(
                system == ATC and code.startswith(ATC_ANTIBACTERIALS)
                for system, code in _codings(resource.get("medicationCodeableConcept"))
            )
    return DraftOrderContent(lactate, culture, antibiotic)


def _summary(assessment: SepsisAssessment, content: DraftOrderContent) -> str:
    risk = pct(assessment.risk)
    if content.has_antibiotic and not content.has_blood_culture:
        lactate = "" if content.has_lactate else "; add a lactate"
        return (
            f"Sepsis risk {risk}: draw blood cultures before the antibiotic in these "
            f"orders{lactate}"
        )
    missing = [
        name
        for name, present in (
            ("blood cultures", content.has_blood_culture),
            ("a lactate", content.has_lactate),
        )
        if not present
    ]
    return f"Sepsis risk {risk} (high): these orders lack {' and '.join(missing)}"


def build_workup_card(
    assessment: SepsisAssessment, content: DraftOrderContent, *, card_uuid: UUID
) -> Card | None:
    """A warning when the risk is high and the drafts lack the lactate or the cultures."""
    if assessment.band is not RiskBand.HIGH:
        return None
    if content.has_lactate and content.has_blood_culture:
        return None
    suggestions = []
    if not content.has_blood_culture:
        suggestions.append(cultures_suggestion(assessment, recommended=True))
    if not content.has_lactate:
        suggestions.append(lactate_suggestion(assessment, recommended=True))
    detail = (
        f"The patient's sepsis risk is {pct(assessment.risk)}, at or above the model's alert "
        f"level of {pct(assessment.model.alert_level)} ({assessment.model.outcome}). The Surviving "
        "Sepsis Campaign's hour-1 bundle (Levy et al., Crit Care Med 2018;46:997-1000) asks for "
        "a lactate and for blood cultures taken before antibiotics. "
        f"Model version {assessment.model.version}."
    )
    if assessment.history == "prefetch-only":
        detail += (
            "\n\n**Partial history:** the service's patient timeline was unavailable; the risk is "
            "based on the data sent with this call alone."
        )
    return Card(
        uuid=card_uuid,
        summary=_summary(assessment, content),
        detail=detail,
        indicator="warning",
        source=source_of(assessment),
        suggestions=suggestions,
        selectionBehavior="any",
        overrideReasons=override_reasons(),
        links=[model_card_link(assessment)],
    )
