"""The sepsis risk card (patient-view, encounter-start, encounter-discharge).

Bands and indicator come from the model card's operating points: at or above the alert level
(the utility-optimal threshold) ``warning``, ``critical`` when the patient's newest values also
show signs of possible septic shock; between the high-sensitivity level and the alert level
``info``; below it no card.

Suggestions follow the Surviving Sepsis Campaign, paraphrased:

* Levy MM, Evans LE, Rhodes A. The Surviving Sepsis Campaign Bundle: 2018 update. Crit Care Med
  2018;46:997-1000 — the hour-1 bundle: measure lactate (again if above 2 mmol/L), take blood
  cultures before antibiotics, give broad-spectrum antibiotics, give 30 mL/kg crystalloid for
  hypotension or lactate of 4 mmol/L or more, and vasopressors when hypotension persists during
  or after fluids, to keep MAP at 65 mmHg or more.
* Evans L, et al. Surviving Sepsis Campaign: international guidelines for management of sepsis
  and septic shock 2021. Crit Care Med 2021;49:e1063-e1143 — antibiotics within 1 h for possible
  septic shock or probable sepsis; for possible sepsis without shock, a rapid assessment and
  antibiotics within 3 h if the concern remains; qSOFA alone is advised against as a screen.

We never choose a drug: antibiotics, fluids and vasopressors are offered only as the site's own
configured order sets (``CDS_SEPSIS__ORDER_SETS``); the lactate and the blood cultures are draft
ServiceRequests with LOINC codes. The card never mentions NEWS2: the deterioration service shows
that score, and the EHR calls the two services separately.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, Literal
from uuid import UUID, uuid4

from cds_service.cards.deterioration import OVERRIDE_REASON_SYSTEM
from cds_service.hooks_models import Action, Card, Link, OverrideReason, Source, Suggestion
from cds_service.scores import iso_utc, round_half_up
from cds_service.sepsis.assessment import Driver, RiskBand, SepsisAssessment
from cds_service.settings import OrderSet, SepsisSettings

LOINC = "http://loinc.org"
LACTATE_LOINC = {
    "system": LOINC,
    "code": "2524-7",
    "display": "Lactate [Moles/volume] in Serum or Plasma",
}
BLOOD_CULTURE_LOINC = {
    "system": LOINC,
    "code": "600-7",
    "display": "Bacteria identified in Blood by Culture",
}
SEPSIS_OVERRIDE_CODES = (
    ("already-treated", "Already assessed or treated for sepsis"),
    ("other-diagnosis", "Another diagnosis explains the findings"),
    ("comfort-care", "Comfort care or limits of treatment"),
    ("not-septic", "Not clinically septic"),
)
SSC_2018 = (
    "Levy MM, Evans LE, Rhodes A. The Surviving Sepsis Campaign Bundle: 2018 update. "
    "Crit Care Med 2018;46:997-1000."
)
SSC_2021 = (
    "Evans L, et al. Surviving Sepsis Campaign: international guidelines for management of "
    "sepsis and septic shock 2021. Crit Care Med 2021;49:e1063-e1143."
)
FLUID_ML_PER_KG = 30  # SSC 2018 hour-1 bundle
LACTATE_REMEASURE = 2.0  # mmol/L, SSC 2018: re-measure when the first lactate is above 2

Indicator = Literal["info", "warning", "critical"]


def pct(risk: float) -> str:
    """A risk as a percentage with one decimal, halves up: 0.0405 → '4.1 %'."""
    return f"{round_half_up(risk * 100, 1)} %"


def indicator_of(assessment: SepsisAssessment) -> Indicator | None:
    if assessment.band is RiskBand.HIGH:
        return "critical" if assessment.shock_signs else "warning"
    if assessment.band is RiskBand.ELEVATED:
        return "info"
    return None


def override_reasons() -> list[OverrideReason]:
    return [
        OverrideReason(code=code, system=OVERRIDE_REASON_SYSTEM, display=display)
        for code, display in SEPSIS_OVERRIDE_CODES
    ]


def source_of(assessment: SepsisAssessment) -> Source:
    model = assessment.model
    return Source(label=f"Sepsis early warning model {model.version}", url=model.card_url)


def model_card_link(assessment: SepsisAssessment) -> Link:
    return Link(
        label=f"Model card ({assessment.model.version})",
        url=assessment.model.card_url,
        type="absolute",
    )


def _refs(assessment: SepsisAssessment, resource: dict[str, Any]) -> dict[str, Any]:
    resource["subject"] = {"reference": f"Patient/{assessment.patient_id}"}
    if assessment.encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{assessment.encounter_id}"}
    return resource


def service_request_suggestion(
    assessment: SepsisAssessment,
    coding: dict[str, str],
    label: str,
    *,
    note: str | None = None,
    recommended: bool = False,
) -> Suggestion:
    """A draft ServiceRequest for one LOINC-coded test, for this patient."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "priority": "stat" if assessment.band is RiskBand.HIGH else "urgent",
        "code": {"coding": [dict(coding)], "text": coding["display"]},
    }
    if note:
        resource["note"] = [{"text": note}]
    return Suggestion(
        label=label,
        uuid=uuid4(),
        isRecommended=recommended or None,
        actions=[Action(type="create", description=label, resource=_refs(assessment, resource))],
    )


