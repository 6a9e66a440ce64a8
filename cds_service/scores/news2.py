"""National Early Warning Score 2 (NEWS2) from a patient's most recent vital signs.

Source of every band, point and risk level here: Royal College of Physicians. National Early
Warning Score (NEWS) 2: Standardising the assessment of acute-illness severity in the NHS.
Updated report of a working party. London: RCP, 2017 ("RCP 2017"); the scoring bands are its
Chart 1 (the NEWS scoring system), the risk bands its thresholds-and-triggers chart.

Choices this module makes, because the chart is a paper form and our inputs are floats:

* **Rounding.** The chart's bands are whole numbers (one decimal for temperature), so a value
  is first rounded half up to the chart's precision (:func:`cds_service.scores.round_half_up`),
  then looked up. 20.5 /min reads as 21 (2 points); 35.05 °C reads as 35.1 (1 point), 38.05 as
  38.1 (1 point), 39.05 as 39.1 (2 points). Without this, values between two bands (35.04) would
  fall in no band at all.
* **Missing is missing.** A parameter with no value in the window scores nothing and is listed
  in ``missing``; the aggregate is then the sum of what is there and ``partial`` is true. The
  chart has no "assume normal" rule, and a silent 0 would hide exactly the patient nobody has
  observed.
* **GCS is not ACVPU.** Consciousness is scored from ACVPU. With only a GCS, 15 (eyes open
  spontaneously, oriented, obeying) is by definition Alert and scores 0; a GCS below 15 is *not*
  turned into "new confusion", because a chronically reduced GCS is not new confusion and a GCS
  of 6 is not confusion at all. Consciousness is then reported missing with a note naming the GCS.
* **Air or oxygen.** ``supplemental_oxygen``, an FiO2 above 0.21 or an oxygen flow above
  0 L/min documents oxygen; the flag at 0, an FiO2 of 0.21 or a flow of 0 documents air. Any
  record of oxygen in the window outweighs a record of air, whichever is newer: scoring a
  patient just weaned off oxygen 2 points too high is the safer error than missing the oxygen of
  a patient whose room-air flag is stale. With none of the three, the parameter is missing
  (and on Scale 2 an SpO2 of 93 % or more cannot be scored either, since its points depend on
  it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from cds_service.scores import TimedValue, Vitals, iso_utc, require_aware, round_half_up

__all__ = [
    "News2Result",
    "Parameter",
    "ParameterScore",
    "RiskBand",
    "SpO2Scale",
    "chart_points",
    "score_news2",
]


class Parameter(StrEnum):
    """The seven NEWS2 parameters, named as the chart names them."""

    RESPIRATION_RATE = "Respiration rate"
    SPO2 = "SpO2"
    AIR_OR_OXYGEN = "Air or oxygen"
    SYSTOLIC_BP = "Systolic blood pressure"
    PULSE = "Pulse"
    CONSCIOUSNESS = "Consciousness"
    TEMPERATURE = "Temperature"


class RiskBand(StrEnum):
    """RCP 2017 clinical risk: low 0-4, low-medium a single red 3, medium 5-6, high 7 or more."""

    LOW = "low"
    LOW_MEDIUM = "low-medium"
    MEDIUM = "medium"
    HIGH = "high"


class SpO2Scale(IntEnum):
    """Scale 1 for everyone; Scale 2 only for a prescribed 88-92 % target (RCP 2017)."""

    SCALE_1 = 1
    SCALE_2 = 2


@dataclass(frozen=True, slots=True)
class ParameterScore:
    """One parameter as scored: which variable supplied it, its value as recorded, its points."""

    parameter: Parameter
    variable: str
    value: float
    #: the variable's canonical UCUM unit, as the catalogue (``fhir_adapters.variables``) has it
    #: ("/min", "%", "Cel", "mm[Hg]", "1", "L/min", "{score}")
    unit: str
    time: datetime
    points: int
    #: the value as a clinician reads it, e.g. "38.05 °C (read as 38.1)" or "Oxygen (FiO2 0.4)"
    value_text: str


@dataclass(frozen=True, slots=True)
class News2Result:
    """A NEWS2 score, what it was made of, what was missing, and whom it is valid for."""

    score: int
    parameters: tuple[ParameterScore, ...]
    #: parameters that did not score, in chart order: a superset of ``unscored``
    missing: tuple[Parameter, ...]
    #: the missing parameters that did have a value, unusable for NEWS2 (``notes`` say why)
    unscored: tuple[Parameter, ...]
    partial: bool
    any_single_three: bool
    band: RiskBand
    scale: SpO2Scale
    eligible: bool
    ineligible_reason: str | None
    pregnancy_unknown: bool
    #: why a value was not used or how it was read (GCS without ACVPU, an unusable value, ...)
    notes: tuple[str, ...]
    scored_at: datetime


# Chart 1 bands as (highest value in the band, points), lowest band first; None: no upper end.
_Bands = tuple[tuple[Decimal | None, int], ...]


def _bands(*pairs: tuple[str | None, int]) -> _Bands:
    return tuple((None if upper is None else Decimal(upper), points) for upper, points in pairs)


_RESPIRATION = _bands(("8", 3), ("11", 1), ("20", 0), ("24", 2), (None, 3))
_SPO2_SCALE1 = _bands(("91", 3), ("93", 2), ("95", 1), (None, 0))
# Scale 2 up to the 88-92 % target does not depend on oxygen; above it, 93 % or more scores 0
# on air but 1-3 on oxygen, because over-oxygenating a hypercapnic patient is itself a danger.
_SPO2_SCALE2 = _bands(("83", 3), ("85", 2), ("87", 1), ("92", 0))
_SPO2_SCALE2_TARGET_TOP = Decimal(92)
_SPO2_SCALE2_ON_OXYGEN = _bands(("94", 1), ("96", 2), (None, 3))
_SYSTOLIC = _bands(("90", 3), ("100", 2), ("110", 1), ("219", 0), (None, 3))
_PULSE = _bands(("40", 3), ("50", 1), ("90", 0), ("110", 1), ("130", 2), (None, 3))
_TEMPERATURE = _bands(("35.0", 3), ("36.0", 1), ("38.0", 0), ("39.0", 1), (None, 2))


class _Banded(NamedTuple):
    """A parameter read straight off one band table: its variable, units and precision."""

    parameter: Parameter
    variable: str
    unit: str
    shown_unit: str
    bands: _Bands
    decimals: int = 0


# Chart 1 order; SpO2, air or oxygen, and consciousness need more than a table lookup.
_BANDED = (
    _Banded(Parameter.RESPIRATION_RATE, "resp_rate", "/min", "/min", _RESPIRATION),
    _Banded(Parameter.SYSTOLIC_BP, "sbp", "mm[Hg]", "mmHg", _SYSTOLIC),
    _Banded(Parameter.PULSE, "heart_rate", "/min", "/min", _PULSE),
    _Banded(Parameter.TEMPERATURE, "temperature", "Cel", "°C", _TEMPERATURE, decimals=1),
)

# Every variable that can supply each parameter; a parameter missing with one of them present
# was recorded but not scorable, which the card must not call "not recorded".
_SOURCES = {
    Parameter.RESPIRATION_RATE: ("resp_rate",),
    Parameter.SPO2: ("spo2",),
    Parameter.AIR_OR_OXYGEN: ("supplemental_oxygen", "fio2", "oxygen_flow_rate"),
    Parameter.SYSTOLIC_BP: ("sbp",),
    Parameter.PULSE: ("heart_rate",),
    Parameter.CONSCIOUSNESS: ("consciousness", "gcs_total"),
    Parameter.TEMPERATURE: ("temperature",),
}

_OXYGEN_POINTS = 2  # Chart 1: supplemental oxygen scores 2, air 0
_ROOM_AIR_FIO2 = Decimal("0.21")
_ACVPU = ("Alert", "New confusion", "Responds to voice", "Responds to pain", "Unresponsive")
_ADULT_AGE_YEARS = 16  # RCP 2017: NEWS2 is not validated for children under 16


def chart_points(variable: str, values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Chart 1 points for many values of one banded variable at once (NaN stays NaN).

    For the model's features (``cds_service.features``), so that the chart's thresholds live in
    this one place. Covers ``resp_rate``, ``sbp``, ``heart_rate``, ``temperature`` and ``spo2``
    on Scale 1. Rounding is half up to the chart's precision, as in ``score_news2``; the tiny
    epsilon makes binary floats such as 38.05 (stored as 38.04999...) round as written.
    """
    tables = {b.variable: (b.bands, b.decimals) for b in _BANDED}
    tables["spo2"] = (_SPO2_SCALE1, 0)
    bands, decimals = tables[variable]
    scale = 10.0**decimals
    read = np.floor(values * scale + 0.5 + 1e-9) / scale
    points = np.full(values.shape, np.nan)
    assigned = np.isnan(values)
    for upper, band_points in bands:
        inside = ~assigned if upper is None else ~assigned & (read <= float(upper))
        points[inside] = band_points
        assigned |= inside
    return points


