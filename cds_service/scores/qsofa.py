"""Quick SOFA (qSOFA): three bedside criteria, one point each, positive at 2 or more.

Sources: Seymour CW et al. Assessment of clinical criteria for sepsis. JAMA 2016;315(8):762-774
(derivation and validation: respiratory rate >= 22/min, altered mentation, systolic blood
pressure <= 100 mmHg); Singer M et al. The Third International Consensus Definitions for Sepsis
and Septic Shock (Sepsis-3). JAMA 2016;315(8):801-810 (qSOFA >= 2 as a prompt to look for
organ dysfunction outside the ICU).

qSOFA is shown beside NEWS2, never as the trigger of a card: the Surviving Sepsis Campaign
2021 guidelines (Evans L et al., Crit Care Med 2021;49(11):e1063-e1143) recommend *against*
using qSOFA alone, compared with SIRS, NEWS or MEWS, as a single screening tool for sepsis or
septic shock, because it is specific but insensitive.

Values are rounded half up to whole numbers first, as for NEWS2, so a respiratory rate of 21.5
counts as 22. Altered mentation is met by a GCS below 15 (Seymour 2016's definition) or by any
ACVPU level other than Alert; either one recorded makes the criterion computable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from cds_service.scores import TimedValue, Vitals, round_half_up

__all__ = ["QsofaCriterion", "QsofaCriterionResult", "QsofaResult", "score_qsofa"]

_RESP_RATE_AT_LEAST = Decimal(22)  # Seymour 2016: respiratory rate >= 22/min
_SBP_AT_MOST = Decimal(100)  # Seymour 2016: systolic blood pressure <= 100 mmHg
_GCS_NORMAL = Decimal(15)  # Seymour 2016: altered mentation as GCS < 15
_ACVPU_LEVELS = frozenset({0, 1, 2, 3, 4})  # alert, new confusion, voice, pain, unresponsive
_POSITIVE_AT = 2  # Singer 2016: 2 or more of the 3 criteria


class QsofaCriterion(StrEnum):
    """The three qSOFA criteria, worded as a clinician reads them."""

    RESPIRATORY_RATE = "Respiratory rate ≥ 22/min"
    ALTERED_MENTATION = "Altered mentation"
    SYSTOLIC_BP = "Systolic blood pressure ≤ 100 mmHg"


@dataclass(frozen=True, slots=True)
class QsofaCriterionResult:
    """One computable criterion: whether it is met, and the value that decided it."""

    criterion: QsofaCriterion
    met: bool
    variable: str
    value: float
    time: datetime


@dataclass(frozen=True, slots=True)
class QsofaResult:
    """A qSOFA count over the criteria that could be computed."""

    #: criteria met among those computable (a partial count when ``computable`` is false)
    score: int
    #: all three criteria had a value
    computable: bool
    criteria: tuple[QsofaCriterionResult, ...]
    missing: tuple[QsofaCriterion, ...]
    #: True at 2 or more met; False when 2 cannot be reached even if every missing criterion
    #: were met; None when the missing criteria could still make it positive
    positive: bool | None


def _usable(values: Vitals, variable: str) -> TimedValue | None:
    found = values.get(variable)
    return found if found is not None and math.isfinite(found.value) else None


def _mentation(values: Vitals) -> QsofaCriterionResult | None:
    acvpu = _usable(values, "consciousness")
    gcs = _usable(values, "gcs_total")
    # Either sign of altered mentation is enough; a normal one only counts when no other
    # recorded value shows an alteration.
    findings: list[QsofaCriterionResult] = []
    if acvpu is not None and acvpu.value in _ACVPU_LEVELS:
        met = acvpu.value != 0
        findings.append(_result(QsofaCriterion.ALTERED_MENTATION, met, "consciousness", acvpu))
    if gcs is not None:
        met = round_half_up(gcs.value) < _GCS_NORMAL
        findings.append(_result(QsofaCriterion.ALTERED_MENTATION, met, "gcs_total", gcs))
    if not findings:
        return None
    return max(findings, key=lambda f: (f.met, f.time))


def _result(
    criterion: QsofaCriterion, met: bool, variable: str, tv: TimedValue
) -> QsofaCriterionResult:
    return QsofaCriterionResult(criterion, met, variable, tv.value, tv.time)


def score_qsofa(values: Vitals) -> QsofaResult:
    """Count the qSOFA criteria met by each variable's most recent value in the window.

    Context for the clinician, not a screening trigger (see the module docstring).
    """
    found: list[QsofaCriterionResult] = []
    resp = _usable(values, "resp_rate")
    if resp is not None:
        met = round_half_up(resp.value) >= _RESP_RATE_AT_LEAST
        found.append(_result(QsofaCriterion.RESPIRATORY_RATE, met, "resp_rate", resp))
    mentation = _mentation(values)
    if mentation is not None:
        found.append(mentation)
    sbp = _usable(values, "sbp")
    if sbp is not None:
        met = round_half_up(sbp.value) <= _SBP_AT_MOST
        found.append(_result(QsofaCriterion.SYSTOLIC_BP, met, "sbp", sbp))

    have = {c.criterion for c in found}
    missing = tuple(c for c in QsofaCriterion if c not in have)
    score = sum(c.met for c in found)
    positive: bool | None
    if score >= _POSITIVE_AT:
        positive = True
    elif score + len(missing) < _POSITIVE_AT:
        positive = False
    else:
        positive = None
    return QsofaResult(
        score=score,
        computable=not missing,
        criteria=tuple(found),
        missing=missing,
        positive=positive,
    )