def lactate_suggestion(assessment: SepsisAssessment, recommended: bool) -> Suggestion:
    known = assessment.lactate
    if known is not None and known.value > LACTATE_REMEASURE:
        label = f"Re-measure lactate (last {known.value:g} mmol/L at {iso_utc(known.time)})"
    else:
        label = "Measure lactate"
    return service_request_suggestion(assessment, LACTATE_LOINC, label, recommended=recommended)


def cultures_suggestion(assessment: SepsisAssessment, recommended: bool) -> Suggestion:
    return service_request_suggestion(
        assessment,
        BLOOD_CULTURE_LOINC,
        "Blood cultures, before antibiotics",
        note="Draw blood cultures before the first antibiotic dose (SSC 2018 hour-1 bundle).",
        recommended=recommended,
    )


def _order_set(
    assessment: SepsisAssessment, order_set: OrderSet, label: str, recommended: bool
) -> Suggestion:
    resource = _refs(assessment, copy.deepcopy(order_set.resource))
    return Suggestion(
        label=label,
        uuid=uuid4(),
        isRecommended=recommended or None,
        actions=[Action(type="create", description=label, resource=resource)],
    )


def fluid_volume(assessment: SepsisAssessment) -> str:
    weight = assessment.weight_kg
    if weight is None:
        return (
            f"{FLUID_ML_PER_KG} mL/kg needs the patient's weight, which is not recorded: "
            "weigh the patient (or use a documented estimate)"
        )
    volume = round_half_up(FLUID_ML_PER_KG * weight.value, -1)
    return (
        f"{FLUID_ML_PER_KG} mL/kg = {int(volume):,} mL for {weight.value:g} kg "
        f"(weighed {iso_utc(weight.time)})"
    )


def _antibiotic_timing(assessment: SepsisAssessment) -> str:
    if assessment.shock_signs:
        return "within 1 h (possible septic shock)"
    return "within 3 h if sepsis remains possible; within 1 h if probable"


