"""Site-local validation ("data behind glass"): a registered model on a hospital's own labelled
data, and a report of aggregates only that the hospital can share.

``python -m training evaluate --site PATH --model VERSION --out DIR`` loads the version through
the service's verified loader (``cds_service.inference.registry.load_version``: every file's
sha256 and the feature definition checked), reads the site's stays (``training.site_data``:
PhysioNet PSV, or a FHIR Bulk Data export through ``training.site_fhir``), scores every hourly row
with the calibrated model, and writes ``report.json`` (validated by ``SiteReport``) and
``report.md`` (rendered from the validated report, so it can hold nothing the JSON does not).

**What a report holds.** Counts of stays, septic stays and patient-hours; AUROC and AUPRC with
patient-bootstrap intervals; the normalised utility of the PhysioNet 2019 challenge; calibration
(slope, intercept, Brier, a table by fixed risk bins with observed and expected rates); the
operating point at the model's alert level (sensitivity, specificity, PPV, alerts per 100
patient-days, median lead time); the same figures by sex, age band, ICU unit and length of stay;
and the model's figures on its own validation split beside the site's (``metrics.validation`` of
the manifest), with the difference.

**What it never holds.** No identifier, file name or patient timestamp (the stays are numbered
internally and the generation time is the only time written), no row-level value: every number
is a field of the schema marked ``Aggregate`` (a count, a figure over a group, or a setting of
the model or of the rule), and every figure describing fewer than 10 patients, or depending on
the positives of fewer than 10 septic patients, is null with its reason, with complementary
suppression within each partition (``training.site_suppression``). Risk bins have fixed edges, so
no bin edge is a patient's score. The median lead time is, like any median, one septic stay's
lead in whole hours; it is published only over 10 or more alerted septic stays.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar, get_args

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from cds_service.inference.registry import LoadedModel, load_version
from fhir_adapters.site_codes import site_index
from training import metrics
from training.dataset import Dataset
from training.site_data import EXCLUSIONS, DataKind, Exclusion, SiteCohort, is_psv_input, read_psv
from training.site_fhir import SEPSIS_CODES_TEXT, read_ndjson
from training.site_suppression import MIN_CELL, Reason, small_cells, suppress


class Aggregate:
    """Marks a numeric schema field as one of the kinds of number a report may hold."""

    def __init__(self, kind: Literal["count", "figure", "setting"]) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"Aggregate({self.kind!r})"


#: How many stays / patient-hours / observations a group holds (null when suppressed).
Count = Annotated[int | None, Field(ge=0), Aggregate("count")]
#: A figure computed over a group (null when suppressed or undefined).
Figure = Annotated[float | None, Aggregate("figure")]
#: A setting of the model or of the rule (the alert level, a bin edge, the minimum cell).
Setting = Annotated[float, Aggregate("setting")]

FigureName = Literal[
    "patients",
    "septic_patients",
    "patient_hours",
    "patient_days",
    "observed_rate",
    "mean_predicted_risk",
    "auroc",
    "auprc",
    "normalized_utility",
    "calibration_slope",
    "calibration_intercept",
    "brier",
    "sensitivity",
    "specificity",
    "ppv",
    "alerts_per_100_patient_days",
    "lead_time_median_h",
    "septic_alerted_by_onset",
]
FIGURE_NAMES: Final[tuple[FigureName, ...]] = get_args(FigureName)
_COUNTS: Final = frozenset(
    {"patients", "septic_patients", "patient_hours", "septic_alerted_by_onset"}
)
#: Figures that describe the septic stays (their count, their hours, what finds them).
POSITIVE_DEPENDENT: Final = frozenset(
    {
        "septic_patients",
        "observed_rate",
        "auroc",
        "auprc",
        "normalized_utility",
        "calibration_slope",
        "calibration_intercept",
        "sensitivity",
        "ppv",
        "lead_time_median_h",
        "septic_alerted_by_onset",
    }
)

_STRICT = ConfigDict(extra="forbid", frozen=True)


class Figures(BaseModel):
    """One group's figures at the model's alert level; hours are patient-hours (rows)."""

    model_config = _STRICT
    patients: Count
    septic_patients: Count
    patient_hours: Count
    patient_days: Figure
    observed_rate: Figure  # share of patient-hours labelled septic
    mean_predicted_risk: Figure
    auroc: Figure
    auprc: Figure
    normalized_utility: Figure
    calibration_slope: Figure
    calibration_intercept: Figure
    brier: Figure
    sensitivity: Figure
    specificity: Figure
    ppv: Figure
    alerts_per_100_patient_days: Figure
    lead_time_median_h: Figure
    septic_alerted_by_onset: Count
    suppressed: dict[FigureName, Reason] = Field(default_factory=dict)


IntervalName = Literal["auroc_low", "auroc_high", "auprc_low", "auprc_high"]


class Intervals(BaseModel):
    """Percentile bootstrap intervals of the whole cohort, resampling stays (not hours)."""

    model_config = _STRICT
    level: Setting
    resamples: Setting
    auroc_low: Figure
    auroc_high: Figure
    auprc_low: Figure
    auprc_high: Figure
    suppressed: dict[IntervalName, Reason] = Field(default_factory=dict)


BinField = Literal["patients", "septic_patients", "patient_hours", "expected_rate", "observed_rate"]


class CalibrationBin(BaseModel):
    """Patient-hours whose calibrated risk is in [risk_from, risk_to)."""

    model_config = _STRICT
    risk_from: Setting
    risk_to: Setting
    patients: Count  # stays with at least one hour in the bin
    septic_patients: Count  # septic stays with at least one septic-labelled hour in the bin
    patient_hours: Count
    expected_rate: Figure  # mean calibrated risk of the bin's hours
    observed_rate: Figure  # share of the bin's hours labelled septic
    suppressed: dict[BinField, Reason] = Field(default_factory=dict)


Partition = Literal["sex", "age", "icu_unit", "length_of_stay"]
Level = Literal[
    "female",
    "male",
    "unknown",
    "18-44",
    "45-64",
    "65-79",
    "80+",
    "MICU",
    "SICU",
    "under 24 h",
    "24-71 h",
    "72-167 h",
    "168 h and over",
]
LEVELS: Final[dict[Partition, tuple[Level, ...]]] = {
    "sex": ("female", "male", "unknown"),
    "age": ("18-44", "45-64", "65-79", "80+"),
    "icu_unit": ("MICU", "SICU", "unknown"),
    "length_of_stay": ("under 24 h", "24-71 h", "72-167 h", "168 h and over"),
}


class Subgroup(BaseModel):
    model_config = _STRICT
    by: Partition
    level: Level
    figures: Figures


class ExclusionCount(BaseModel):
    model_config = _STRICT
    reason: Exclusion
    stays: Count
    suppressed: Reason | None = None


CohortField = Literal["stays_found", "stays_included", "persons"]


class Cohort(BaseModel):
    """Stays found, included and excluded by reason (found = included + every exclusion)."""

    model_config = _STRICT
    stays_found: Count
    stays_included: Count
    #: distinct Patient resources among the included stays (FHIR input only)
    persons: Count = None
    exclusions: list[ExclusionCount]
    suppressed: dict[CohortField, Reason] = Field(default_factory=dict)


MappingField = Literal[
    "observations_read",
    "values_mapped",
    "values_implausible",
    "values_unit_not_accepted",
    "values_missing",
    "observations_without_time",
    "observations_not_read_codes",
]


class MappingCounts(BaseModel):
    """FHIR input: what happened to the Observations (counts of values, not of patients)."""

    model_config = _STRICT
    observations_read: Count
    values_mapped: Count
    values_implausible: Count
    values_unit_not_accepted: Count
    values_missing: Count
    observations_without_time: Count
    observations_not_read_codes: Count
    suppressed: dict[MappingField, Reason] = Field(default_factory=dict)


ComparedMetric = Literal[
    "auroc",
    "auprc",
    "normalized_utility",
    "calibration_slope",
    "calibration_intercept",
    "brier",
    "observed_rate",
    "sensitivity",
    "specificity",
    "ppv",
    "alerts_per_100_patient_days",
    "lead_time_median_h",
]
#: the name of each compared figure in the manifest's ``metrics.validation``
_VALIDATION_KEY: Final[dict[ComparedMetric, str]] = {
    "auroc": "auroc",
    "auprc": "auprc",
    "normalized_utility": "normalized_utility",
    "calibration_slope": "calibration_slope",
    "calibration_intercept": "calibration_intercept",
    "brier": "brier",
    "observed_rate": "row_prevalence",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "ppv",
    "alerts_per_100_patient_days": "alerts_per_100_patient_days",
    "lead_time_median_h": "lead_median_h",
}


class Comparison(BaseModel):
    model_config = _STRICT
    metric: ComparedMetric
    site: Figure
    validation: Figure
    difference: Figure  # site - validation


class ModelInfo(BaseModel):
    model_config = _STRICT
    version: str
    outcome: str
    alert_level: Setting
    high_sensitivity_level: Setting
    validation_split: str | None
    validation_patients: Count
    validation_septic_patients: Count


LabelKind = Literal["physionet-2019-sepsislabel", "proxy-from-sepsis-conditions"]


class LabelInfo(BaseModel):
    model_config = _STRICT
    kind: LabelKind
    definition: str
    citation: str
    codes: str | None = None


class DataInfo(BaseModel):
    model_config = _STRICT
    kind: DataKind
    label: LabelInfo


class SuppressionRule(BaseModel):
    model_config = _STRICT
    min_patients: Setting
    min_septic_patients: Setting
    rule: str


class SiteReport(BaseModel):
    """Everything a site report holds; ``extra="forbid"`` all the way down."""

    model_config = _STRICT
    report: Literal["sepsis-cds site validation report/1"] = "sepsis-cds site validation report/1"
    generated_at: datetime
    site_name: str = Field(min_length=1, max_length=100, pattern=r"^[^\n\r]+$")
    model: ModelInfo
    data: DataInfo
    suppression: SuppressionRule
    cohort: Cohort
    overall: Figures
    intervals: Intervals
    calibration: list[CalibrationBin]
    subgroups: list[Subgroup]
    comparison: list[Comparison]
    mapping: MappingCounts | None = None
    notes: list[str]


# ------------------------------------------------------------------------------ computing

#: Fixed edges (calibrated risk), around the alert levels (about 0.02) and the hourly base rate.
RISK_EDGES: Final = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 1.0)
PSV_LABEL: Final = (
    "PhysioNet/CinC 2019 SepsisLabel: 1 from 6 h before the Sepsis-3 onset t_sepsis (suspicion "
    "of infection - antibiotics and cultures - with a SOFA rise of 2 or more), 0 before and in "
    "stays without sepsis"
)
PROXY_LABEL: Final = (
    "PROXY LABEL, not the challenge's Sepsis-3 label: onset is the onset (else recorded) time of "
    "a Condition coded as sepsis; hours are labelled 1 from 6 h before it, as PhysioNet 2019 "
    "labels 6 h before t_sepsis, and a septic stay's hours stop 3 h after it. Stays with sepsis "
    "onset before ICU hour 4 are excluded as in the challenge; stays whose sepsis Condition has "
    "no time are excluded and counted. Coded diagnoses are late and incomplete: these figures "
    "measure agreement with the site's coding"
)
CITATION: Final = (
    "Reyna MA et al. Early Prediction of Sepsis From Clinical Data: the PhysioNet/Computing in "
    "Cardiology Challenge 2019. Crit Care Med 2020;48(2):210-217, doi:10.1097/CCM."
    "0000000000004145 (label definition: SepsisLabel = 1 for t >= t_sepsis - 6)"
)
SUPPRESSION_RULE: Final = (
    f"a figure describing fewer than {MIN_CELL} stays, or depending on the septic hours of fewer "
    f"than {MIN_CELL} septic stays, is null with its reason; within each partition (the cohort's "
    "exclusions, each subgroup kind, the risk bins) further cells are hidden until no hidden cell "
    "can be recovered from the total and the shown cells; zeros are shown. Partitions are not "
    "crossed with each other (no sex-by-age table), which is what keeps differencing between "
    "them small; figures other than counts are not protected against differencing"
)


def _raw_figures(
    labels: npt.NDArray[np.int8],
    risk: npt.NDArray[np.float64],
    bounds: npt.NDArray[np.int64],
    threshold: float,
) -> dict[FigureName, float]:
    """Every figure of one group, NaN where undefined (an empty group, one class)."""
    empty: dict[FigureName, float] = {name: math.nan for name in FIGURE_NAMES}
    if len(bounds) < 2:
        return empty | {"patients": 0.0, "septic_patients": 0.0, "patient_hours": 0.0}
    s = metrics.summary(labels, risk, bounds, threshold)

    def get(key: str) -> float:
        value = s.get(key)
        return math.nan if value is None else float(value)

    return {
        "patients": get("patients"),
        "septic_patients": get("septic_patients"),
        "patient_hours": get("rows"),
        "patient_days": get("rows") / 24,
        "observed_rate": get("row_prevalence"),
        "mean_predicted_risk": float(np.mean(risk)),
        "auroc": get("auroc"),
        "auprc": get("auprc"),
        "normalized_utility": get("normalized_utility"),
        "calibration_slope": get("calibration_slope"),
        "calibration_intercept": get("calibration_intercept"),
        "brier": get("brier"),
        "sensitivity": get("sensitivity"),
        "specificity": get("specificity"),
        "ppv": get("ppv"),
        "alerts_per_100_patient_days": get("alerts_per_100_patient_days"),
        "lead_time_median_h": get("lead_median_h"),
        "septic_alerted_by_onset": get("lead_alerted_by_onset"),
    }


def _figures(
    raw: Mapping[FigureName, float], hide_all: Reason | None, hide_positive: Reason | None
) -> Figures:
    values: dict[str, Any] = {}
    reasons: dict[FigureName, Reason] = {}
    for name in FIGURE_NAMES:
        value = raw[name]
        reason: Reason | None = None
        if hide_all is not None:
            reason = hide_all
        elif hide_positive is not None and name in POSITIVE_DEPENDENT:
            # "no septic stay" is itself no small cell: the count 0 is shown.
            if not (name == "septic_patients" and value == 0):
                reason = hide_positive
        elif not math.isfinite(value):
            reason = "undefined"
        if reason is not None:
            reasons[name] = reason
            values[name] = None
        else:
            values[name] = int(value) if name in _COUNTS else float(value)
    return Figures(**values, suppressed=reasons)


Cell = TypeVar("Cell", bound=str)


def protected_partition(
    raw: Mapping[Cell, Mapping[FigureName, float]], minimum: int = MIN_CELL
) -> dict[Cell, Figures]:
    """Figures of each cell of one partition whose cells add up to the cohort, suppressed.

    Whole cells by their stay counts (small, then complementary: a hidden cell hides every
    figure); then, among the rest, the positive-dependent figures by the septic counts."""
    stays = {cell: int(r["patients"]) for cell, r in raw.items()}
    septic = {cell: int(r["septic_patients"]) for cell, r in raw.items()}
    whole = suppress(stays, minimum)
    positive = suppress(septic, minimum, hidden=whole, small="small-cell-septic-patients")
    result: dict[Cell, Figures] = {}
    for cell, figures in raw.items():
        hide_positive: Reason | None = positive.get(cell)
        # An empty cell (no stay of that kind) has figures that are undefined, not small.
        if hide_positive is None and stays[cell] > 0 and septic[cell] < minimum:
            hide_positive = "small-cell-septic-patients"
        result[cell] = _figures(figures, whole.get(cell), hide_positive)
    return result


def _subset(
    data: Dataset, risk: npt.NDArray[np.float64], member: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    lengths = np.diff(data.boundaries)
    rows = np.repeat(member, lengths)
    bounds = np.concatenate([[0], np.cumsum(lengths[member])]).astype(np.int64)
    return data.labels[rows], risk[rows], bounds


def _levels(cohort: SiteCohort) -> dict[Partition, npt.NDArray[np.str_]]:
    data = cohort.data
    age = np.select(
        [data.age < 45, data.age < 65, data.age < 80], ["18-44", "45-64", "65-79"], "80+"
    )
    hours = cohort.stay_hours
    stay = np.select(
        [hours < 24, hours < 72, hours < 168],
        ["under 24 h", "24-71 h", "72-167 h"],
        "168 h and over",
    )
    unit = np.where(np.isin(data.unit, ["MICU", "SICU"]), data.unit, "unknown")
    sex = np.where(np.isin(data.sex, ["female", "male"]), data.sex, "unknown")
    return {"sex": sex, "age": age, "icu_unit": unit, "length_of_stay": stay}


def _subgroups(
    cohort: SiteCohort, risk: npt.NDArray[np.float64], threshold: float
) -> list[Subgroup]:
    found: list[Subgroup] = []
    for by, labels_of_stays in _levels(cohort).items():
        raw = {
            level: _raw_figures(*_subset(cohort.data, risk, labels_of_stays == level), threshold)
            for level in LEVELS[by]
        }
        for level, figures in protected_partition(raw).items():
            found.append(Subgroup(by=by, level=level, figures=figures))
    return found


def _calibration_table(data: Dataset, risk: npt.NDArray[np.float64]) -> list[CalibrationBin]:
    stay_of_row = np.repeat(np.arange(data.n_patients), np.diff(data.boundaries))
    cut = np.clip(np.searchsorted(RISK_EDGES, risk, side="right") - 1, 0, len(RISK_EDGES) - 2)
    positive = data.labels == 1
    raw: dict[str, dict[str, float]] = {}
    for number in range(len(RISK_EDGES) - 1):
        inside = cut == number
        hours = int(inside.sum())
        raw[str(number)] = {
            "patients": float(np.unique(stay_of_row[inside]).size),
            "septic_patients": float(np.unique(stay_of_row[inside & positive]).size),
            "patient_hours": float(hours),
            "positive_hours": float(np.sum(inside & positive)),
            "expected_rate": float(risk[inside].mean()) if hours else math.nan,
            "observed_rate": float(positive[inside].mean()) if hours else math.nan,
        }
    # Patient-hours add up to the cohort's (stays do not: a stay spans bins); septic-labelled
    # hours add up to observed_rate x patient-hours: both partitions get complementary cells.
    by_stays = small_cells({b: int(r["patients"]) for b, r in raw.items()})
    whole = suppress(
        {b: int(r["patient_hours"]) for b, r in raw.items()},
        hidden=dict.fromkeys(by_stays, "small-cell-patients"),
    )
    few_septic = small_cells({b: int(r["septic_patients"]) for b, r in raw.items()})
    positive_hidden = suppress(
        {b: int(r["positive_hours"]) for b, r in raw.items()},
        hidden=whole | dict.fromkeys(few_septic - whole.keys(), "small-cell-septic-patients"),
        small="small-cell-septic-patients",
    )
    table: list[CalibrationBin] = []
    for b, r in raw.items():
        values: dict[str, Any] = {}
        reasons: dict[BinField, Reason] = {}
        field: BinField
        for field in get_args(BinField):
            value = r[field]
            reason = whole.get(b)
            if reason is None and field in ("septic_patients", "observed_rate"):
                reason = positive_hidden.get(b)
            # As for every group: a rate of the septic hours needs 10 septic stays (the count 0
            # itself is no small cell and is shown).
            if reason is None and field == "observed_rate" and r["septic_patients"] < MIN_CELL:
                reason = "small-cell-septic-patients"
            if reason is None and not math.isfinite(value):
                reason = "undefined"
            if reason is not None:
                reasons[field], values[field] = reason, None
            else:
                values[field] = int(value) if field.endswith(("patients", "hours")) else value
        i = int(b)
        table.append(
            CalibrationBin(
                risk_from=RISK_EDGES[i], risk_to=RISK_EDGES[i + 1], **values, suppressed=reasons
            )
        )
    return table


def _intervals(
    data: Dataset, risk: npt.NDArray[np.float64], overall: Figures, resamples: int
) -> Intervals:
    names: tuple[IntervalName, ...] = get_args(IntervalName)
    hidden: Reason | None = overall.suppressed.get("patients") or overall.suppressed.get("auroc")
    if hidden is None and resamples <= 0:
        hidden = "undefined"
    if hidden is not None:
        return Intervals(
            level=0.95,
            resamples=float(resamples),
            **dict.fromkeys(names, None),
            suppressed=dict.fromkeys(names, hidden),
        )
    values: dict[str, float | None] = {}
    reasons: dict[IntervalName, Reason] = {}
    for metric_name, metric in (
        ("auroc", lambda y, s, b: metrics.auroc(y, s)),
        ("auprc", lambda y, s, b: metrics.auprc(y, s)),
    ):
        ci = metrics.bootstrap_ci(
            metric, data.labels, risk, data.boundaries, n_resamples=resamples, seed=0
        )
        for side, value in (("low", ci.low), ("high", ci.high)):
            key: IntervalName = f"{metric_name}_{side}"  # type: ignore[assignment]
            ok = math.isfinite(value)
            values[key] = value if ok else None
            if not ok:
                reasons[key] = "undefined"
    return Intervals(level=0.95, resamples=float(resamples), **values, suppressed=reasons)


def _cohort(cohort: SiteCohort) -> Cohort:
    cells = {"included": cohort.data.n_patients} | {
        r: cohort.exclusions.get(r, 0) for r in EXCLUSIONS
    }
    hidden = small_cells(cells)
    reasons: dict[CohortField, Reason] = {}
    # Found = included + exclusions: hiding the total is the complementary cell, and keeps the
    # included count (which every other section publishes) visible.
    if hidden:
        reasons["stays_found"] = "complementary"
    if "included" in hidden:
        reasons["stays_included"] = "small-cell-patients"
    persons = cohort.persons
    if persons is not None and 0 < persons < MIN_CELL:
        reasons["persons"] = "small-cell-patients"
    return Cohort(
        stays_found=None if "stays_found" in reasons else cohort.stays_found,
        stays_included=None if "stays_included" in reasons else cohort.data.n_patients,
        persons=None if "persons" in reasons else persons,
        exclusions=[
            ExclusionCount(
                reason=r,
                stays=None if r in hidden else cells[r],
                suppressed="small-cell-patients" if r in hidden else None,
            )
            for r in EXCLUSIONS
        ],
        suppressed=reasons,
    )


def _mapping(cohort: SiteCohort) -> MappingCounts | None:
    stats = cohort.mapping
    if stats is None:
        return None
    counts: dict[MappingField, int] = {
        "observations_read": stats.observations,
        "values_mapped": stats.mapped,
        "values_implausible": sum(stats.implausible.values()),
        "values_unit_not_accepted": sum(stats.bad_unit.values()),
        "values_missing": stats.no_value,
        "observations_without_time": stats.no_time,
        "observations_not_read_codes": sum(stats.unmapped.values()),
    }
    # Counts of values, not a partition of patients: small ones are hidden, nothing more; all of
    # them when the cohort itself is a small cell (they would describe its few stays).
    hidden = small_cells(counts) if cohort.data.n_patients >= MIN_CELL else set(counts)
    return MappingCounts(
        **{k: (None if k in hidden else v) for k, v in counts.items()},
        suppressed=dict.fromkeys(hidden, "small-cell-patients"),
    )


def _comparison(overall: Figures, validation: Mapping[str, float]) -> list[Comparison]:
    rows: list[Comparison] = []
    for metric_name, key in _VALIDATION_KEY.items():
        site = getattr(overall, metric_name)
        theirs = validation.get(key)
        rows.append(
            Comparison(
                metric=metric_name,
                site=site,
                validation=theirs,
                difference=None if site is None or theirs is None else site - theirs,
            )
        )
    return rows


def _notes(cohort: SiteCohort, model: LoadedModel) -> list[str]:
    notes = [
        "Validation figures are the model's on its own validation split (the training side's "
        "held-out patients), on which its early stopping, calibration and alert level were "
        "chosen: optimistic, with calibration slope 1 and intercept 0 by construction. The "
        "external splits of its evaluation (A->B, B->A) are the closer analogue of a new site.",
        f"Every hourly row of every included stay is scored, at the alert level "
        f"{model.entry.operating_points.utility_optimal:.4f} (calibrated risk); the service "
        "itself shows no score without a vital sign in the last 6 h, so live alert rates can be "
        "lower.",
        "Lead time is hours from a septic stay's first alert to onset (PhysioNet's t_sepsis = "
        "first septic-labelled hour + 6), among stays alerted by onset.",
    ]
    if cohort.kind == "fhir-ndjson":
        notes.append(
            "The label is a proxy from coded sepsis Conditions (see data.label); compare the "
            "figures with the validation split's as a check of transport, not as a measure of "
            "Sepsis-3 performance."
        )
    else:
        notes.append(
            "PhysioNet septic records end at most 3 h after onset, so the length-of-stay bands "
            "of septic stays are those of their records, shorter than their ICU stays."
        )
    return notes


def build_report(
    cohort: SiteCohort,
    model: LoadedModel,
    risk: npt.NDArray[np.float64],
    *,
    site_name: str,
    resamples: int = 200,
    now: datetime | None = None,
) -> SiteReport:
    """The validated report of ``cohort`` scored as ``risk`` (calibrated, one per row)."""
    data = cohort.data
    threshold = model.entry.operating_points.utility_optimal
    overall = protected_partition(
        {"all": _raw_figures(data.labels, risk, data.boundaries, threshold)}
    )["all"]
    validation = model.entry.metrics.get("validation", {})
    label = (
        LabelInfo(kind="physionet-2019-sepsislabel", definition=PSV_LABEL, citation=CITATION)
        if cohort.kind == "physionet-psv"
        else LabelInfo(
            kind="proxy-from-sepsis-conditions",
            definition=PROXY_LABEL,
            citation=CITATION,
            codes=SEPSIS_CODES_TEXT,
        )
    )

    def count(key: str) -> int | None:
        value = validation.get(key)
        return None if value is None else int(value)

    return SiteReport(
        generated_at=(now or datetime.now(UTC)).replace(microsecond=0),
        site_name=site_name,
        model=ModelInfo(
            version=model.version,
            outcome=model.entry.outcome,
            alert_level=threshold,
            high_sensitivity_level=model.entry.operating_points.high_sensitivity,
            validation_split=model.entry.provenance.get("validation_split"),
            validation_patients=count("patients"),
            validation_septic_patients=count("septic_patients"),
        ),
        data=DataInfo(kind=cohort.kind, label=label),
        suppression=SuppressionRule(
            min_patients=MIN_CELL, min_septic_patients=MIN_CELL, rule=SUPPRESSION_RULE
        ),
        cohort=_cohort(cohort),
        overall=overall,
        intervals=_intervals(data, risk, overall, resamples),
        calibration=_calibration_table(data, risk) if data.n_patients else [],
        subgroups=_subgroups(cohort, risk, threshold),
        comparison=_comparison(overall, validation),
        mapping=_mapping(cohort),
        notes=_notes(cohort, model),
    )


# ------------------------------------------------------------------------------- rendering


def _show(value: float | int | None, reason: str | None, digits: int = 3) -> str:
    if value is None:
        return f"- ({reason})" if reason else "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def render_markdown(report: SiteReport) -> str:
    """The report for people, from the validated report alone."""
    o = report.overall

    def fig(name: FigureName, digits: int = 3, figures: Figures = o) -> str:
        return _show(getattr(figures, name), figures.suppressed.get(name), digits)

    c = report.cohort
    lines = [
        f"# Site validation report: {report.site_name}",
        "",
        f"Model **{report.model.version}** ({report.model.outcome}), alert level "
        f"{report.model.alert_level:.4f}. Data: {report.data.kind}. Generated "
        f"{report.generated_at.isoformat()}.",
        "",
        "Aggregates only: every figure describing fewer than "
        f"{report.suppression.min_patients:.0f} stays (or "
        f"{report.suppression.min_septic_patients:.0f} septic stays, for what depends on them) "
        "is withheld, with complementary suppression within each table.",
        "",
        "## Label",
        "",
        report.data.label.definition + ".",
        "",
        f"Citation: {report.data.label.citation}.",
    ]
    if report.data.label.codes:
        lines += ["", f"Codes read as sepsis: {report.data.label.codes}."]
    lines += [
        "",
        "## Cohort",
        "",
        "| | stays |",
        "| --- | --- |",
        f"| found | {_show(c.stays_found, c.suppressed.get('stays_found'))} |",
        f"| included | {_show(c.stays_included, c.suppressed.get('stays_included'))} |",
    ]
    lines += [f"| excluded: {e.reason} | {_show(e.stays, e.suppressed)} |" for e in c.exclusions]
    if c.persons is not None or "persons" in c.suppressed:
        lines.append(f"| distinct patients | {_show(c.persons, c.suppressed.get('persons'))} |")
    lines += [
        "",
        f"Septic stays {fig('septic_patients')}, patient-hours {fig('patient_hours')} "
        f"({fig('patient_days', 1)} patient-days), septic-labelled share of hours "
        f"{fig('observed_rate', 4)}.",
        "",
        "## Discrimination, utility and calibration",
        "",
        "| figure | site | model's validation split | difference |",
        "| --- | --- | --- | --- |",
    ]
    for row in report.comparison:
        site = _show(row.site, o.suppressed.get(row.metric), 4)
        lines.append(
            f"| {row.metric} | {site} | {_show(row.validation, None, 4)} | "
            f"{_show(row.difference, None, 4)} |"
        )
    i = report.intervals
    lines += [
        "",
        f"95 % bootstrap intervals ({i.resamples:.0f} resamples of stays): AUROC "
        f"{_show(i.auroc_low, i.suppressed.get('auroc_low'))}-"
        f"{_show(i.auroc_high, i.suppressed.get('auroc_high'))}, AUPRC "
        f"{_show(i.auprc_low, i.suppressed.get('auprc_low'))}-"
        f"{_show(i.auprc_high, i.suppressed.get('auprc_high'))}. Mean predicted risk "
        f"{fig('mean_predicted_risk', 4)}.",
        "",
        f"Operating point at the alert level {report.model.alert_level:.4f}: sensitivity "
        f"{fig('sensitivity')}, specificity {fig('specificity')}, PPV {fig('ppv')}, "
        f"{fig('alerts_per_100_patient_days', 1)} alerts per 100 patient-days, median lead time "
        f"{fig('lead_time_median_h', 0)} h over {fig('septic_alerted_by_onset')} septic stays "
        "alerted by onset (hourly sensitivity, specificity and PPV).",
        "",
        "### Calibration by risk band (patient-hours)",
        "",
        "| calibrated risk | stays | septic stays | patient-hours | expected | observed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for b in report.calibration:
        s = b.suppressed
        lines.append(
            f"| {b.risk_from:.3f}-{b.risk_to:.3f} | {_show(b.patients, s.get('patients'))} | "
            f"{_show(b.septic_patients, s.get('septic_patients'))} | "
            f"{_show(b.patient_hours, s.get('patient_hours'))} | "
            f"{_show(b.expected_rate, s.get('expected_rate'), 4)} | "
            f"{_show(b.observed_rate, s.get('observed_rate'), 4)} |"
        )
    lines += [
        "",
        "## Subgroups",
        "",
        "| by | group | stays | septic | AUROC | AUPRC | utility | cal. slope | Brier | "
        "sensitivity | PPV | alerts/100 pd |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in report.subgroups:
        f = g.figures
        columns: tuple[tuple[FigureName, int], ...] = (
            ("patients", 0),
            ("septic_patients", 0),
            ("auroc", 3),
            ("auprc", 3),
            ("normalized_utility", 3),
            ("calibration_slope", 2),
            ("brier", 4),
            ("sensitivity", 3),
            ("ppv", 3),
            ("alerts_per_100_patient_days", 1),
        )
        cells = [fig(name, digits, f) for name, digits in columns]
        lines.append(f"| {g.by} | {g.level} | " + " | ".join(cells) + " |")
    if report.mapping is not None:
        m = report.mapping
        lines += ["", "## FHIR mapping", "", "| | count |", "| --- | --- |"]
        for name in get_args(MappingField):
            lines.append(f"| {name} | {_show(getattr(m, name), m.suppressed.get(name))} |")
    lines += ["", "## Notes", "", *(f"- {n}" for n in report.notes), ""]
    lines += [f"Suppression rule: {report.suppression.rule}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- running


def load_cohort(
    path: Path,
    limit: int | None = None,
    *,
    site_maps: Sequence[Path] = (),
    icu_locations: Iterable[str] = (),
    sepsis_codes: Iterable[tuple[str, str]] = (),
    workers: int = 2,
) -> SiteCohort:
    """PSV (a zip, or a folder of .psv files) or a FHIR NDJSON export folder."""
    if is_psv_input(path):
        return read_psv(path, limit, workers)
    if not path.is_dir():
        raise ValueError("the site data must be a .zip, a folder of .psv files or an NDJSON folder")
    return read_ndjson(
        path,
        limit,
        index=site_index(site_maps),
        site_icus=icu_locations,
        sepsis_codes=sepsis_codes,
    )


def score(model: LoadedModel, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Calibrated risks of every row, through the loaded ONNX session, in batches."""
    if not len(features):
        return np.zeros(0, np.float64)
    batch = 65_536
    return np.concatenate(
        [model.predict(features[i : i + batch]) for i in range(0, len(features), batch)]
    )


