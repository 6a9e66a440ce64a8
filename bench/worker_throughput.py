"""Worker throughput: patients refreshed per second, census rescoring rows per second.

Runs the workers' own code (``workers.refresh.Refresher``) in process against a real
redis-server and the EHR stand-in of the tests (a real local HTTP server with the SMART token
endpoint), with N census patients of 150 Observations each over the last 18 hours. Then scores
census-sized batches of cached vectors the way ``census_rescore`` does (one ORT call).

    .venv/bin/python -m bench.worker_throughput --patients 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
from cryptography.fernet import Fernet
from pydantic import SecretStr

from cds_service.lifecycle.follower import ModelHolder
from cds_service.metrics import Metrics
from cds_service.redis_server import EmbeddedRedis
from cds_service.security.pseudonym import Pseudonymiser
from cds_service.settings import WorkerSettings
from cds_service.store.patients import PatientCache
from cds_service.store.redis_client import create_redis
from cds_service.store.timeline import TimelineStore
from fhir_adapters.site_codes import site_index
from fhir_adapters.variables import VARIABLES
from workers.refresh import Refresher

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "workers"))
from ehr_server import EhrServer, observation

ROOT = Path(__file__).resolve().parents[1]
ICU = "Location/icu-bench"
VITALS = (("8867-4", 92.0, "/min"), ("9279-1", 19.0, "/min"), ("8310-5", 37.4, "Cel"),
          ("59408-5", 95.0, "%"), ("8480-6", 112.0, "mm[Hg]"), ("8462-4", 64.0, "mm[Hg]"),
          ("8478-0", 80.0, "mm[Hg]"), ("9279-1", 20.0, "/min"))  # fmt: skip

LABS = (
    ("2524-7", 2.4, "mmol/L"), ("6690-2", 13.1, "10*3/uL"), ("2160-0", 1.3, "mg/dL"),
    ("777-3", 180.0, "10*3/uL"), ("2524-7", 2.9, "mmol/L"), ("6690-2", 14.0, "10*3/uL"),
)  # fmt: skip


def populate(ehr: EhrServer, patients: int, now: datetime) -> None:
    rng = np.random.default_rng(7)
    for i in range(patients):
        pid = f"bench-{i}"
        ehr.add({"resourceType": "Patient", "id": pid, "birthDate": "1955-04-02", "gender": "male"})
        ehr.admit(pid, ICU, "Medical Intensive Care Unit (MICU)", now - timedelta(hours=20))
        made = 0
        for hour in range(18):
            when = now - timedelta(hours=18 - hour, minutes=10)
            for code, base, unit in VITALS:
                value = round(base * (1 + 0.05 * rng.standard_normal()), 1)
                ehr.add(observation(pid, code, value, unit, when))
                made += 1
        for code, value, unit in LABS:
            ehr.add(
                observation(pid, code, value, unit, now - timedelta(hours=3), category="laboratory")
            )
            made += 1
        assert made == 150


async def refresh_all(refresher: Refresher, cache: PatientCache, concurrency: int) -> float:
    due = await refresher.census()
    semaphore = asyncio.Semaphore(concurrency)

    async def one(p: str) -> None:
        async with semaphore:
            await refresher.refresh(p)

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in due))
    elapsed = time.perf_counter() - started
    return len(due) / elapsed


def rescore_rate(holder: ModelHolder, rows: int) -> float:
    model = holder.current
    assert model is not None
    batch = np.tile(model.reference_medians, (rows, 1))
    batch[:, ::3] = np.nan
    model.predict(batch)
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        model.predict(batch)
        best = max(best, rows / (time.perf_counter() - started))
    return best


async def main(args: argparse.Namespace) -> dict[str, object]:
    now = datetime.now(UTC)
    with EmbeddedRedis() as redis_server, EhrServer(require_auth=False) as ehr:
        populate(ehr, args.patients, now)
        from cds_service.settings import Settings  # noqa: PLC0415

        settings = Settings(environment="development", redis_url=redis_server.url)
        redis = create_redis(settings)
        pseudonymiser = Pseudonymiser(SecretStr("b" * 40))
        cache = PatientCache(redis, pseudonymiser, Fernet(Fernet.generate_key()), 72 * 3600)
        timeline = TimelineStore(redis, pseudonymiser, VARIABLES, retention_s=72 * 3600)
        holder = ModelHolder(ROOT / "model_artifacts", "cpu", Metrics())
        holder.load_active()
        results: dict[str, object] = {"patients": args.patients, "observations_each": 150}
        async with httpx.AsyncClient() as http:
            for concurrency in (1, 8):
                await redis.flushdb()
                refresher = Refresher(
                    WorkerSettings(fhir_base_url=ehr.url, census_locations=[ICU]),
                    http=http,
                    auth=None,
                    timeline=timeline,
                    cache=cache,
                    models=holder,
                    codes=site_index([]),
                )
                rate = await refresh_all(refresher, cache, concurrency)
                results[f"patients_per_s_concurrency_{concurrency}"] = round(rate, 1)
            started = time.perf_counter()
            scored = await refresher.rescore()
            results["rescore_task_rows"] = scored
            results["rescore_task_s"] = round(time.perf_counter() - started, 4)
        await redis.aclose()
        for rows in (1_000, 100_000):
            results[f"cpu_rows_per_s_batch_{rows}"] = round(rescore_rate(holder, rows))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=40)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
