"""A hospital's own labelled ICU stays, as feature rows the model scores: the site report's input.

Two kinds of input, one result (``SiteCohort``):

* PhysioNet 2019 PSV files (a ``.zip`` such as ``training_setB.zip``, or a folder of ``.psv``
  files), read with ``training.challenge_rows`` and featurised by ``training.dataset.
  patient_features``: exactly the rows training and validation were scored on, with the
  challenge's own ``SepsisLabel``;
* a FHIR Bulk Data export (``training.site_fhir``): Observations mapped by ``fhir_adapters``,
  binned from ICU admission and featurised by ``cds_service.features``, the code every hook call
  runs, with a proxy label from sepsis-coded Conditions.

Both apply the same cohort rules, those of the PhysioNet 2019 population the model was validated
on: adults (18+), stays of at least 8 hourly rows (the challenge excluded shorter ones). A stay
that fails a rule is counted by reason, never silently dropped.

Nothing here writes the site's data anywhere: no feature cache (``training.dataset`` caches the
PhysioNet archives for training; a site's rows stay in memory), and each stay is known by its
position only, never by a file name or a record id.
"""

from __future__ import annotations

import itertools
import zipfile
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from cds_service.features import FEATURE_NAMES
from fhir_adapters.observations import MappingStats
from training.challenge_rows import PsvFormatError, _parse, _patient
from training.dataset import Dataset, patient_features

DataKind = Literal["physionet-psv", "fhir-ndjson"]

Exclusion = Literal[
    "unreadable-record",
    "age-unknown",
    "under-18",
    "sepsis-coded-without-onset",
    "sepsis-onset-before-icu-hour-4",
    "fewer-than-8-hours",
    "no-observations",
]
"""Why a stay found in the data is not in the cohort (each stay is counted under its first)."""

EXCLUSIONS: Final[tuple[Exclusion, ...]] = (
    "unreadable-record",
    "age-unknown",
    "under-18",
    "sepsis-coded-without-onset",
    "sepsis-onset-before-icu-hour-4",
    "fewer-than-8-hours",
    "no-observations",
)
MIN_AGE_YEARS: Final = 18.0
#: PhysioNet 2019 excluded stays of fewer than 8 hourly windows (shared/data/README.md, section 1)
MIN_HOURS: Final = 8


