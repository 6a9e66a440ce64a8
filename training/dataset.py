"""PhysioNet rows → canonical observations → the service's feature definition → a cached matrix.

Each PSV row becomes canonical observations (``training.challenge_rows.to_canonical``), binned and
featurised by ``cds_service.features`` exactly as a hook call would, then the rows the file has
(its ICULOS bins) are kept. The result is cached per archive as ``.npz`` under the cache folder,
keyed by a hash of the code that defines it, so a changed feature definition is never read from
a stale cache.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

import cds_service.features as features_module
import fhir_adapters.binning as binning_module
import fhir_adapters.variables as variables_module
import training.challenge_rows as rows_module
from cds_service.features import (
    FEATURE_NAMES,
    PatientContext,
    feature_matrix,
    grid_from_observations,
)
from training.challenge_rows import PsvPatient, iter_patients, synthetic_icu_start, to_canonical
from training.progress import Progress


@dataclass(frozen=True)
class Dataset:
    """Feature rows of many patients; each patient's rows are contiguous, in hour order."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int8]
    boundaries: npt.NDArray[np.int64]  # patient p's rows: boundaries[p]:boundaries[p+1]
    patients: npt.NDArray[np.str_]
    hospital: npt.NDArray[np.str_]
    age: npt.NDArray[np.float64]
    sex: npt.NDArray[np.str_]
    unit: npt.NDArray[np.str_]
    implausible: int

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    def subset(self, patient_index: npt.NDArray[np.int64]) -> Dataset:
        """The given patients (by position), in the given order."""
        starts, ends = self.boundaries[patient_index], self.boundaries[patient_index + 1]
        rows = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
        lengths = ends - starts
        return Dataset(
            features=self.features[rows],
            labels=self.labels[rows],
            boundaries=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            patients=self.patients[patient_index],
            hospital=self.hospital[patient_index],
            age=self.age[patient_index],
            sex=self.sex[patient_index],
            unit=self.unit[patient_index],
            implausible=self.implausible,
        )


def concatenate(parts: Sequence[Dataset]) -> Dataset:
    offsets = np.cumsum([0, *(len(p.labels) for p in parts[:-1])])
    return Dataset(
        features=np.concatenate([p.features for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        boundaries=np.concatenate(
            [[0], *((p.boundaries[1:] + off) for p, off in zip(parts, offsets, strict=True))]
        ).astype(np.int64),
        patients=np.concatenate([p.patients for p in parts]),
        hospital=np.concatenate([p.hospital for p in parts]),
        age=np.concatenate([p.age for p in parts]),
        sex=np.concatenate([p.sex for p in parts]),
        unit=np.concatenate([p.unit for p in parts]),
        implausible=sum(p.implausible for p in parts),
    )


def patient_features(patient: PsvPatient) -> tuple[npt.NDArray[np.float32], int]:
    """The feature rows of one patient's file (one per PSV row) and its implausible-value count."""
    start = synthetic_icu_start(patient.patient)
    observations, stats = to_canonical(patient, start)
    last_bin = int(patient.iculos.max())
    grid = grid_from_observations(observations, start, first_bin=1, last_bin=last_bin)
    context = PatientContext(
        age_years=patient.age,
        sex=patient.sex,
        icu_unit=patient.unit,
        hospital_to_icu_hours=None if patient.hosp_adm_hours is None else -patient.hosp_adm_hours,
    )
    rows = feature_matrix(grid, context)[patient.iculos - 1]
    return rows.astype(np.float32), sum(stats.implausible.values())


def definition_hash() -> str:
    """Changes whenever the code that defines a feature row changes."""
    digest = hashlib.sha256()
    for module in (features_module, binning_module, variables_module, rows_module):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


def _build(patients: Iterable[PsvPatient], progress: Progress | None = None) -> Dataset:
    rows: list[npt.NDArray[np.float32]] = []
    labels: list[npt.NDArray[np.int8]] = []
    ids, hospitals, ages, sexes, units = [], [], [], [], []
    implausible = 0
    for patient in patients:
        matrix, bad = patient_features(patient)
        rows.append(matrix)
        labels.append(patient.labels.astype(np.int8))
        ids.append(patient.patient)
        hospitals.append(patient.hospital)
        ages.append(patient.age)
        sexes.append(patient.sex or "unknown")
        units.append(patient.unit or "unknown")
        implausible += bad
        if progress is not None:
            progress.step()
    lengths = [len(r) for r in rows]
    return Dataset(
        features=np.concatenate(rows) if rows else np.zeros((0, len(FEATURE_NAMES)), np.float32),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int8),
        boundaries=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        patients=np.array(ids, dtype=np.str_),
        hospital=np.array(hospitals, dtype=np.str_),
        age=np.array(ages, dtype=np.float64),
        sex=np.array(sexes, dtype=np.str_),
        unit=np.array(units, dtype=np.str_),
        implausible=implausible,
    )


def _build_part(archive: Path, part: int, parts: int, limit: int | None) -> Dataset:
    chosen = (p for i, p in enumerate(iter_patients(archive, limit=limit)) if i % parts == part)
    # Worker 0 reports for all: the parts are the same size, give or take one patient.
    total = (limit or 20_336) // parts
    progress = Progress(f"features {archive.stem}", total, "patients") if part == 0 else None
    return _build(chosen, progress)


def build(archive: Path, limit: int | None = None, workers: int = 2) -> Dataset:
    """Every patient of one archive (or its first ``limit``), on ``workers`` processes."""
    if workers <= 1:
        return _build_part(archive, 0, 1, limit)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_build_part, archive, i, workers, limit) for i in range(workers)]
        parts = [f.result() for f in futures]
    # Put the interleaved parts back in file order, so that a cache is deterministic.
    merged = concatenate(parts)
    order = np.argsort(merged.patients, kind="stable")
    return merged.subset(order.astype(np.int64))


def load_or_build(
    archive: Path, cache: Path, limit: int | None = None, workers: int = 2
) -> tuple[Dataset, float | None]:
    """The cached dataset when its definition hash matches, else built and cached.

    Returns the dataset and, when it was built now, the rows per second it took."""
    name = f"{archive.stem}-{limit or 'all'}-{definition_hash()}.npz"
    path = cache / name
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            data = Dataset(
                **{k: saved[k] for k in saved.files if k != "implausible"},
                implausible=int(saved["implausible"]),
            )
        return data, None
    started = time.perf_counter()
    data = build(archive, limit=limit, workers=workers)
    rate = len(data.labels) / (time.perf_counter() - started)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp.npz")
    np.savez(
        partial,
        features=data.features,
        labels=data.labels,
        boundaries=data.boundaries,
        patients=data.patients,
        hospital=data.hospital,
        age=data.age,
        sex=data.sex,
        unit=data.unit,
        implausible=np.int64(data.implausible),
    )
    partial.replace(path)  # a crash mid-write never leaves a cache that looks complete
    return data, rate
