"""The card of the ``deterioration-patient-view`` service, built from a NEWS2 result.

Trigger levels follow the Royal College of Physicians. National Early Warning Score (NEWS) 2:
Standardising the assessment of acute-illness severity in the NHS. Updated report of a working
party. London: RCP, 2017 ("RCP 2017"), thresholds and triggers: an aggregate of 7 or more is the
emergency threshold (``critical``); 5-6, or a single parameter scoring 3, the urgent one
(``warning``); lower scores get no card unless ``show_low`` asks for an ``info`` card.

A patient NEWS2 was not made for (under 16, pregnant, age unknown) gets no card at all: RCP 2017
says the score is not validated there, and an escalation prompt built on it would mislead.
qSOFA, when given, is one line of context and never changes the indicator (see
``cds_service.scores.qsofa``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal
from uuid import uuid4

from cds_service.hooks_models import Card, Link, OverrideReason, Source
from cds_service.scores import iso_utc
from cds_service.scores.news2 import News2Result, Parameter, RiskBand, SpO2Scale
from cds_service.scores.qsofa import QsofaResult

__all__ = [
    "OVERRIDE_REASON_SYSTEM",
    "RCP_NEWS2_URL",
    "SERVICE_ID",
    "SOURCE_LABEL",
    "build_deterioration_card",
]

SERVICE_ID = "deterioration-patient-view"
RCP_NEWS2_URL = (
    "https://www.rcp.ac.uk/improving-care/resources/national-early-warning-score-news-2/"
)
SOURCE_LABEL = "Royal College of Physicians NEWS2 (2017)"
#: our own code system for why a clinician dismissed the card (CDS Hooks §Overridden guidance)
OVERRIDE_REASON_SYSTEM = "https://sepsis-cds.example.org/CodeSystem/override-reason"
_OVERRIDE_REASONS = (
    ("already-escalated", "Already escalated or under review by the responding team"),
    ("not-clinically-relevant", "Not clinically relevant for this patient"),
    ("values-erroneous", "One or more of the values is wrong"),
)
_CITATION = (
    "Royal College of Physicians. National Early Warning Score (NEWS) 2: Standardising the "
    "assessment of acute-illness severity in the NHS. Updated report of a working party. "
    "London: RCP, 2017."
)

Indicator = Literal["info", "warning", "critical"]
_INDICATOR: dict[RiskBand, Indicator] = {
    RiskBand.HIGH: "critical",
    RiskBand.MEDIUM: "warning",
    RiskBand.LOW_MEDIUM: "warning",
    RiskBand.LOW: "info",
}
# What the summary asks for, in our words after the RCP 2017 clinical response chart.
_ASK: dict[RiskBand, str] = {
    RiskBand.HIGH: "emergency assessment by a team with critical-care competencies",
    RiskBand.MEDIUM: "urgent review by a clinician skilled in acute illness",
    RiskBand.LOW_MEDIUM: "urgent ward-based review by a clinician",
    RiskBand.LOW: "continue observations as the chart sets",
}
# The RCP 2017 clinical response for each band, paraphrased.
_RESPONSE: dict[RiskBand, str] = {
    RiskBand.HIGH: (
        "Emergency response. Monitor vital signs continuously. The registered nurse tells the "
        "medical team at once, at specialist registrar level or above. A team with critical-care "
        "competencies, including someone with advanced airway skills, assesses the patient as an "
        "emergency. Consider moving care to a level 2 or 3 setting."
    ),
    RiskBand.MEDIUM: (
        "Urgent response. Observe at least every hour. The registered nurse tells the medical "
        "team at once, and a clinician or team competent in caring for acutely ill patients "
        "assesses the patient urgently, in a setting with monitoring facilities."
    ),
    RiskBand.LOW_MEDIUM: (
        "Urgent ward-based response. Observe at least every hour. The registered nurse tells the "
        "medical team, who review the patient and decide whether care needs escalating."
    ),
    RiskBand.LOW: (
        "Ward-based response. With a score of 1-4, observe at least every 4-6 hours; the "
        "registered nurse assesses the patient and decides whether to observe more often or "
        "escalate. With a score of 0, observe at least every 12 hours."
    ),
}


def _window(lookback: timedelta) -> str:
    minutes = round(lookback.total_seconds() / 60)
    if minutes % 60:
        return f"{minutes} minutes"
    hours = minutes // 60
    return "hour" if hours == 1 else f"{hours} hours"


def _summary(news2: News2Result) -> str:
    band = f"{news2.band.value} clinical risk"
    if news2.partial:
        band += f"; {len(news2.missing)} of {len(Parameter)} parameters missing"
    label = "Partial NEWS2" if news2.partial else "NEWS2"
    return f"{label} {news2.score} ({band}): {_ASK[news2.band]}"


def _table(news2: News2Result) -> list[str]:
    rows = ["| Parameter | Value | Time (UTC) | Points |", "| --- | --- | --- | --- |"]
    rows += [
        f"| {p.parameter.value} | {p.value_text} | {iso_utc(p.time)} | {p.points} |"
        for p in news2.parameters
    ]
    for missing in news2.missing:
        shown = "not scorable" if missing in news2.unscored else "not recorded"
        rows.append(f"| {missing.value} | {shown} | | not scored |")
    total = "Partial total" if news2.partial else "Total"
    rows.append(f"| **{total}** | | | **{news2.score}** |")
    return rows


def _missing(news2: News2Result, lookback: timedelta) -> str:
    absent = ", ".join(m.value for m in news2.missing if m not in news2.unscored)
    unscored = ", ".join(m.value for m in news2.unscored)
    parts = []
    if absent:
        parts.append(f"{absent}: not recorded in the last {_window(lookback)}")
    if unscored:
        parts.append(f"{unscored}: recorded but not scorable (see the notes)")
    return (
        f"**Missing:** {'; '.join(parts)} — this is a partial NEWS2; missing parameters were "
        "not assumed normal, so the full score may be higher."
    )


def _qsofa_line(qsofa: QsofaResult) -> str:
    met = ", ".join(c.criterion.value for c in qsofa.criteria if c.met) or "none met"
    if qsofa.computable:
        head = f"**qSOFA {qsofa.score} of 3** ({met})."
    else:
        missing = ", ".join(c.value for c in qsofa.missing)
        head = (
            f"**qSOFA {qsofa.score} of {len(qsofa.criteria)} computable criteria** ({met}); "
            f"not computable without: {missing}."
        )
    # Surviving Sepsis Campaign 2021 recommends against qSOFA alone as a sepsis screen.
    return f"{head} Shown for context only; qSOFA alone is not a sepsis screening tool."


def _detail(news2: News2Result, qsofa: QsofaResult | None, lookback: timedelta) -> str:
    blocks = [f"**{_summary(news2)}**", "\n".join(_table(news2))]
    if news2.missing:
        blocks.append(_missing(news2, lookback))
    if news2.scale is SpO2Scale.SCALE_2:
        blocks.append(
            "**SpO2 scale:** Scale 2, because a target range of 88-92 % is documented for "
            "hypercapnic respiratory failure."
        )
    else:
        blocks.append("**SpO2 scale:** Scale 1 (no 88-92 % target range is documented).")
    if news2.pregnancy_unknown:
        blocks.append(
            "**Pregnancy status is not recorded.** NEWS2 is not validated in pregnancy; if the "
            "patient is pregnant, use the local obstetric early warning chart instead."
        )
    if qsofa is not None:
        blocks.append(_qsofa_line(qsofa))
    if news2.notes:
        blocks.append("**Notes:**\n" + "\n".join(f"- {note}" for note in news2.notes))
    blocks.append(f"**Clinical response (RCP 2017, paraphrased):** {_RESPONSE[news2.band]}")
    blocks.append(f"Source: {_CITATION}")
    return "\n\n".join(blocks)


def build_deterioration_card(
    news2: News2Result,
    qsofa: QsofaResult | None = None,
    *,
    lookback: timedelta,
    show_low: bool = False,
) -> Card | None:
    """Build the deterioration card for a NEWS2 result, or None when there is nothing to show.

    ``lookback`` is the window the caller read the values from; the card names it when a
    parameter is missing. No card for an ineligible patient, nor for a low score unless
    ``show_low``.
    """
    if not news2.eligible:
        return None
    if news2.band is RiskBand.LOW and not show_low:
        return None
    reasons = [
        OverrideReason(code=code, system=OVERRIDE_REASON_SYSTEM, display=display)
        for code, display in _OVERRIDE_REASONS
    ]
    return Card(
        uuid=uuid4(),
        summary=_summary(news2),
        detail=_detail(news2, qsofa, lookback),
        indicator=_INDICATOR[news2.band],
        source=Source(label=SOURCE_LABEL, url=RCP_NEWS2_URL),
        overrideReasons=reasons,
        links=[Link(label="RCP NEWS2 chart and guidance", url=RCP_NEWS2_URL, type="absolute")],
    )