def _band(value: Decimal, bands: _Bands) -> int:
    for upper, points in bands:
        if upper is None or value <= upper:
            return points
    raise ValueError(f"{value} lies above the last band")  # tables end with an open band


def _fmt(value: float | Decimal) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(raw: float, read: Decimal, unit: str) -> str:
    """The value as recorded, and as the chart reads it when rounding changed it."""
    text = f"{_fmt(raw)} {unit}"
    return text if Decimal(str(raw)) == read else f"{text} (read as {read})"


def _oxygen_score(variable: str, tv: TimedValue, on: bool, text: str) -> ParameterScore:
    points = _OXYGEN_POINTS if on else 0
    unit = "L/min" if variable == "oxygen_flow_rate" else "1"
    return ParameterScore(Parameter.AIR_OR_OXYGEN, variable, tv.value, unit, tv.time, points, text)


class _Scorer:
    """Collects parameter scores and notes for one call; keeps :func:`score_news2` short."""

    def __init__(self, values: Vitals) -> None:
        self.values = values
        self.scores: dict[Parameter, ParameterScore] = {}
        self.notes: list[str] = []

    def get(self, variable: str) -> TimedValue | None:
        found = self.values.get(variable)
        if found is None:
            return None
        require_aware(found.time, f"time of {variable}")
        if not math.isfinite(found.value):
            self.notes.append(f"{variable} had no usable value ({found.value}); not scored.")
            return None
        return found

    def banded(self, spec: _Banded) -> None:
        tv = self.get(spec.variable)
        if tv is not None:
            read = round_half_up(tv.value, spec.decimals)
            points, text = _band(read, spec.bands), _shown(tv.value, read, spec.shown_unit)
            self.scores[spec.parameter] = ParameterScore(
                spec.parameter, spec.variable, tv.value, spec.unit, tv.time, points, text
            )

    def air_or_oxygen(self) -> bool | None:
        """Score air or oxygen; return whether the patient is on oxygen, None when unknown."""
        candidates: list[ParameterScore] = []
        flag = self.get("supplemental_oxygen")
        if flag is not None:
            on = flag.value != 0
            candidates.append(
                _oxygen_score("supplemental_oxygen", flag, on, "Oxygen" if on else "Air")
            )
        fio2 = self.get("fio2")
        if fio2 is not None:
            on = round_half_up(fio2.value, 2) > _ROOM_AIR_FIO2
            text = f"{'Oxygen' if on else 'Air'} (FiO2 {_fmt(fio2.value)})"
            candidates.append(_oxygen_score("fio2", fio2, on, text))
        flow = self.get("oxygen_flow_rate")
        if flow is not None:
            on = flow.value > 0
            text = f"{'Oxygen' if on else 'Air'} ({_fmt(flow.value)} L/min)"
            candidates.append(_oxygen_score("oxygen_flow_rate", flow, on, text))
        if not candidates:
            return None
        # Any record of oxygen outweighs one of air (see the module docstring); among records
        # that agree, the newest is the one shown.
        chosen = max(candidates, key=lambda c: (c.points, c.time))
        self.scores[Parameter.AIR_OR_OXYGEN] = chosen
        return chosen.points > 0

    def spo2(self, scale: SpO2Scale, on_oxygen: bool | None) -> None:
        tv = self.get("spo2")
        if tv is None:
            return
        read = round_half_up(tv.value)
        if scale is SpO2Scale.SCALE_1:
            points = _band(read, _SPO2_SCALE1)
        elif read <= _SPO2_SCALE2_TARGET_TOP:
            points = _band(read, _SPO2_SCALE2)
        elif on_oxygen is None:
            self.notes.append(
                f"SpO2 {_fmt(tv.value)} % on Scale 2 was not scored: at 93 % or more its points "
                "depend on air or oxygen, which was not recorded."
            )
            return
        else:
            points = _band(read, _SPO2_SCALE2_ON_OXYGEN) if on_oxygen else 0
        text = _shown(tv.value, read, "%")
        self.scores[Parameter.SPO2] = ParameterScore(
            Parameter.SPO2, "spo2", tv.value, "%", tv.time, points, text
        )

    def consciousness(self) -> None:
        acvpu = self.get("consciousness")
        if acvpu is not None:
            level = acvpu.value
            if float(level).is_integer() and 0 <= level < len(_ACVPU):
                # Chart 1: Alert scores 0; new confusion, voice, pain or unresponsive score 3.
                points = 0 if level == 0 else 3
                text = _ACVPU[int(level)]
                self.scores[Parameter.CONSCIOUSNESS] = ParameterScore(
                    Parameter.CONSCIOUSNESS,
                    "consciousness",
                    level,
                    "{score}",
                    acvpu.time,
                    points,
                    text,
                )
                return
            self.notes.append(f"Consciousness value {_fmt(level)} is not an ACVPU level 0-4.")
        gcs = self.get("gcs_total")
        if gcs is None:
            return
        if round_half_up(gcs.value) == 15:
            text = "Alert (GCS 15)"
            self.scores[Parameter.CONSCIOUSNESS] = ParameterScore(
                Parameter.CONSCIOUSNESS, "gcs_total", gcs.value, "{score}", gcs.time, 0, text
            )
            return
        self.notes.append(
            f"GCS {_fmt(gcs.value)} was recorded at {iso_utc(gcs.time)} but no ACVPU level: "
            "a GCS below 15 was not converted to ACVPU, so consciousness is left unscored. "
            "Assess ACVPU at the bedside."
        )


