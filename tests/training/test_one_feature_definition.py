"""House rule 6: a patient sent as FHIR and the same patient read from PSV give identical vectors.

The FHIR side goes through what a hook call does (lean reader → canonical observations → the
Redis timeline window of 72 h → grid → features); the PSV side through what training does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from cds_service.features import (
    LOOKBACK_HOURS,
    PatientContext,
    feature_matrix,
    grid_from_observations,
)
from cds_service.redis_server import EmbeddedRedis
from cds_service.security.pseudonym import Pseudonymiser
from cds_service.store.timeline import TimelineStore
from fhir_adapters.binning import bin_start
from fhir_adapters.observations import MappingStats, map_observations
from fhir_adapters.variables import VARIABLES
from training.challenge_rows import (
    PsvPatient,
    iter_patients,
    synthetic_icu_start,
    to_fhir_observations,
)
from training.dataset import patient_features

ARCHIVES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "physionet2019"

pytestmark = pytest.mark.skipif(not ARCHIVES.is_dir(), reason=f"no PhysioNet data at {ARCHIVES}")


def patients(hospital: str, count: int) -> list[PsvPatient]:
    return list(iter_patients(ARCHIVES / f"training_set{hospital}.zip", limit=count))


def fhir_features_at(patient: PsvPatient, row: int, redis_url: str) -> np.ndarray:
    """Features of one hour as the service computes them, through a real Redis timeline."""
    start = synthetic_icu_start(patient.patient)
    k = int(patient.iculos[row])
    now = bin_start(start, k) + timedelta(minutes=59)
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": o} for o in to_fhir_observations(patient, start, "Patient/x")],
    }
    observations = map_observations([bundle], MappingStats(), patient="x")

    async def through_redis() -> list:
        client = aioredis.Redis.from_url(redis_url)
        store = TimelineStore(
            client, Pseudonymiser(SecretStr("f" * 40)), VARIABLES, LOOKBACK_HOURS * 3600
        )
        window_start = bin_start(start, k - LOOKBACK_HOURS + 1)
        await client.flushdb()
        _, window = await store.merge_and_read(
            "x", [o for o in observations if o.time <= now], now, window_start, now
        )
        await client.aclose()
        return window

    window = asyncio.run(through_redis())
    grid = grid_from_observations(
        window, start, first_bin=max(1, k - LOOKBACK_HOURS + 1), last_bin=k
    )
    context = PatientContext(
        age_years=patient.age,
        sex=patient.sex,
        icu_unit=patient.unit,
        hospital_to_icu_hours=None if patient.hosp_adm_hours is None else -patient.hosp_adm_hours,
    )
    row_features: np.ndarray = feature_matrix(grid, context)[-1].astype(np.float32)
    return row_features


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with EmbeddedRedis() as server:
        yield server.url


@pytest.mark.integration
@pytest.mark.parametrize("hospital", ["A", "B"])
def test_fhir_and_psv_give_identical_vectors(hospital: str, redis_url: str) -> None:
    for patient in patients(hospital, 4):
        psv_rows, _ = patient_features(patient)
        for row in sorted({0, len(patient.iculos) // 2, len(patient.iculos) - 1}):
            np.testing.assert_array_equal(
                fhir_features_at(patient, row, redis_url), psv_rows[row], err_msg=patient.patient
            )


@pytest.mark.integration
def test_a_long_stay_truncated_to_the_retention(redis_url: str) -> None:
    long_stay = next(
        p for p in iter_patients(ARCHIVES / "training_setA.zip", limit=400) if len(p.iculos) > 120
    )
    psv_rows, _ = patient_features(long_stay)
    for row in (LOOKBACK_HOURS + 10, len(long_stay.iculos) - 1):
        np.testing.assert_array_equal(fhir_features_at(long_stay, row, redis_url), psv_rows[row])
