"""A census replayed hour by hour from real PhysioNet 2019 patients, for the drift simulation.

``beds`` beds, each holding one stay after another. Each bed starts in a stay chosen by its
length, at a uniform hour of it, so that from the first replayed hour the rows are drawn as a
steady ward census draws them (long stays over-represented, as in the reference, which pools
every patient-hour). Every
replayed hour gives one feature row per occupied bed, computed by the project's one feature
definition from the patient's PSV file (``training.dataset.patient_features``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cds_service.store.patients import StayContext
from training.challenge_rows import PsvPatient, iter_patients
from training.dataset import patient_features


@dataclass
class Stay:
    patient: PsvPatient
    rows: npt.NDArray[np.float32]
    #: a fresh id per admission, as a census would show a new stay
    patient_id: str


@dataclass
class Bed:
    stays: Iterator[Stay]
    current: Stay
    hour: int

    def context(self, now: datetime) -> StayContext:
        p = self.current.patient
        return StayContext(
            encounter_id=f"enc-{self.current.patient_id}",
            icu_start=(now - timedelta(hours=self.hour + 0.5)).isoformat(),
            unit=p.unit,
            hospital_to_icu_hours=None if p.hosp_adm_hours is None else -p.hosp_adm_hours,
            age_years=p.age,
            sex=p.sex,
        )


@dataclass
class CensusHour:
    #: (bed's current stay, its context, its feature row now) for every occupied bed
    occupied: list[tuple[Stay, StayContext, npt.NDArray[np.float32]]]
    #: patient ids whose stay ended before this hour (to drop from the census)
    discharged: list[str] = field(default_factory=list)


def load_stays(
    archive: Path, limit: int, min_age: float = 18
) -> list[tuple[PsvPatient, npt.NDArray[np.float32]]]:
    stays = []
    for patient in iter_patients(archive, limit=limit):
        if patient.age < min_age:
            continue
        rows, _ = patient_features(patient)
        stays.append((patient, rows))
    return stays


class CensusReplay:
    def __init__(
        self,
        stays: list[tuple[PsvPatient, npt.NDArray[np.float32]]],
        beds: int,
        seed: int = 7,
    ) -> None:
        rng = random.Random(seed)  # noqa: S311 - a reproducible sample, not a secret
        order = list(stays)
        rng.shuffle(order)
        per_bed = [order[i::beds] for i in range(beds)]
        self._admissions = 0
        self.beds: list[Bed] = []
        for queue in per_bed:
            if not queue:
                continue
            # The first stay by length, then a uniform hour in it: where a steady ward census
            # finds its beds at any moment.
            first_index = rng.choices(range(len(queue)), weights=[len(r) for _, r in queue])[0]
            rotated = queue[first_index:] + queue[:first_index]
            stays_iter = self._stays(rotated)
            first = next(stays_iter)
            self.beds.append(Bed(stays_iter, first, rng.randrange(len(first.rows))))

    def _stays(self, queue: list[tuple[PsvPatient, npt.NDArray[np.float32]]]) -> Iterator[Stay]:
        while True:
            for patient, rows in queue:
                self._admissions += 1
                yield Stay(patient, rows, f"{patient.patient}-{self._admissions}")

    def next_hour(self, now: datetime) -> CensusHour:
        hour = CensusHour(occupied=[])
        for bed in self.beds:
            if bed.hour >= len(bed.current.rows):
                hour.discharged.append(bed.current.patient_id)
                bed.current, bed.hour = next(bed.stays), 0
            hour.occupied.append((bed.current, bed.context(now), bed.current.rows[bed.hour]))
            bed.hour += 1
        return hour
