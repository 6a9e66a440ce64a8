"""The one feature definition: a patient's hourly grid of canonical values → the model's features.

Training (PhysioNet rows), the workers and the request path (FHIR) all call ``feature_matrix`` on
the same kind of input — an ``HourlyGrid`` built by ``grid_from_observations`` from canonical
observations binned as ``fhir_adapters.binning`` defines — so a test can prove that one patient
sent as FHIR and the same patient read from PSV give identical vectors.

Every feature is causal and looks back at most ``LOOKBACK_HOURS`` (72, the timeline's default
retention): the row of hour k uses bins k-71 … k only, so the service, which keeps 72 h, can
compute every feature. Nothing depends on the record's length or end (in the PhysioNet data the
end of a septic record leaks the label: README, "Caveats we measured").

Per model variable (the 34 PhysioNet vitals and labs): the newest value (carried forward within
the look-back), hours since it was measured, and how many hours of the last 24 had a measurement.
For the vital signs and the sepsis-relevant labs also: mean, min and max over the last 6 and 24
hours, and the change of the carried-forward value over 6 hours. Then clinical combinations:
shock index (HR/SBP), BUN/creatinine, SpO2/FiO2, partial SOFA sub-scores (coagulation, liver,
renal, cardiovascular by MAP only: Vincent et al., Intensive Care Med 1996;22:707-710), partial
qSOFA without mentation (Seymour et al., JAMA 2016;315:762-774) and NEWS2 chart points of five
parameters (RCP 2017, from ``cds_service.scores.news2.chart_points``). And the context: age, sex,
MICU/SICU flags, hours in the ICU (= the bin index, PhysioNet's ICULOS) and hours since hospital
admission (from the Encounter in FHIR; ICULOS - HospAdmTime in PhysioNet).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from cds_service.scores.news2 import chart_points
from fhir_adapters.binning import bin_of
from fhir_adapters.canonical import CanonicalObservation
from fhir_adapters.variables import BY_PHYSIONET

Array = npt.NDArray[np.float64]

LOOKBACK_HOURS = 72
#: PhysioNet 2019 PSV columns of vitals and labs, in file order, as catalogue variables.
PSV_COLUMNS = (
    "HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "EtCO2", "BaseExcess", "HCO3", "FiO2",
    "pH", "PaCO2", "SaO2", "AST", "BUN", "Alkalinephos", "Calcium", "Chloride", "Creatinine",
    "Bilirubin_direct", "Glucose", "Lactate", "Magnesium", "Phosphate", "Potassium",
    "Bilirubin_total", "TroponinI", "Hct", "Hgb", "PTT", "WBC", "Fibrinogen", "Platelets",
)  # fmt: skip
MODEL_VARIABLES: tuple[str, ...] = tuple(BY_PHYSIONET[c].name for c in PSV_COLUMNS)
_COLUMN = {name: i for i, name in enumerate(MODEL_VARIABLES)}
#: Variables that also get window statistics and a 6-hour change.
DYNAMIC = (
    "heart_rate", "spo2", "temperature", "sbp", "map", "dbp", "resp_rate", "lactate",
    "creatinine", "platelets", "bilirubin_total", "wbc", "bun",
)  # fmt: skip
WINDOWS = (6, 24)


@dataclass(frozen=True)
class PatientContext:
    """What the model knows about the patient beyond the timeline."""

    age_years: float | None
    sex: Literal["female", "male"] | None
    icu_unit: Literal["MICU", "SICU"] | None
    #: hours from hospital admission to ICU admission (>= 0), when known
    hospital_to_icu_hours: float | None


@dataclass(frozen=True)
class HourlyGrid:
    """Values per hour bin (rows: bins ``first_bin`` …) and model variable (columns)."""

    first_bin: int
    values: Array

    @property
    def bins(self) -> npt.NDArray[np.int64]:
        return np.arange(self.first_bin, self.first_bin + len(self.values), dtype=np.int64)


def grid_from_observations(
    observations: Iterable[CanonicalObservation], icu_start: datetime, first_bin: int, last_bin: int
) -> HourlyGrid:
    """Bins ``first_bin`` … ``last_bin``; in a bin the newest value wins (ties: the last source)."""
    values = np.full((last_bin - first_bin + 1, len(MODEL_VARIABLES)), np.nan)
    newest: dict[tuple[int, int], tuple[datetime, str]] = {}
    for obs in observations:
        column = _COLUMN.get(obs.variable)
        if column is None:
            continue
        k = bin_of(obs.time, icu_start)
        if not first_bin <= k <= last_bin:
            continue
        key = (k, column)
        rank = (obs.time, obs.source)
        if key not in newest or rank >= newest[key]:
            newest[key] = rank
            values[k - first_bin, column] = obs.value
    return HourlyGrid(first_bin=first_bin, values=values)


def _window_view(x: Array, width: int, fill: float) -> Array:
    padded = np.concatenate([np.full((width - 1, x.shape[1]), fill), x])
    view: Array = sliding_window_view(padded, width, axis=0)  # [T, V, width]
    return view


def _feature_names() -> tuple[str, ...]:
    names = [
        f"{v}_{kind}" for v in MODEL_VARIABLES for kind in ("last", "hours_since", "count_24h")
    ]
    for v in DYNAMIC:
        names += [f"{v}_{stat}_{w}h" for w in WINDOWS for stat in ("mean", "min", "max")]
        names.append(f"{v}_delta_6h")
    names += [
        "shock_index", "bun_creatinine_ratio", "spo2_fio2_ratio",
        "sofa_coagulation", "sofa_liver", "sofa_renal", "sofa_cardiovascular_map",
        "qsofa_partial", "news2_resp_rate", "news2_spo2", "news2_sbp", "news2_heart_rate",
        "news2_temperature", "news2_partial_sum",
        "age_years", "sex_male", "unit_micu", "unit_sicu", "icu_hours", "hospital_hours",
    ]  # fmt: skip
    return tuple(names)


FEATURE_NAMES = _feature_names()


def _sofa(values: Array, cuts: tuple[float, ...], higher_is_worse: bool) -> Array:
    """Points 0-4 by ascending cut points (Vincent 1996); NaN where the value is NaN."""
    points = np.zeros(values.shape)
    for cut in cuts:
        points += (values >= cut) if higher_is_worse else (values < cut)
    points[np.isnan(values)] = np.nan
    return points


def feature_matrix(grid: HourlyGrid, context: PatientContext) -> Array:
    """One feature row per bin of ``grid`` (float64; NaN = unknown, as the trees expect)."""
    x = grid.values
    t_count, _ = x.shape
    hours = np.arange(t_count)
    measured = ~np.isnan(x)
    last_index = np.maximum.accumulate(np.where(measured, hours[:, None], -1), axis=0)
    age = hours[:, None] - last_index
    usable = (last_index >= 0) & (age < LOOKBACK_HOURS)
    last = np.where(usable, x[np.clip(last_index, 0, None), np.arange(x.shape[1])], np.nan)
    since = np.where(usable, age, np.nan).astype(np.float64)
    counts = np.cumsum(measured, axis=0)
    shifted = np.vstack([np.zeros((24, x.shape[1])), counts])[:t_count]
    count_24h = (counts - shifted).astype(np.float64)
    columns: list[Array] = []
    for j in range(x.shape[1]):
        columns += [last[:, j], since[:, j], count_24h[:, j]]
    dyn = np.array([_COLUMN[name] for name in DYNAMIC])
    xd, md = x[:, dyn], measured[:, dyn]
    filled = np.where(md, xd, 0.0)
    stats: list[tuple[Array, Array, Array]] = []
    for width in WINDOWS:
        # Sums over each window's own elements (not differences of running sums), so that a
        # 72-hour grid and a whole stay give bit-identical features for the same hour.
        n = _window_view(md.astype(np.float64), width, 0.0).sum(axis=2)
        total = _window_view(filled, width, 0.0).sum(axis=2)
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        low = _window_view(np.where(md, xd, np.inf), width, np.inf).min(axis=2)
        high = _window_view(np.where(md, xd, -np.inf), width, -np.inf).max(axis=2)
        stats.append((mean, np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)))
    # The value carried forward to 6 h ago, if measured within the look-back of *now*: a value
    # 6 h before a 72 h window would be one the service no longer holds.
    index_then = np.vstack([np.full((6, len(dyn)), -1), last_index[:, dyn]])[:t_count]
    known = (index_then >= 0) & (hours[:, None] - index_then < LOOKBACK_HOURS)
    before = np.where(known, xd[np.clip(index_then, 0, None), np.arange(len(dyn))], np.nan)
    delta = last[:, dyn] - before
    for k in range(len(dyn)):
        for mean, low, high in stats:
            columns += [mean[:, k], low[:, k], high[:, k]]
        columns.append(delta[:, k])

    def latest(name: str) -> Array:
        value: Array = last[:, _COLUMN[name]]
        return value

    with np.errstate(divide="ignore", invalid="ignore"):
        shock = latest("heart_rate") / latest("sbp")
        bun_cr = latest("bun") / latest("creatinine")
        s_f = latest("spo2") / latest("fio2")
        qsofa = (latest("resp_rate") >= 22).astype(np.float64) + (latest("sbp") <= 100)
    news2 = [
        chart_points(v, latest(v))
        for v in ("resp_rate", "spo2", "sbp", "heart_rate", "temperature")
    ]
    qsofa[np.isnan(latest("resp_rate")) & np.isnan(latest("sbp"))] = np.nan
    sex = {"male": 1.0, "female": 0.0}.get(context.sex or "", np.nan)
    unit = context.icu_unit
    icu_hours = grid.bins.astype(np.float64)
    hospital = icu_hours + (
        context.hospital_to_icu_hours if context.hospital_to_icu_hours is not None else np.nan
    )
    constant = np.ones(t_count)
    columns += [
        np.where(np.isfinite(shock), shock, np.nan),
        np.where(np.isfinite(bun_cr), bun_cr, np.nan),
        np.where(np.isfinite(s_f), s_f, np.nan),
        _sofa(latest("platelets"), (150, 100, 50, 20), higher_is_worse=False),
        _sofa(latest("bilirubin_total"), (1.2, 2.0, 6.0, 12.0), higher_is_worse=True),
        _sofa(latest("creatinine"), (1.2, 2.0, 3.5, 5.0), higher_is_worse=True),
        np.where(np.isnan(latest("map")), np.nan, (latest("map") < 70).astype(np.float64)),
        qsofa,
        *news2,
        np.nansum(np.vstack(news2), axis=0),
        constant * (context.age_years if context.age_years is not None else np.nan),
        constant * sex,
        constant * (np.nan if unit is None else float(unit == "MICU")),
        constant * (np.nan if unit is None else float(unit == "SICU")),
        icu_hours,
        hospital,
    ]
    matrix = np.column_stack(columns).astype(np.float64)
    assert matrix.shape[1] == len(FEATURE_NAMES)  # noqa: S101 - names and columns must agree
    return matrix


#: Combined features and the model variables they are computed from.
_COMBINED = {
    "shock_index": ("heart_rate", "sbp"),
    "bun_creatinine_ratio": ("bun", "creatinine"),
    "spo2_fio2_ratio": ("spo2", "fio2"),
    "sofa_coagulation": ("platelets",),
    "sofa_liver": ("bilirubin_total",),
    "sofa_renal": ("creatinine",),
    "sofa_cardiovascular_map": ("map",),
    "qsofa_partial": ("resp_rate", "sbp"),
    "news2_resp_rate": ("resp_rate",),
    "news2_spo2": ("spo2",),
    "news2_sbp": ("sbp",),
    "news2_heart_rate": ("heart_rate",),
    "news2_temperature": ("temperature",),
    "news2_partial_sum": ("resp_rate", "spo2", "sbp", "heart_rate", "temperature"),
}
#: Context groups: what the patient's record says beyond the timeline.
CONTEXT_GROUPS = {
    "age": ("age_years",),
    "sex": ("sex_male",),
    "icu_unit": ("unit_micu", "unit_sicu"),
    "time_in_icu": ("icu_hours", "hospital_hours"),
}


def feature_groups() -> dict[str, tuple[int, ...]]:
    """Feature columns by what they are computed from: one group per model variable (its own
    features and every combination that uses it) and one per context fact. Explanations reset a
    whole group at once, so that a variable's influence is not split over its derived features."""
    index = {name: i for i, name in enumerate(FEATURE_NAMES)}
    groups: dict[str, list[int]] = {v: [] for v in MODEL_VARIABLES}
    for v in MODEL_VARIABLES:
        groups[v] += [index[f"{v}_{kind}"] for kind in ("last", "hours_since", "count_24h")]
        if v in DYNAMIC:
            groups[v] += [
                index[f"{v}_{stat}_{w}h"] for w in WINDOWS for stat in ("mean", "min", "max")
            ]
            groups[v].append(index[f"{v}_delta_6h"])
    for name, sources in _COMBINED.items():
        for v in sources:
            groups[v].append(index[name])
    for group, names in CONTEXT_GROUPS.items():
        groups[group] = [index[n] for n in names]
    return {group: tuple(sorted(columns)) for group, columns in groups.items()}