def suggestions(assessment: SepsisAssessment, settings: SepsisSettings) -> list[Suggestion]:
    """Tiered by band and by the patient's state (see the module docstring)."""
    high = assessment.band is RiskBand.HIGH
    found = [lactate_suggestion(assessment, recommended=high)]
    if not high:
        return found
    found.insert(0, cultures_suggestion(assessment, recommended=True))
    sets = settings.order_sets
    if "antibiotics" in sets:
        label = f"{sets['antibiotics'].label}: {_antibiotic_timing(assessment)}"
        found.append(_order_set(assessment, sets["antibiotics"], label, recommended=True))
    if assessment.shock_signs and "fluids" in sets:
        label = f"{sets['fluids'].label}: {fluid_volume(assessment)}"
        found.append(_order_set(assessment, sets["fluids"], label[:200], recommended=True))
    if assessment.hypotension and "vasopressors" in sets:
        label = f"{sets['vasopressors'].label}: if hypotension persists during or after fluids"
        found.append(_order_set(assessment, sets["vasopressors"], label, recommended=False))
    return found


def summary(assessment: SepsisAssessment) -> str:
    risk = pct(assessment.risk)
    if assessment.band is RiskBand.HIGH and assessment.shock_signs:
        return f"Sepsis risk high: {risk}, with signs of possible septic shock — assess now"
    if assessment.band is RiskBand.HIGH:
        alert = pct(assessment.model.alert_level)
        return f"Sepsis risk high: {risk} (alert level {alert}) — assess for infection now"
    return f"Sepsis risk elevated: {risk} — reassess and consider a lactate"


def _meaning(assessment: SepsisAssessment) -> str:
    model = assessment.model
    lines = [
        f"**Risk {pct(assessment.risk)}**: {model.outcome}. Alert level "
        f"{pct(model.alert_level)}; high-sensitivity level {pct(model.high_sensitivity_level)}.",
    ]
    held = model.held_out
    if {"split", "sensitivity", "ppv"} <= held.keys():
        sensitivity = float(held["sensitivity"])
        ppv = float(held["ppv"])
        rate = held.get("alerts_per_100_patient_days")
        per_days = f", {float(rate):.0f} alerts per 100 patient-days" if rate is not None else ""
        lines.append(
            f"Validated on a hospital the method was not trained on ({held['split']}): at the "
            f"alert level it flagged {sensitivity:.0%} of the hours of septic patients' "
            f"prediction window, and {ppv:.1%} of flagged hours were in such a window{per_days}. "
            "Most alerts are not followed by sepsis: this is a prompt to assess, not a diagnosis."
        )
    return "\n".join(lines)


