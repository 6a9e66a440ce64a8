"""One patient's sepsis risk now, its trend and its drivers, from the data a hook call assembled.

The features are ``cds_service.features`` — the definition training used — over the hourly grid
of the merged timeline, counted from ICU admission as PhysioNet's ``ICULOS`` is. One ORT batch
holds the rows of the last 24 hours (the trend) and, for the current hour, one variant per feature
group with that group reset to the validation population's median (occlusion): the difference is
how much the patient's own values of that variable move the risk.

Who is scored: adults (``min_age_years``, 18 by default) in an ICU stay, with a vital sign newer
than ``stale_vitals_h``. Everyone else gets no score; the reason is counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from cds_service.clinical_data import PatientData
from cds_service.features import (
    LOOKBACK_HOURS,
    MODEL_VARIABLES,
    PatientContext,
    feature_groups,
    feature_matrix,
    grid_from_observations,
)
from cds_service.inference.registry import LoadedModel
from cds_service.inference.scorer import Scorer
from cds_service.scores import TimedValue
from cds_service.sepsis.assessment import (
    Driver,
    ModelInfo,
    RiskBand,
    SepsisAssessment,
    TrendPoint,
)
from cds_service.sepsis.stay import IcuStay, icu_stay
from cds_service.settings import SepsisSettings
from cds_service.store.patients import StayContext
from fhir_adapters.binning import bin_of, bin_start
from fhir_adapters.canonical import CanonicalObservation
from fhir_adapters.variables import VARIABLES as BY_NAME

TREND_HOURS = 24
TOP_DRIVERS = 5
#: Variables whose absence the card names: the sepsis-relevant labs and the vital signs.
KEY_VARIABLES = (
    "heart_rate", "resp_rate", "temperature", "sbp", "map", "spo2",
    "lactate", "wbc", "creatinine", "platelets", "bilirubin_total",
)  # fmt: skip
VITALS = frozenset(v for v in MODEL_VARIABLES if BY_NAME[v].kind == "vital")
#: Septic shock and the SSC 2018 bundle's trigger for 30 mL/kg: hypotension (MAP < 65 mmHg; SBP
#: < 90 mmHg, Sepsis-3's qSOFA and SSC's hypotension criterion) or lactate >= 4 mmol/L. Levy MM,
#: Evans LE, Rhodes A. Crit Care Med 2018;46:997-1000; Singer M et al. JAMA 2016;315:801-810.
MAP_LOW, SBP_LOW, LACTATE_HIGH = 65.0, 90.0, 4.0
#: Lactate counts as current for the bundle for this long (our choice: a lactate is usually
#: repeated within 2-4 h when raised; older than 24 h it no longer describes now).
LACTATE_CURRENT = timedelta(hours=24)
_CONTEXT_LABELS = {
    "age": ("Age", "years"),
    "sex": ("Sex", ""),
    "icu_unit": ("ICU type", ""),
    "time_in_icu": ("Time in ICU", "h"),
}


@dataclass(frozen=True)
class NotScored:
    #: a fixed label for the metric
    reason: Literal["age-unknown", "under-age", "not-icu", "before-icu", "stale-vitals"]


def feature_rows(
    observations: Iterable[CanonicalObservation],
    icu_start: datetime,
    context: PatientContext,
    now: datetime,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], int]:
    """Feature rows of the last ``TREND_HOURS`` hours up to ``now`` (the last row is now), their
    bins, and the current bin: what the hook call and the workers both score."""
    now_bin = bin_of(now, icu_start)
    first_bin = max(1, now_bin - LOOKBACK_HOURS + 1 - (TREND_HOURS - 1))
    grid = grid_from_observations(observations, icu_start, first_bin, now_bin)
    return feature_matrix(grid, context).astype(np.float32), grid.bins, now_bin


def band_of(risk: float, model: LoadedModel) -> RiskBand:
    points = model.entry.operating_points
    if risk >= points.utility_optimal:
        return RiskBand.HIGH
    if risk >= points.high_sensitivity:
        return RiskBand.ELEVATED
    return RiskBand.LOW


def _sex(patient: dict[str, Any] | None) -> Literal["female", "male"] | None:
    gender = patient.get("gender") if patient else None
    return gender if gender in ("female", "male") else None


class SepsisAssessor:
    def __init__(self, scorer: Scorer, settings: SepsisSettings, base_url: str) -> None:
        self._scorer = scorer
        self._settings = settings
        self._base_url = base_url
        self._groups = feature_groups()

    def eligibility(
        self,
        data: PatientData,
        resources: dict[str, dict[str, Any] | None],
        cached: StayContext | None = None,
    ) -> IcuStay | NotScored:
        age = data.facts.age_years
        if age is None and cached is not None and resources.get("patient") is None:
            age = cached.age_years
        if age is None:
            return NotScored("age-unknown")
        if age < self._settings.min_age_years:
            return NotScored("under-age")
        stay = icu_stay(
            resources.get("encounter"),
            self._settings.icu_location_ids,
            require_icu=self._settings.require_icu,
        )
        if stay is None and cached is not None and resources.get("encounter") is None:
            stay = IcuStay(
                cached.encounter_id,
                cached.icu_start_time,
                cached.unit,
                cached.hospital_to_icu_hours,
            )
        if stay is None:
            return NotScored("not-icu")
        if bin_of(data.now, stay.icu_start) < 1:
            return NotScored("before-icu")
        fresh = data.now - timedelta(hours=self._settings.stale_vitals_h)
        if not any(o.variable in VITALS and o.time >= fresh for o in data.observations):
            return NotScored("stale-vitals")
        return stay

    async def assess(
        self,
        data: PatientData,
        resources: dict[str, dict[str, Any] | None],
        patient_id: str,
        encounter_id: str | None,
        cached: StayContext | None = None,
        *,
        model: LoadedModel | None = None,
    ) -> SepsisAssessment | NotScored:
        """Score with ``model`` (the active one by default; raises ``ModelUnavailable`` when none
        is loaded). ``cached`` is the workers' stay context, used for what the call neither
        prefetched nor fetched."""
        model = model or self._scorer.model()
        stay = self.eligibility(data, resources, cached)
        if isinstance(stay, NotScored):
            return stay
        patient = resources.get("patient")
        use_cache = cached if cached is not None and patient is None else None
        context = PatientContext(
            age_years=use_cache.age_years if use_cache else data.facts.age_years,
            sex=use_cache.sex if use_cache else _sex(patient),
            icu_unit=stay.unit,
            hospital_to_icu_hours=stay.hospital_to_icu_hours,
        )
        rows, bins, now_bin = feature_rows(data.observations, stay.icu_start, context, data.now)
        trend_rows = rows[-TREND_HOURS:]
        batch = np.vstack([trend_rows, self._occluded(rows[-1], model.reference_medians)])
        risks = await self._scorer.score(model, batch)
        trend_risks = risks[: len(trend_rows)]
        risk = float(trend_risks[-1])
        effects = risk - risks[len(trend_rows) :]
        bins = bins[-len(trend_rows) :]
        return SepsisAssessment(
            patient_id=patient_id,
            encounter_id=encounter_id or stay.encounter_id,
            now=data.now,
            risk=risk,
            band=band_of(risk, model),
            model=self._model_info(model),
            trend=[
                TrendPoint(int(now_bin - k), bin_start(stay.icu_start, int(k)), float(r))
                for k, r in zip(bins, trend_risks, strict=True)
            ],
            drivers=self._drivers(effects, data, context, stay, now_bin),
            newest_vital=max(
                (o.time for o in data.observations if o.variable in VITALS), default=None
            ),
            newest_lab=max(
                (o.time for o in data.observations if BY_NAME[o.variable].kind == "lab"),
                default=None,
            ),
            missing=[BY_NAME[v].label for v in KEY_VARIABLES if v not in data.latest],
            history=data.history,
            **self._state(data),
            unusable=_unusable(data),
            features=rows[-1],
        )

    def _occluded(
        self, row: npt.NDArray[np.float32], medians: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        variants = np.tile(row, (len(self._groups), 1))
        for i, columns in enumerate(self._groups.values()):
            variants[i, list(columns)] = medians[list(columns)]
        return variants

    def _drivers(
        self,
        effects: npt.NDArray[np.float64],
        data: PatientData,
        context: PatientContext,
        stay: IcuStay,
        now_bin: int,
    ) -> list[Driver]:
        drivers: list[Driver] = []
        for group, effect in zip(self._groups, effects, strict=True):
            if effect == 0:
                continue
            if group in BY_NAME:
                variable = BY_NAME[group]
                newest = data.latest.get(group)
                if newest is None:
                    # A variable never measured moves the risk through its missingness; that is
                    # not one of the patient's own values, and "not measured lowers the risk"
                    # would read as advice not to measure.
                    continue
                drivers.append(
                    Driver(
                        variable=group,
                        label=variable.label,
                        unit=variable.unit,
                        value=newest.value,
                        time=newest.time,
                        effect=float(effect),
                    )
                )
            else:
                label, unit = _CONTEXT_LABELS[group]
                fact = {"sex": context.sex, "icu_unit": context.icu_unit}.get(group)
                if group in ("sex", "icu_unit"):
                    label = f"{label}: {fact or 'not recorded'}"
                value = {"age": context.age_years, "time_in_icu": float(now_bin)}.get(group)
                drivers.append(Driver(group, label, unit, value, None, float(effect)))
        drivers.sort(key=lambda d: -abs(d.effect))
        return drivers[:TOP_DRIVERS]

    def _state(self, data: PatientData) -> dict[str, Any]:
        fresh = data.now - timedelta(hours=self._settings.stale_vitals_h)
        signs: list[str] = []
        hypotension = False
        for name, limit in (("map", MAP_LOW), ("sbp", SBP_LOW)):
            obs = data.latest.get(name)
            if obs is not None and obs.time >= fresh and obs.value < limit:
                hypotension = True
                signs.append(f"{BY_NAME[name].label} {obs.value:g} mmHg")
        lactate_obs = data.latest.get("lactate")
        lactate = None
        if lactate_obs is not None and lactate_obs.time >= data.now - LACTATE_CURRENT:
            lactate = TimedValue(lactate_obs.value, lactate_obs.time)
            if lactate.value >= LACTATE_HIGH:
                signs.append(f"Lactate {lactate.value:g} mmol/L")
        weight_obs = data.latest.get("weight")
        weight = TimedValue(weight_obs.value, weight_obs.time) if weight_obs else None
        return {
            "shock_signs": signs,
            "hypotension": hypotension,
            "lactate": lactate,
            "weight_kg": weight,
        }

    def _model_info(self, model: LoadedModel) -> ModelInfo:
        points = model.entry.operating_points
        return ModelInfo(
            version=model.version,
            outcome=model.entry.outcome,
            alert_level=points.utility_optimal,
            high_sensitivity_level=points.high_sensitivity,
            card_url=f"{self._base_url}/model-cards/{model.version}",
            held_out=dict(model.held_out),
        )


def _unusable(data: PatientData) -> dict[str, int]:
    stats = data.stats
    counts = {
        "implausible value": sum(stats.implausible.values()),
        "unit not convertible": sum(stats.bad_unit.values()),
        "no time": stats.no_time,
        "no value": stats.no_value,
    }
    return {reason: n for reason, n in counts.items() if n}
