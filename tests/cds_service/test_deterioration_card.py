"""The deterioration card: indicator per RCP 2017 band, summary, detail, source, overrides."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest

from cds_service.cards.deterioration import (
    OVERRIDE_REASON_SYSTEM,
    RCP_NEWS2_URL,
    SOURCE_LABEL,
    build_deterioration_card,
)
from cds_service.hooks_models import Card
from cds_service.scores import TimedValue
from cds_service.scores.news2 import News2Result, Parameter, RiskBand, score_news2
from cds_service.scores.qsofa import score_qsofa

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
T = datetime(2026, 3, 1, 7, 45, tzinfo=UTC)
SIX_HOURS = timedelta(hours=6)


def normal() -> dict[str, TimedValue]:
    return {
        "resp_rate": TimedValue(16, T),
        "spo2": TimedValue(97, T),
        "supplemental_oxygen": TimedValue(0, T),
        "sbp": TimedValue(120, T),
        "heart_rate": TimedValue(70, T),
        "consciousness": TimedValue(0, T),
        "temperature": TimedValue(37.0, T),
    }


def news2(
    changes: dict[str, float] | None = None,
    *,
    drop: tuple[str, ...] = (),
    age: float | None = 70.0,
    pregnant: bool | None = False,
    scale2: bool = False,
) -> News2Result:
    values = normal() | {k: TimedValue(v, T) for k, v in (changes or {}).items()}
    for name in drop:
        del values[name]
    return score_news2(values, age_years=age, pregnant=pregnant, spo2_scale2=scale2, now=NOW)


HIGH = {"heart_rate": 115, "resp_rate": 22, "sbp": 95, "temperature": 38.5}  # 2+2+2+1 = 7
MEDIUM = {"heart_rate": 115, "resp_rate": 22, "temperature": 38.5}  # 5
SINGLE_THREE = {"resp_rate": 26}  # 3, one red score
LOW = {"heart_rate": 115}  # 2


def card(result: News2Result, **kwargs: bool) -> Card:
    built = build_deterioration_card(result, lookback=SIX_HOURS, **kwargs)
    assert built is not None
    return built


# ------------------------------------------------------------------ when, and how loud


@pytest.mark.parametrize(("changes", "band", "indicator"), [
    (HIGH, RiskBand.HIGH, "critical"),
    ({"resp_rate": 30, "sbp": 85, "heart_rate": 95}, RiskBand.HIGH, "critical"),
    (MEDIUM, RiskBand.MEDIUM, "warning"),
    ({"heart_rate": 115, "resp_rate": 22, "sbp": 95}, RiskBand.MEDIUM, "warning"),
    (SINGLE_THREE, RiskBand.LOW_MEDIUM, "warning"),
    ({"consciousness": 1}, RiskBand.LOW_MEDIUM, "warning"),
])  # fmt: skip
def test_indicator_per_band(changes: dict[str, float], band: RiskBand, indicator: str) -> None:
    result = news2(changes)
    assert result.band is band
    assert card(result).indicator == indicator


@pytest.mark.parametrize("changes", [{}, LOW, {"heart_rate": 115, "resp_rate": 22}])
def test_low_scores_get_no_card_unless_asked(changes: dict[str, float]) -> None:
    result = news2(changes)
    assert result.band is RiskBand.LOW
    assert build_deterioration_card(result, lookback=SIX_HOURS) is None
    assert card(result, show_low=True).indicator == "info"


@pytest.mark.parametrize(("age", "pregnant"), [(15.0, False), (None, False), (30.0, True)])
def test_ineligible_patients_get_no_card_even_at_high_scores(
    age: float | None, pregnant: bool | None
) -> None:
    result = news2(HIGH, age=age, pregnant=pregnant)
    assert result.band is RiskBand.HIGH
    assert build_deterioration_card(result, lookback=SIX_HOURS, show_low=True) is None


def test_qsofa_never_changes_the_indicator() -> None:
    values = normal() | {"resp_rate": TimedValue(24, T), "sbp": TimedValue(95, T)}
    positive = score_qsofa(values)
    assert positive.positive is True
    low = news2(LOW)
    assert build_deterioration_card(low, positive, lookback=SIX_HOURS) is None
    assert card(news2(MEDIUM)).indicator == "warning"


# ------------------------------------------------------------------ summary


def test_summary_states_score_and_band() -> None:
    assert card(news2(HIGH)).summary == (
        "NEWS2 7 (high clinical risk): emergency assessment by a team with critical-care "
        "competencies"
    )
    assert card(news2(MEDIUM)).summary.startswith("NEWS2 5 (medium clinical risk): ")
    assert card(news2(SINGLE_THREE)).summary.startswith("NEWS2 3 (low-medium clinical risk): ")
    assert card(news2(LOW), show_low=True).summary.startswith("NEWS2 2 (low clinical risk): ")


def test_summary_says_partial() -> None:
    summary = card(news2(HIGH, drop=("temperature", "consciousness"))).summary
    assert summary.startswith("Partial NEWS2 6 ")  # 7 less the temperature's 1
    assert "2 of 7 parameters missing" in summary
    assert "Partial" not in card(news2(HIGH)).summary


VARIABLES = tuple(normal())


@pytest.mark.parametrize("dropped", range(len(VARIABLES) + 1))
def test_summary_is_under_140_characters_at_every_band_and_missing_count(dropped: int) -> None:
    worst = {"resp_rate": 30, "spo2": 85, "supplemental_oxygen": 1, "sbp": 80, "heart_rate": 140,
             "consciousness": 4, "temperature": 34.0}  # fmt: skip
    for changes, drop in itertools.product(
        [worst, HIGH, MEDIUM, SINGLE_THREE, LOW], itertools.combinations(VARIABLES, dropped)
    ):
        kept = {k: v for k, v in changes.items() if k not in drop}
        built = build_deterioration_card(news2(kept, drop=drop), lookback=SIX_HOURS, show_low=True)
        assert built is not None
        assert len(built.summary) < 140, built.summary


# ------------------------------------------------------------------ detail


def test_detail_lists_every_parameter_with_value_time_and_points() -> None:
    detail = card(news2(HIGH)).detail
    assert detail is not None
    rows = {
        "Respiration rate": "| Respiration rate | 22 /min | 2026-03-01T07:45:00Z | 2 |",
        "SpO2": "| SpO2 | 97 % | 2026-03-01T07:45:00Z | 0 |",
        "Air or oxygen": "| Air or oxygen | Air | 2026-03-01T07:45:00Z | 0 |",
        "Systolic": "| Systolic blood pressure | 95 mmHg | 2026-03-01T07:45:00Z | 2 |",
        "Pulse": "| Pulse | 115 /min | 2026-03-01T07:45:00Z | 2 |",
        "Consciousness": "| Consciousness | Alert | 2026-03-01T07:45:00Z | 0 |",
        "Temperature": "| Temperature | 38.5 °C | 2026-03-01T07:45:00Z | 1 |",
    }
    for name, row in rows.items():
        assert row in detail, name
    assert "| **Total** | | | **7** |" in detail
    assert "partial" not in detail.lower()


def test_times_are_shown_in_utc() -> None:
    local = datetime(2026, 3, 1, 9, 45, tzinfo=timezone(timedelta(hours=2)))
    values = normal() | {"sbp": TimedValue(85, local)}
    result = score_news2(values, age_years=50, pregnant=False, spo2_scale2=False, now=NOW)
    detail = card(result).detail
    assert detail is not None
    assert "| Systolic blood pressure | 85 mmHg | 2026-03-01T07:45:00Z | 3 |" in detail


def test_detail_states_missing_parameters_plainly() -> None:
    detail = card(news2(HIGH, drop=("temperature", "sbp")), show_low=True).detail
    assert detail is not None
    assert "| Systolic blood pressure | not recorded | | not scored |" in detail
    assert "| Temperature | not recorded | | not scored |" in detail
    assert (
        "**Missing:** Systolic blood pressure, Temperature: not recorded in the last 6 hours — "
        "this is a partial NEWS2; missing parameters were not assumed normal"
    ) in detail
    assert "| **Partial total** | | | **4** |" in detail


def test_missing_text_names_the_callers_window() -> None:
    result = news2(HIGH, drop=("temperature",))
    one_hour = build_deterioration_card(result, lookback=timedelta(hours=1))
    ninety = build_deterioration_card(result, lookback=timedelta(minutes=90))
    assert one_hour is not None and one_hour.detail is not None
    assert ninety is not None and ninety.detail is not None
    assert "not recorded in the last hour" in one_hour.detail
    assert "not recorded in the last 90 minutes" in ninety.detail


def test_detail_names_the_spo2_scale() -> None:
    scale1 = card(news2(HIGH)).detail
    scale2 = card(news2(HIGH, scale2=True)).detail
    assert scale1 is not None and scale2 is not None
    assert "**SpO2 scale:** Scale 1" in scale1
    assert "**SpO2 scale:** Scale 2" in scale2
    assert "88-92 %" in scale2


def test_pregnancy_caveat_only_when_pregnancy_is_unknown() -> None:
    unknown = card(news2(HIGH, pregnant=None)).detail
    known = card(news2(HIGH, pregnant=False)).detail
    assert unknown is not None and known is not None
    assert "Pregnancy status is not recorded" in unknown
    assert "Pregnancy" not in known


def test_gcs_note_reaches_the_card() -> None:
    result = news2(HIGH | {"gcs_total": 12}, drop=("consciousness",))
    detail = card(result).detail
    assert detail is not None
    assert "**Notes:**\n- GCS 12 was recorded" in detail
    assert "| Consciousness | not scorable | | not scored |" in detail
    assert "**Missing:** Consciousness: recorded but not scorable (see the notes) — this is a" in (
        detail
    )


def test_missing_line_separates_absent_from_unscorable() -> None:
    result = news2({"spo2": 95, "resp_rate": 26}, drop=("supplemental_oxygen", "temperature"),
                   scale2=True)  # fmt: skip
    assert result.unscored == (Parameter.SPO2,)
    detail = card(result).detail
    assert detail is not None
    assert (
        "**Missing:** Air or oxygen, Temperature: not recorded in the last 6 hours; "
        "SpO2: recorded but not scorable (see the notes) — this is a partial NEWS2"
    ) in detail
    assert "| SpO2 | not scorable | | not scored |" in detail


def test_qsofa_line_when_given() -> None:
    values = normal() | {"resp_rate": TimedValue(24, T), "sbp": TimedValue(95, T)}
    full = build_deterioration_card(news2(HIGH), score_qsofa(values), lookback=SIX_HOURS)
    assert full is not None and full.detail is not None
    assert "**qSOFA 2 of 3** (Respiratory rate ≥ 22/min, Systolic blood pressure ≤ 100 mmHg)" in (
        full.detail
    )
    assert "qSOFA alone is not a sepsis screening tool" in full.detail
    partial = score_qsofa({"resp_rate": TimedValue(24, T)})
    built = build_deterioration_card(news2(HIGH), partial, lookback=SIX_HOURS)
    assert built is not None and built.detail is not None
    assert "**qSOFA 1 of 1 computable criteria**" in built.detail
    assert "not computable without: Altered mentation, Systolic blood pressure ≤ 100 mmHg" in (
        built.detail
    )
    without = card(news2(HIGH)).detail
    assert without is not None
    assert "qSOFA" not in without


@pytest.mark.parametrize(("changes", "phrase"), [
    (HIGH, "Emergency response"),
    (MEDIUM, "Urgent response"),
    (SINGLE_THREE, "Urgent ward-based response"),
    (LOW, "Ward-based response"),
])  # fmt: skip
def test_clinical_response_per_band_is_cited(changes: dict[str, float], phrase: str) -> None:
    detail = card(news2(changes), show_low=True).detail
    assert detail is not None
    assert f"**Clinical response (RCP 2017, paraphrased):** {phrase}" in detail
    assert "Royal College of Physicians. National Early Warning Score (NEWS) 2" in detail


# ------------------------------------------------------------------ the rest of the card


def test_source_link_and_override_reasons() -> None:
    built = card(news2(HIGH))
    assert built.source.label == SOURCE_LABEL == "Royal College of Physicians NEWS2 (2017)"
    assert built.source.url == RCP_NEWS2_URL
    assert RCP_NEWS2_URL == (
        "https://www.rcp.ac.uk/improving-care/resources/national-early-warning-score-news-2/"
    )
    assert built.links is not None
    assert [(link.url, link.type) for link in built.links] == [(RCP_NEWS2_URL, "absolute")]
    assert built.overrideReasons is not None
    codes = [reason.code for reason in built.overrideReasons]
    assert codes == ["already-escalated", "not-clinically-relevant", "values-erroneous"]
    for reason in built.overrideReasons:
        assert reason.system == OVERRIDE_REASON_SYSTEM
        assert reason.display
    assert built.suggestions is None


def test_every_card_gets_its_own_uuid4() -> None:
    first, second = card(news2(HIGH)), card(news2(HIGH))
    assert isinstance(first.uuid, UUID)
    assert first.uuid.version == 4
    assert first.uuid != second.uuid


def test_card_serialises_and_round_trips() -> None:
    values = normal() | {"resp_rate": TimedValue(24, T)}
    built = build_deterioration_card(
        news2(HIGH, drop=("temperature",), pregnant=None), score_qsofa(values), lookback=SIX_HOURS
    )
    assert built is not None
    dumped = built.model_dump(mode="json", exclude_none=True)
    text = json.dumps(dumped)
    assert Card.model_validate(json.loads(text)) == built
    assert set(dumped) == {
        "uuid", "summary", "detail", "indicator", "source", "overrideReasons", "links"
    }  # fmt: skip
    assert dumped["overrideReasons"][0] == {
        "code": "already-escalated",
        "system": "https://sepsis-cds.example.org/CodeSystem/override-reason",
        "display": dumped["overrideReasons"][0]["display"],
    }
    assert Parameter.TEMPERATURE.value in dumped["detail"]