def _trend(assessment: SepsisAssessment) -> str:
    points = assessment.trend
    if len(points) <= 1:
        return "**Trend:** no earlier hour in this ICU stay yet."
    step = max(1, len(points) // 6)
    shown = points[::-1][::step][::-1]
    cells = " · ".join(
        ("now" if p.hours_ago == 0 else f"{p.hours_ago} h ago") + f" {pct(p.risk)}" for p in shown
    )
    first, last = points[0].risk, points[-1].risk
    change = "rising" if last > first * 1.2 else "falling" if last < first / 1.2 else "steady"
    return (
        f"**Trend over the last {points[0].hours_ago + 1} h ({change}):** {cells}. Earlier "
        "hours are recomputed from the data held now."
    )


#: UCUM codes of the catalogue as a clinician writes them.
DISPLAY_UNITS = {
    "mm[Hg]": "mmHg",
    "Cel": "°C",
    "10*3/uL": "×10³/µL",  # noqa: RUF001 - the multiplication sign is meant
    "[pH]": "",
    "1": "",
    "{score}": "",
}


def value_text(value: float, ucum: str) -> str:
    """``78 mmHg``, ``36.3 °C``, ``0.25`` (a fraction), ``7.31`` (pH): a value as charted."""
    unit = DISPLAY_UNITS.get(ucum, ucum)
    number = f"{round_half_up(value, 2).normalize():f}"
    return f"{number} {unit}" if unit else number


def _driver_value(driver: Driver) -> str:
    if driver.value is None:
        return ""
    return value_text(driver.value, driver.unit)


def _drivers(assessment: SepsisAssessment) -> str:
    if not assessment.drivers:
        return "**What drove it:** no single variable moved the risk."
    rows = [
        "**What drove it** (each variable reset to a typical ICU value, risk compared):",
        "",
        "| Variable | Newest value | Time (UTC) | Effect |",
        "| --- | --- | --- | --- |",
    ]
    for d in assessment.drivers:
        when = iso_utc(d.time) if d.time else ""
        points = round_half_up(abs(d.effect) * 100, 1)
        rows.append(
            f"| {d.label} | {_driver_value(d)} | {when} | {d.direction} risk by {points} points |"
        )
    return "\n".join(rows)


def _age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "none in the last 72 h"
    minutes = max(0, round((now - then).total_seconds() / 60))
    ago = f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"
    return f"{iso_utc(then)} ({ago} ago)"


def _freshness(assessment: SepsisAssessment) -> str:
    lines = [
        f"**Data:** newest vital sign {_age(assessment.now, assessment.newest_vital)}; "
        f"newest laboratory value {_age(assessment.now, assessment.newest_lab)}."
    ]
    if assessment.missing:
        lines.append(f"Not measured in the last 72 h: {', '.join(assessment.missing)}.")
    if assessment.unusable:
        parts = ", ".join(f"{n} ({reason})" for reason, n in assessment.unusable.items())
        lines.append(f"Observations not used: {parts}.")
    return " ".join(lines)


def _actions_text(assessment: SepsisAssessment, settings: SepsisSettings) -> str:
    if assessment.band is not RiskBand.HIGH:
        return (
            "**Suggested:** reassess the patient for infection; a lactate helps. "
            f"Antibiotics are not suggested at this level. Source: {SSC_2021}"
        )
    lines = [
        "**Suggested (Surviving Sepsis Campaign):** blood cultures before antibiotics; a lactate; "
        f"antibiotics {_antibiotic_timing(assessment)}."
    ]
    if assessment.shock_signs:
        lines.append(
            f"Signs of possible septic shock: {'; '.join(assessment.shock_signs)}. "
            f"Crystalloid {fluid_volume(assessment)}."
        )
        if assessment.hypotension:
            lines.append("Vasopressors if hypotension persists during or after fluids (MAP ≥ 65).")
    absent = [
        kind
        for kind, needed in (
            ("antibiotic", True),
            ("fluid", bool(assessment.shock_signs)),
            ("vasopressor", assessment.hypotension),
        )
        if needed and f"{kind}s" not in settings.order_sets
    ]
    if absent:
        lines.append(
            "Use your local sepsis "
            + " and ".join(absent)
            + " order set (none is configured here)."
        )
    lines.append(f"Sources: {SSC_2018} {SSC_2021}")
    return " ".join(lines)


def detail(assessment: SepsisAssessment, settings: SepsisSettings) -> str:
    blocks = []
    if assessment.history == "prefetch-only":
        blocks.append(
            "**Partial history:** the service's patient timeline was unavailable, so this score "
            "is based on the data sent with this call alone."
        )
    blocks += [
        _meaning(assessment),
        _trend(assessment),
        _drivers(assessment),
        _freshness(assessment),
        _actions_text(assessment, settings),
        f"Model version {assessment.model.version}; see its model card for limits.",
    ]
    return "\n\n".join(blocks)


def build_sepsis_card(
    assessment: SepsisAssessment, settings: SepsisSettings, *, card_uuid: UUID
) -> Card | None:
    indicator = indicator_of(assessment)
    if indicator is None:
        return None
    links = [model_card_link(assessment)]
    if settings.smart_app_url:
        links.append(Link(label="Open the sepsis app", url=settings.smart_app_url, type="smart"))
    return Card(
        uuid=card_uuid,
        summary=summary(assessment),
        detail=detail(assessment, settings),
        indicator=indicator,
        source=source_of(assessment),
        suggestions=suggestions(assessment, settings),
        selectionBehavior="any",
        overrideReasons=override_reasons(),
        links=links,
    )