def write_report(report: SiteReport, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(report.model_dump_json(indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def evaluate_site(
    path: Path,
    version: str,
    models_root: Path,
    out: Path,
    *,
    site_name: str = "site",
    limit: int | None = None,
    resamples: int = 200,
    site_maps: Sequence[Path] = (),
    icu_locations: Iterable[str] = (),
    sepsis_codes: Iterable[tuple[str, str]] = (),
    workers: int = 2,
) -> SiteReport:
    """The whole command: verified model, the site's cohort, scores, report files."""
    started = time.perf_counter()
    model = load_version(models_root, version, "cpu")
    cohort = load_cohort(
        path,
        limit,
        site_maps=site_maps,
        icu_locations=icu_locations,
        sepsis_codes=sepsis_codes,
        workers=workers,
    )
    read = time.perf_counter()
    risk = score(model, cohort.data.features)
    report = build_report(cohort, model, risk, site_name=site_name, resamples=resamples)
    # Validated once more from its own JSON: what is written is what the schema allows.
    report = SiteReport.model_validate_json(report.model_dump_json())
    json_path, _ = write_report(report, out)
    print(
        f"{cohort.data.n_patients:,} stays, {len(cohort.data.labels):,} patient-hours read in "
        f"{read - started:.0f} s; report in {time.perf_counter() - started:.0f} s: {json_path}"
    )
    return report