def _eligibility(age_years: float | None, pregnant: bool | None) -> str | None:
    """Why NEWS2 does not apply to this patient (RCP 2017: adults 16 and over, not pregnant)."""
    if age_years is None:
        return "Age is not recorded; NEWS2 is validated only for patients aged 16 and over."
    if age_years < _ADULT_AGE_YEARS:
        return "NEWS2 is not validated for patients under 16 years old."
    if pregnant:
        return "NEWS2 is not validated in pregnancy."
    return None


def _band_for(score: int, any_single_three: bool) -> RiskBand:
    # RCP 2017 thresholds and triggers: the aggregate bands outrank the single red score.
    if score >= 7:
        return RiskBand.HIGH
    if score >= 5:
        return RiskBand.MEDIUM
    return RiskBand.LOW_MEDIUM if any_single_three else RiskBand.LOW


def score_news2(
    values: Vitals,
    *,
    age_years: float | None,
    pregnant: bool | None,
    spo2_scale2: bool,
    now: datetime,
) -> News2Result:
    """Score NEWS2 from each variable's most recent value in the caller's look-back window.

    The score is computed even for a patient NEWS2 was not made for, so that it can be logged;
    ``eligible`` says whether it may be shown. Times must be timezone-aware.
    """
    require_aware(now, "now")
    scorer = _Scorer(values)
    scale = SpO2Scale.SCALE_2 if spo2_scale2 else SpO2Scale.SCALE_1
    for spec in _BANDED:
        scorer.banded(spec)
    scorer.spo2(scale, scorer.air_or_oxygen())
    scorer.consciousness()
    ordered = tuple(scorer.scores[p] for p in Parameter if p in scorer.scores)
    missing = tuple(p for p in Parameter if p not in scorer.scores)
    score = sum(s.points for s in ordered)
    any_single_three = any(s.points == 3 for s in ordered)
    reason = _eligibility(age_years, pregnant)
    return News2Result(
        score=score,
        parameters=ordered,
        missing=missing,
        unscored=tuple(p for p in missing if any(v in values for v in _SOURCES[p])),
        partial=bool(missing),
        any_single_three=any_single_three,
        band=_band_for(score, any_single_three),
        scale=scale,
        eligible=reason is None,
        ineligible_reason=reason,
        pregnancy_unknown=pregnant is None,
        notes=tuple(scorer.notes),
        scored_at=now,
    )