@dataclass
class StayRows:
    """One included stay: its hourly feature rows (from ICU hour 1 or the record's first row),
    labels, and what the subgroups are cut by."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int8]
    age: float
    sex: str  # "female", "male" or "unknown"
    unit: str  # "MICU", "SICU" or "unknown"
    #: ICU length of stay in hours (PSV: the record's last ICULOS; FHIR: admission to discharge)
    stay_hours: float


@dataclass
class SiteCohort:
    kind: DataKind
    data: Dataset
    stay_hours: npt.NDArray[np.float64]
    stays_found: int
    exclusions: Counter[Exclusion]
    #: FHIR only: what happened to every Observation read
    mapping: MappingStats | None = None
    #: FHIR only: distinct Patient resources among the included stays
    persons: int | None = None
    #: FHIR only: included stays whose label came from a dated sepsis Condition
    septic_by_condition: int | None = None
    notes: list[str] = field(default_factory=list)


def exclusion_by_age(age: float | None) -> Exclusion | None:
    if age is None or not np.isfinite(age):
        return "age-unknown"
    if age < MIN_AGE_YEARS:
        return "under-18"
    return None


def assemble(
    kind: DataKind, stays: Sequence[StayRows], stays_found: int, exclusions: Counter[Exclusion]
) -> SiteCohort:
    """The included stays as one ``training.dataset.Dataset`` (what ``training.metrics`` reads).

    ``patients`` holds positions ("stay-000001"), not identifiers: nothing downstream needs
    more, and nothing identifying can then reach a report by mistake."""
    lengths = [len(s.labels) for s in stays]
    data = Dataset(
        features=np.concatenate([s.features for s in stays])
        if stays
        else np.zeros((0, len(FEATURE_NAMES)), np.float32),
        labels=np.concatenate([s.labels for s in stays]) if stays else np.zeros(0, np.int8),
        boundaries=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        patients=np.array([f"stay-{i:06d}" for i in range(len(stays))], dtype=np.str_),
        hospital=np.array(["site"] * len(stays), dtype=np.str_),
        age=np.array([s.age for s in stays], dtype=np.float64),
        sex=np.array([s.sex for s in stays], dtype=np.str_),
        unit=np.array([s.unit for s in stays], dtype=np.str_),
        implausible=0,
    )
    hours = np.array([s.stay_hours for s in stays], dtype=np.float64)
    return SiteCohort(kind, data, hours, stays_found, exclusions)


# ------------------------------------------------------------------------------------- PSV


def _psv_members(path: Path) -> list[str]:
    """The PSV files of a zip (member names) or a folder (relative paths), in sorted order."""
    if path.is_dir():
        return sorted(str(p.relative_to(path)) for p in path.rglob("*.psv"))
    with zipfile.ZipFile(path) as zipped:
        return sorted(n for n in zipped.namelist() if n.endswith(".psv"))


def _psv_stay(content: bytes, position: int) -> StayRows | Exclusion:
    # The stay is named by its position: the file name never enters the pipeline. The challenge
    # set letter ("A") is what PsvPatient requires; nothing after patient_features reads it.
    try:
        table = _parse(content, f"record {position}")
        patient = _patient(table, "A", f"p{position:06d}")
    except PsvFormatError:
        return "unreadable-record"
    excluded = exclusion_by_age(patient.age)
    if excluded is not None:
        return excluded
    if len(patient.iculos) < MIN_HOURS:
        return "fewer-than-8-hours"
    rows, _ = patient_features(patient)
    return StayRows(
        features=rows,
        labels=patient.labels.astype(np.int8),
        age=patient.age,
        sex=patient.sex or "unknown",
        unit=patient.unit or "unknown",
        stay_hours=float(patient.iculos.max()),
    )


def _psv_part(path: Path, members: list[str], first: int) -> list[StayRows | Exclusion]:
    found: list[StayRows | Exclusion] = []
    if path.is_dir():
        for k, name in enumerate(members):
            found.append(_psv_stay((path / name).read_bytes(), first + k))
        return found
    with zipfile.ZipFile(path) as zipped:
        for k, name in enumerate(members):
            found.append(_psv_stay(zipped.read(name), first + k))
    return found


def read_psv(path: Path, limit: int | None = None, workers: int = 2) -> SiteCohort:
    """Every PSV record of a zip or folder (the first ``limit`` in name order), on ``workers``
    processes; contiguous slices, so the stays keep the files' order."""
    members = _psv_members(path)[:limit]
    if not members:
        raise ValueError("no .psv files found")
    parts = max(1, min(workers, len(members) // 200 or 1))
    cuts = np.linspace(0, len(members), parts + 1).astype(int)
    slices = [(members[a:b], int(a)) for a, b in itertools.pairwise(cuts)]
    if parts == 1:
        results = [_psv_part(path, names, first) for names, first in slices]
    else:
        with ProcessPoolExecutor(max_workers=parts) as pool:
            futures = [pool.submit(_psv_part, path, names, first) for names, first in slices]
            results = [f.result() for f in futures]
    stays: list[StayRows] = []
    exclusions: Counter[Exclusion] = Counter()
    for result in (item for part in results for item in part):
        if isinstance(result, StayRows):
            stays.append(result)
        else:
            exclusions[result] += 1
    return assemble("physionet-psv", stays, len(members), exclusions)


def is_psv_input(path: Path) -> bool:
    """A zip archive, or a folder holding .psv files (anything else is read as NDJSON)."""
    if path.is_file():
        return zipfile.is_zipfile(path)
    return path.is_dir() and next(path.rglob("*.psv"), None) is not None
