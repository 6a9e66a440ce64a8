"""Census refresh, patient refresh, rescoring and write-back with a real worker process.

A real redis-server, real Celery worker processes (no eager mode) and a real local EHR (FHIR and a
SMART Backend Services token endpoint) that serves a real PhysioNet ICU patient as FHIR.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from celery import Celery
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fhir.resources.R4B.riskassessment import RiskAssessment
from jwt.algorithms import ECAlgorithm
from pydantic import SecretStr

from cds_service.lifecycle.follower import ModelHolder
from cds_service.metrics import Metrics
from cds_service.redis_server import EmbeddedRedis
from cds_service.security.pseudonym import Pseudonymiser
from cds_service.settings import Settings
from training.challenge_rows import to_fhir_observations
from workers.celery_app import create_celery_app
from workers.writeback import IDENTIFIER_SYSTEM

from ehr_server import EhrServer
from sepsis_patients import (
    MODEL_ROOT,
    NO_PHYSIONET,
    SET_A,
    SepsisCase,
    encounter_resource,
    find_cases,
    icu_start_for,
    patient_resource,
)
from support import EhrKey, LiveApi

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SET_A.is_file(), reason=NO_PHYSIONET),
]

ICU = "Location/icu-1"
CLIENT_ID = "sepsis-cds-workers"
PSEUDONYM_KEY = "worker-test-pseudonymisation-key-0123456789"
IDENTIFIER_KEY = Fernet.generate_key().decode()
VISIBILITY_S = 10


@pytest.fixture(scope="module")
def high() -> SepsisCase:
    model = ModelHolder(MODEL_ROOT, "cpu", Metrics()).load_active()
    assert model is not None
    return find_cases(model)[0]


@pytest.fixture(scope="module")
def signing_key() -> tuple[str, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": "worker-key-1", "alg": "ES384", "use": "sig"})
    return pem, {"keys": [public]}


@pytest.fixture(scope="module")
def ehr(signing_key: tuple[str, dict[str, Any]]) -> Iterator[EhrServer]:
    with EhrServer() as server:
        server.register_client(CLIENT_ID, signing_key[1])
        yield server


@pytest.fixture(scope="module")
def worker_env(
    redis_server: EmbeddedRedis, ehr: EhrServer, signing_key: tuple[str, dict[str, Any]]
) -> dict[str, str]:
    smart = {
        "token_url": ehr.token_url,
        "client_id": CLIENT_ID,
        "private_key_pem": signing_key[0],
        "alg": "ES384",
        "kid": "worker-key-1",
        "scope": "system/Patient.rs system/Encounter.rs system/Observation.rs "
        "system/RiskAssessment.cu",
    }
    return {
        **os.environ,
        "CDS_REDIS_URL": redis_server.url,
        "CDS_ENVIRONMENT": "development",
        "CDS_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "CDS_LOG_JSON": "false",
        "CDS_SEPSIS__DEVICE": "cpu",
        "CDS_WORKER__FHIR_BASE_URL": ehr.url,
        "CDS_WORKER__SMART": json.dumps(smart),
        "CDS_WORKER__IDENTIFIER_KEY": IDENTIFIER_KEY,
        "CDS_WORKER__CENSUS_LOCATIONS": json.dumps([ICU]),
        "CDS_WORKER__WRITEBACK": "true",
        "CDS_WORKER__VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        "CDS_WORKER__STALE_AFTER_S": "1",
        "CDS_WORKER__RETRY_BACKOFF_MAX_S": "2",
    }


class Worker:
    """One `celery worker` process group."""

    def __init__(self, env: dict[str, str], name: str, queue: str = "celery") -> None:
        args = [
            sys.executable, "-m", "celery", "-A", "workers.main", "worker",
            "--concurrency=1", "--loglevel=WARNING", "--without-gossip", "--without-mingle",
            "--without-heartbeat", f"--hostname={name}@%h", f"--queues={queue}",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, env=env, start_new_session=True)

    def child_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.process.pid).children(recursive=True)]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module")
def start_worker(worker_env: dict[str, str]) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(name: str, queue: str = "celery") -> Worker:
        worker = Worker(worker_env, name, queue)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def worker(start_worker: Callable[[str], Worker]) -> Worker:
    return start_worker("main-worker")


@pytest.fixture(scope="module")
def celery(worker_env: dict[str, str]) -> Iterator[Celery]:
    settings = Settings(
        environment="development",
        redis_url=worker_env["CDS_REDIS_URL"],
        pseudonym_key=PSEUDONYM_KEY,
        worker={"visibility_timeout_s": VISIBILITY_S},
    )
    app = create_celery_app(settings)
    yield app
    app.close()


@pytest.fixture
def db(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def admit(ehr: EhrServer, case: SepsisCase, patient_id: str) -> None:
    """The patient in the ICU now, with the newest 72 h of their PhysioNet record as FHIR."""
    now = datetime.now(UTC)
    start = icu_start_for(case, now)
    ehr.add(patient_resource(case, patient_id, now))
    encounter = encounter_resource(case, f"enc-{patient_id}", start)
    encounter["subject"] = {"reference": f"Patient/{patient_id}"}
    encounter["location"][0]["location"]["reference"] = ICU
    ehr.add(encounter)
    oldest = now - timedelta(hours=71)
    for observation in to_fhir_observations(case.patient, start, f"Patient/{patient_id}"):
        when = datetime.fromisoformat(observation["effectiveDateTime"].replace("Z", "+00:00"))
        if when >= oldest:
            ehr.add(observation)


def run(celery: Celery, task: str, *args: Any, timeout: float = 60) -> Any:
    return celery.send_task(task, args=list(args)).get(timeout=timeout)


def wait_for(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def observation_requests(ehr: EhrServer) -> list[Any]:
    return [r for r in ehr.requests if "/Observation" in r.path]


def pseudonym(patient_id: str) -> str:
    return Pseudonymiser(SecretStr(PSEUDONYM_KEY)).pseudonym("patient", patient_id)


def timeline_size(db: redis.Redis, patient_id: str) -> int:
    p = pseudonym(patient_id)
    return sum(int(db.zcard(key)) for key in db.scan_iter(f"cds:tl:{p}:*"))


def test_census_refresh_scores_writes_back_and_the_watermark_advances(
    worker: Worker, celery: Celery, ehr: EhrServer, high: SepsisCase, db: redis.Redis
) -> None:
    admit(ehr, high, "icu-patient-1")
    ehr.clear_requests()
    assert run(celery, "workers.census_refresh") >= 1
    p = pseudonym("icu-patient-1")
    wait_for(lambda: db.hget(f"cds:pt:{p}", "risk") is not None)
    risk = float(db.hget(f"cds:pt:{p}", "risk") or 0)
    assert abs(risk - high.risk) < 1e-6  # the worker's features are training's features
    watermark = db.hget(f"cds:pt:{p}", "wm")
    assert watermark is not None
    held = timeline_size(db, "icu-patient-1")
    assert held > 100
    # write-back: one RiskAssessment, valid FHIR, found again by its identifier
    written = ehr.written("RiskAssessment")
    assert len(written) == 1
    assessment = RiskAssessment.model_validate(written[0])
    assert assessment.subject.reference == "Patient/icu-patient-1"
    assert written[0]["identifier"][0] == {"system": IDENTIFIER_SYSTEM, "value": p}
    assert abs(written[0]["prediction"][0]["probabilityDecimal"] - round(high.risk, 4)) < 1e-9
    # nothing in Redis holds the FHIR id in plain text
    for key in db.scan_iter("cds:*"):
        assert b"icu-patient-1" not in key
        if db.type(key) == b"hash":
            assert all(b"icu-patient-1" not in v for v in db.hgetall(key).values())

    # a second refresh asks only for what changed since the watermark and merges nothing twice
    ehr.clear_requests()
    assert run(celery, "workers.patient_refresh", p)["fetched"] == 0
    since = [r.query.get("_lastUpdated", [""])[0] for r in observation_requests(ehr)]
    assert since and all(s and s.startswith("gt") for s in since)
    assert timeline_size(db, "icu-patient-1") == held
    assert db.hget(f"cds:pt:{p}", "wm") == watermark

    # a new observation is fetched alone and the watermark moves past it
    ehr.add(
        {
            "resourceType": "Observation",
            "id": "late-heart-rate",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/icu-patient-1"},
            "effectiveDateTime": datetime.now(UTC).isoformat(),
            "valueQuantity": {"value": 131, "system": "http://unitsofmeasure.org", "code": "/min"},
        }
    )
    assert run(celery, "workers.patient_refresh", p)["fetched"] == 1
    assert db.hget(f"cds:pt:{p}", "wm") != watermark
    assert timeline_size(db, "icu-patient-1") == held + 1


def test_rescoring_scores_the_census_in_one_batch(
    worker: Worker, celery: Celery, ehr: EhrServer, high: SepsisCase
) -> None:
    if not ehr.written("RiskAssessment"):
        admit(ehr, high, "icu-patient-1")
        run(celery, "workers.census_refresh")
    assert run(celery, "workers.census_rescore") >= 1


def test_server_errors_and_429_are_retried_with_backoff(
    worker: Worker, celery: Celery, ehr: EhrServer, high: SepsisCase, db: redis.Redis
) -> None:
    admit(ehr, high, "icu-patient-2")
    run(celery, "workers.census_refresh")
    p = pseudonym("icu-patient-2")
    wait_for(lambda: db.hget(f"cds:pt:{p}", "refreshed") is not None)
    retried = int(db.hget("cds:worker:tasks", "workers.patient_refresh|retried") or 0)
    # more failures than the client's own quick retries: the task itself must retry later
    ehr.fail_next(4, status=500)
    started = time.monotonic()
    assert run(celery, "workers.patient_refresh", p, timeout=90) is not None
    assert int(db.hget("cds:worker:tasks", "workers.patient_refresh|retried") or 0) > retried
    ehr.fail_next(3, status=429, retry_after=1)
    assert run(celery, "workers.patient_refresh", p, timeout=90) is not None
    assert time.monotonic() - started >= 1  # the Retry-After was waited for


def test_an_expired_token_is_renewed(
    worker: Worker, celery: Celery, ehr: EhrServer, high: SepsisCase, db: redis.Redis
) -> None:
    admit(ehr, high, "icu-patient-3")
    run(celery, "workers.census_refresh")
    p = pseudonym("icu-patient-3")
    wait_for(lambda: db.hget(f"cds:pt:{p}", "refreshed") is not None)
    before = len(ehr.token_requests)
    ehr.expire_tokens()
    assert run(celery, "workers.patient_refresh", p) is not None
    assert len(ehr.token_requests) == before + 1


def test_a_killed_worker_child_gets_the_task_again_without_duplicates(
    worker: Worker, celery: Celery, ehr: EhrServer, high: SepsisCase, db: redis.Redis
) -> None:
    admit(ehr, high, "icu-patient-4")
    p = pseudonym("icu-patient-4")
    run(celery, "workers.census_refresh")
    wait_for(lambda: db.hget(f"cds:pt:{p}", "refreshed") is not None)
    held = timeline_size(db, "icu-patient-4")
    db.hdel(f"cds:pt:{p}", "wm")  # make the next refresh re-read everything
    ehr.delay_s = 3.0
    ehr.clear_requests()
    celery.send_task("workers.patient_refresh", args=[p])
    wait_for(lambda: bool(observation_requests(ehr)), timeout=30)
    children = worker.child_pids()
    assert children
    os.kill(children[0], signal.SIGKILL)
    ehr.delay_s = 0.0
    # reject_on_worker_lost puts the message back; a new child runs it again to the end
    wait_for(lambda: len(observation_requests(ehr)) >= 2, timeout=60)
    wait_for(lambda: db.hget(f"cds:pt:{p}", "wm") is not None, timeout=60)
    assert timeline_size(db, "icu-patient-4") == held


def test_a_killed_worker_is_redelivered_after_the_visibility_timeout(
    worker: Worker,
    start_worker: Callable[..., Worker],
    celery: Celery,
    ehr: EhrServer,
    high: SepsisCase,
    db: redis.Redis,
) -> None:
    admit(ehr, high, "icu-patient-5")
    p = pseudonym("icu-patient-5")
    run(celery, "workers.census_refresh")
    wait_for(lambda: db.hget(f"cds:pt:{p}", "wm") is not None)
    # A queue of its own, so that nothing the other tests left queued runs in between.
    queue = "redelivery-test"
    doomed = start_worker("doomed-worker", queue)
    ping = celery.send_task("workers.ping", queue=queue)
    assert ping.get(timeout=120) == "pong"  # it consumes
    db.hdel(f"cds:pt:{p}", "wm")
    ehr.delay_s = 4.0
    ehr.clear_requests()
    sent_at = time.monotonic()
    celery.send_task("workers.patient_refresh", args=[p], queue=queue)
    wait_for(lambda: bool(observation_requests(ehr)), timeout=60)
    doomed.stop(signal.SIGKILL)  # mid-task: the message stays unacknowledged in Redis
    ehr.delay_s = 0.0
    start_worker("second-worker", queue)
    wait_for(lambda: db.hget(f"cds:pt:{p}", "wm") is not None, timeout=120)
    # not before the visibility timeout (counted from delivery): the broker cannot know sooner
    # that the worker died
    assert time.monotonic() - sent_at >= VISIBILITY_S - 1


def test_two_beats_send_each_scheduled_task_once_per_period(
    start_worker: Callable[..., Worker],
    worker_env: dict[str, str],
    db: redis.Redis,
    tmp_path: Path,
) -> None:
    start_worker("beat-test-worker")
    env = {
        **worker_env,
        "CDS_WORKER__CENSUS_INTERVAL_S": "2",
        "CDS_WORKER__RESCORE_INTERVAL_S": "60",
    }
    beats = [
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.main", "beat", "--loglevel=WARNING",
             f"--schedule={tmp_path / f'beat-{i}'}"],
            env=env,
            start_new_session=True,
        )
        for i in range(2)
    ]  # fmt: skip
    try:
        time.sleep(4)  # both up; one holds the lock
        sent_before = _census_runs(db)
        time.sleep(10)
    finally:
        for beat in beats:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(timeout=20)
    time.sleep(3)  # let the worker finish what was sent
    sent = _census_runs(db) - sent_before
    # 10 s at a 2 s period: about 5 sends by one beat; two beats without a lock would send ~10
    assert 3 <= sent <= 7, sent


def _census_runs(db: redis.Redis) -> int:
    return int(db.hget("cds:worker:tasks", "workers.census_refresh|done") or 0)


def test_a_hook_call_for_a_fresh_patient_fetches_nothing(
    worker: Worker,
    celery: Celery,
    ehr: EhrServer,
    high: SepsisCase,
    db: redis.Redis,
    start_api: Callable[..., LiveApi],
    es_key: EhrKey,
) -> None:
    admit(ehr, high, "icu-patient-6")
    p = pseudonym("icu-patient-6")
    run(celery, "workers.census_refresh")
    wait_for(lambda: db.hget(f"cds:pt:{p}", "risk") is not None)
    api = start_api(
        pseudonym_key=PSEUDONYM_KEY,
        worker={"identifier_key": IDENTIFIER_KEY},
        fhir={"allowed_servers": [ehr.url]},
    )
    ehr.clear_requests()
    url = f"{api.url}/cds-services/sepsis-patient-view"
    body = {
        "hook": "patient-view",
        "hookInstance": "5b0c0e1e-0d0e-4a0e-9a8e-2f5d0a1b2c3d",
        "fhirServer": ehr.url,
        "context": {"userId": "Practitioner/x", "patientId": "icu-patient-6"},
    }
    answer = httpx.post(url, json=body, headers={"Authorization": f"Bearer {es_key.token(url)}"})
    assert answer.status_code == 200, answer.text
    cards = answer.json()["cards"]
    assert len(cards) == 1
    assert ehr.requests == []
