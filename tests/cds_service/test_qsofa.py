"""qSOFA (Seymour 2016; Singer 2016): the three criteria, their edges, and partial counts."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from cds_service.scores import TimedValue
from cds_service.scores.qsofa import QsofaCriterion, QsofaResult, score_qsofa

T = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def qsofa(**values: float) -> QsofaResult:
    return score_qsofa({name: TimedValue(value, T) for name, value in values.items()})


def met(result: QsofaResult, criterion: QsofaCriterion) -> bool:
    [found] = [c for c in result.criteria if c.criterion is criterion]
    return found.met


@pytest.mark.parametrize(("value", "expected"), [
    (21, False), (22, True), (30, True), (21.4, False), (21.5, True),
])  # fmt: skip
def test_respiratory_rate_of_22_or_more(value: float, expected: bool) -> None:
    assert met(qsofa(resp_rate=value), QsofaCriterion.RESPIRATORY_RATE) is expected


@pytest.mark.parametrize(("value", "expected"), [
    (100, True), (101, False), (80, True), (100.4, True), (100.5, False),
])  # fmt: skip
def test_systolic_of_100_or_less(value: float, expected: bool) -> None:
    assert met(qsofa(sbp=value), QsofaCriterion.SYSTOLIC_BP) is expected


@pytest.mark.parametrize(("values", "expected", "variable"), [
    ({"gcs_total": 15}, False, "gcs_total"),
    ({"gcs_total": 14}, True, "gcs_total"),
    ({"consciousness": 0}, False, "consciousness"),
    ({"consciousness": 1}, True, "consciousness"),
    ({"consciousness": 4}, True, "consciousness"),
    ({"consciousness": 0, "gcs_total": 13}, True, "gcs_total"),  # either sign is enough
    ({"consciousness": 2, "gcs_total": 15}, True, "consciousness"),
    ({"consciousness": 0, "gcs_total": 15}, False, "consciousness"),
])  # fmt: skip
def test_altered_mentation(values: dict[str, float], expected: bool, variable: str) -> None:
    result = qsofa(**values)
    [found] = [c for c in result.criteria if c.criterion is QsofaCriterion.ALTERED_MENTATION]
    assert found.met is expected
    if expected:
        assert found.variable == variable


def test_all_three_met_is_computable_and_positive() -> None:
    result = qsofa(resp_rate=24, sbp=95, gcs_total=13)
    assert (result.score, result.computable, result.positive, result.missing) == (3, True, True, ())


def test_one_of_three_is_computable_and_negative() -> None:
    result = qsofa(resp_rate=24, sbp=120, consciousness=0)
    assert (result.score, result.computable, result.positive) == (1, True, False)


def test_missing_criterion_leaves_the_result_open() -> None:
    result = qsofa(resp_rate=24, sbp=120)
    assert not result.computable
    assert result.score == 1
    assert result.missing == (QsofaCriterion.ALTERED_MENTATION,)
    assert result.positive is None  # the missing mentation could make it 2


def test_two_met_is_positive_even_when_one_is_missing() -> None:
    result = qsofa(resp_rate=24, sbp=90)
    assert (result.computable, result.score, result.positive) == (False, 2, True)


def test_positive_is_false_only_when_two_cannot_be_reached() -> None:
    result = qsofa(sbp=130)
    assert result.missing == (QsofaCriterion.RESPIRATORY_RATE, QsofaCriterion.ALTERED_MENTATION)
    assert result.positive is None  # 0 + 2 missing could still reach 2
    result = qsofa(sbp=130, resp_rate=16)
    assert result.positive is False  # 0 met + 1 missing cannot reach 2


def test_nothing_recorded() -> None:
    result = score_qsofa({})
    assert (result.score, result.computable, result.criteria) == (0, False, ())
    assert result.missing == tuple(QsofaCriterion)


def test_unusable_values_count_as_missing() -> None:
    result = qsofa(resp_rate=math.nan, consciousness=7, sbp=90)
    assert result.missing == (QsofaCriterion.RESPIRATORY_RATE, QsofaCriterion.ALTERED_MENTATION)
    assert result.score == 1


def test_criterion_carries_its_value_and_time() -> None:
    later = T + timedelta(minutes=5)
    result = score_qsofa({"sbp": TimedValue(92, later)})
    [found] = result.criteria
    assert (found.variable, found.value, found.time, found.met) == ("sbp", 92, later, True)
