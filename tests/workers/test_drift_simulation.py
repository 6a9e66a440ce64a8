"""The drift simulation (issue 9): real redis-server, real Celery worker and beat processes, a real
API, real PhysioNet 2019 hospital A patients as live traffic to a model trained on hospital A.

1. A's census, replayed hour by hour and rescored by the worker → the drift monitor takes no
   action (its figures stay below the act thresholds).
2. A candidate with a broken alert level, promoted shadow → canary → active through the admin API
   while everything runs (its validation figures pass the gates; the bug is in the exported
   operating point) → its alert rate breaks the policy → the monitor rolls back to the previous
   version, an audit event records the figures, and the API's next card comes from it.
3. A's patients sent as hook calls with temperatures in °F labelled °C → the inputs break →
   the cards are stopped (rolling back would not help) and the alert metric is raised.

The figures of each scenario and the time from breach to action are written to
``.cache/drift-simulation.json`` (read by bench/README.md and the closing note).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from celery import Celery
from cryptography.fernet import Fernet
from drift_replay import CensusReplay, load_stays
from lifecycle_support import ADMIN, ADMIN_HASH, policy_file, registry_copy

from cds_service.drift.live import LiveStats, report
from cds_service.drift.statistics import DriftReport, Verdict, classify
from cds_service.inference.registry import load_version, verified_reference
from cds_service.lifecycle.audit import LIFECYCLE_STREAM
from cds_service.lifecycle.monitor import HISTORY_PREFIX, DriftSnapshot
from cds_service.lifecycle.policy import load_policy
from cds_service.redis_server import EmbeddedRedis
from cds_service.security.pseudonym import Pseudonymiser
from cds_service.settings import LifecycleSettings, Settings
from cds_service.store.patients import CENSUS, PatientCache
from workers.celery_app import create_celery_app

from sepsis_patients import NO_PHYSIONET, SET_A, SepsisCase, find_cases, hook_request
from support import TEST_PSEUDONYM_KEY, Caller, EhrKey, LiveApi

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SET_A.is_file(), reason=NO_PHYSIONET),
]

POLICY = load_policy(LifecycleSettings().policy_file)
POLICY_WINDOW_H = 2
ACTIVE = "sepsis-gbdt-A-1"
BROKEN = "sepsis-gbdt-A-2"
POLL_S = 0.5
CHECK_S = 2
BEDS = 250
IDENTIFIER_KEY = Fernet.generate_key().decode()
PATIENT_VIEW = "/cds-services/sepsis-patient-view"
FIGURES = Path(__file__).resolve().parents[2] / ".cache" / "drift-simulation.json"


def _broken_threshold(entry: dict[str, Any]) -> None:
    """The alert level exported as a third of the validated one: the figures the gates read are
    the validated ones, so only live behaviour shows the bug."""
    entry["operating_points"]["utility_optimal"] /= 3
    entry["provenance"]["trained_on"] = "hospital A only (candidate with a broken alert level)"


@pytest.fixture(scope="module")
def sim_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return registry_copy(
        tmp_path_factory.mktemp("sim-registry"), ACTIVE, {BROKEN: (ACTIVE, _broken_threshold)}
    )


@pytest.fixture(scope="module")
def sim_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A two-hour window (this hour's bucket and the last) and a check every 2 s: the replay
    # compresses hours of census into seconds; every threshold is the shipped policy's.
    return policy_file(
        tmp_path_factory.mktemp("policy") / "policy.toml",
        window_hours=POLICY_WINDOW_H,
        check_interval_s=CHECK_S,
    )


@pytest.fixture(scope="module")
def sim_env(sim_redis: EmbeddedRedis, sim_root: Path, sim_policy: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CDS_REDIS_URL": sim_redis.url,
        "CDS_ENVIRONMENT": "development",
        "CDS_PSEUDONYM_KEY": TEST_PSEUDONYM_KEY,
        "CDS_LOG_JSON": "false",
        "CDS_SEPSIS__DEVICE": "cpu",
        "CDS_SEPSIS__MODEL_ROOT": str(sim_root),
        "CDS_LIFECYCLE__POLICY_FILE": str(sim_policy),
        "CDS_LIFECYCLE__POLL_INTERVAL_S": str(POLL_S),
        # No census source in this test: the replay plays the census; refreshes fail and wait.
        "CDS_WORKER__FHIR_BASE_URL": "http://127.0.0.1:9",
        "CDS_WORKER__IDENTIFIER_KEY": IDENTIFIER_KEY,
        "CDS_WORKER__CENSUS_INTERVAL_S": "86400",
        # Each rescoring stands for one hour of the replayed census.
        "CDS_WORKER__RESCORE_INTERVAL_S": "3600",
        "CDS_WORKER__WRITEBACK": "false",
        "CDS_WORKER__MAX_RETRIES": "0",
    }


def _group(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env=env, start_new_session=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def processes(sim_env: dict[str, str]) -> Iterator[None]:
    celery = [sys.executable, "-m", "celery", "-A", "workers.main"]
    worker = _group(
        [*celery, "worker", "--concurrency=1", "--loglevel=WARNING", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "--hostname=drift-sim@%h"],
        sim_env,
    )  # fmt: skip
    beat = _group([*celery, "beat", "--loglevel=WARNING"], sim_env)
    yield
    _stop(beat)
    _stop(worker)


@pytest.fixture(scope="module")
def celery_app(sim_env: dict[str, str]) -> Iterator[Celery]:
    app = create_celery_app(
        Settings(
            environment="development",
            redis_url=sim_env["CDS_REDIS_URL"],
            lifecycle={"policy_file": sim_env["CDS_LIFECYCLE__POLICY_FILE"]},
        )
    )
    yield app
    app.close()


@pytest.fixture(scope="module")
def sim_api(
    start_api: Callable[..., LiveApi], sim_redis: EmbeddedRedis, sim_root: Path, sim_policy: Path
) -> LiveApi:
    return start_api(
        redis_url=sim_redis.url,
        sepsis={"model_root": sim_root, "device": "cpu"},
        lifecycle={"poll_interval_s": POLL_S, "policy_file": sim_policy},
        admin={"tokens": {"alice": ADMIN_HASH}},
    )


@pytest.fixture(scope="module")
def db(sim_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(sim_redis.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def replay() -> CensusReplay:
    # 4,000 of A's patients (the first in the archive): 250 beds (a hospital's ICUs together,
    # enough distinct patients for the default min_stays) for more than a day.
    return CensusReplay(load_stays(SET_A, limit=4000), beds=BEDS)


class Ward:
    """Plays the census into the patient cache (as the census refresh would) and has the worker
    rescore it, one replayed hour at a time."""

    def __init__(self, url: str, replay: CensusReplay, celery: Celery, root: Path) -> None:
        self._root = root
        self._loop = asyncio.new_event_loop()
        self._redis = aioredis.Redis.from_url(url)
        pseudonymiser = Pseudonymiser(Settings(pseudonym_key=TEST_PSEUDONYM_KEY).pseudonym_key)
        self._cache = PatientCache(
            self._redis, pseudonymiser, Fernet(IDENTIFIER_KEY.encode()), 72 * 3600
        )
        self._replay = replay
        self._celery = celery
        self.hours = 0
        #: when the last rescoring's result came back (its counts are in Redis by then)
        self.finished = 0.0

    async def _admit(self) -> None:
        now = datetime.now(UTC)
        hour = self._replay.next_hour(now)
        gone = [self._cache.pseudonym(pid) for pid in hour.discharged]
        if gone:
            await self._redis.zrem(CENSUS, *gone)
        for stay, context, row in hour.occupied:
            p = await self._cache.register(stay.patient_id, context, now.timestamp())
            await self._cache.save_refresh(p, None, row, now, now.timestamp())

    def hour(self) -> float:
        """One replayed hour; returns when its rescoring was sent (epoch seconds): its counts
        reach Redis at the end of the task, after that."""
        self._loop.run_until_complete(self._admit())
        sent = time.time()
        scored = self._celery.send_task("workers.census_rescore").get(timeout=60)
        assert scored == BEDS
        self.hours += 1
        self.finished = time.time()
        return sent

    def figures(self, version: str, hours: int) -> tuple[DriftReport, Verdict]:
        """The figures the drift monitor would compute now (the same code, in this process)."""
        reference = verified_reference(self._root, version)
        live = LiveStats(self._redis, version, reference)
        counts = self._loop.run_until_complete(live.window(hours, datetime.now(UTC)))
        figures = report(counts, reference)
        return figures, classify(figures, POLICY.drift.thresholds())

    def close(self) -> None:
        self._loop.run_until_complete(self._redis.aclose())
        self._loop.close()


@pytest.fixture(scope="module")
def ward(
    sim_redis: EmbeddedRedis,
    replay: CensusReplay,
    celery_app: Celery,
    processes: None,
    sim_root: Path,
) -> Iterator[Ward]:
    ward = Ward(sim_redis.url, replay, celery_app, sim_root)
    yield ward
    ward.close()


def _events(db: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(fields[b"e"]) for _, fields in db.xrange(LIFECYCLE_STREAM)]


def _snapshots(db: redis.Redis, version: str) -> list[DriftSnapshot]:
    return [
        DriftSnapshot.model_validate_json(r)
        for r in db.lrange(f"{HISTORY_PREFIX}:{version}", 0, -1)
    ]


def _check_after(
    db: redis.Redis, version: str, since: float, timeout_s: float = 30
) -> DriftSnapshot:
    """The first drift check of ``version`` that read counts written before ``since``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for snap in _snapshots(db, version):
            if snap.at.timestamp() > since:
                return snap
        time.sleep(0.2)
    raise AssertionError(f"no drift check of {version} within {timeout_s} s")


def _figures(snap: DriftSnapshot) -> dict[str, Any]:
    ratio = (
        snap.alert_rate / snap.reference_alert_rate
        if snap.alert_rate is not None and snap.reference_alert_rate
        else None
    )
    return snap.model_dump(mode="json") | {"alert_rate_ratio": ratio}


def _save(name: str, figures: dict[str, Any]) -> None:
    FIGURES.parent.mkdir(exist_ok=True)
    saved = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    saved[name] = figures
    FIGURES.write_text(json.dumps(saved, indent=2))


def _active_version(http: httpx.Client, api: LiveApi) -> str | None:
    model = http.get(f"{api.url}/readyz").json().get("model")
    return model["version"] if model else None


def _card_version(caller: Caller, case: SepsisCase, patient_id: str) -> str | None:
    response = caller.post(PATIENT_VIEW, hook_request(case, patient_id=patient_id))
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    return cards[0]["source"]["label"].rsplit(" ", 1)[1] if cards else None


def test_hospital_a_traffic_on_the_a_model_takes_no_action(
    ward: Ward, db: redis.Redis, sim_api: LiveApi, http: httpx.Client
) -> None:
    assert _active_version(http, sim_api) == ACTIVE
    # From the first sight of the census: patients already above the alert level when first
    # scored mid-stay are not counted as new alerts (workers.refresh.Refresher._countable).
    for _ in range(6):
        ward.hour()
    snap = _check_after(db, ACTIVE, ward.finished)
    _save("1-hospital-A-on-A", _figures(snap) | {"replayed_hours": ward.hours})
    assert snap.rows >= 6 * BEDS and snap.patient_hours >= 6 * BEDS
    assert snap.inputs != "act" and snap.behaviour != "act", snap
    assert [e["action"] for e in _events(db) if e["action"] not in ("drift-warn",)] == []


@pytest.fixture(scope="module")
def high(sim_root: Path) -> SepsisCase:
    """A patient above the A model's alert level (the card to look at after each change)."""
    return find_cases(load_version(sim_root, ACTIVE, "cpu"))[0]


@pytest.fixture
def caller(sim_api: LiveApi, es_key: EhrKey, http: httpx.Client) -> Caller:
    return Caller(sim_api, es_key, http)


def _wait(check: Callable[[], bool], timeout_s: float = 30) -> float:
    """Wait for ``check``; returns the time it became true (epoch seconds)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)
    return time.time()


def _event(db: redis.Redis, action: str) -> dict[str, Any] | None:
    return next((e for e in _events(db) if e["action"] == action), None)


def test_a_candidate_with_a_broken_alert_level_is_rolled_back(
    ward: Ward, db: redis.Redis, sim_api: LiveApi, http: httpx.Client, caller: Caller,
    high: SepsisCase,
) -> None:  # fmt: skip
    base = f"{sim_api.url}/admin"
    for role in ("shadow", "canary", "active"):
        body = {"version": BROKEN, "to": role, "reason": "retrained A model; gates pass"}
        promoted = http.post(f"{base}/promote", json=body, headers=ADMIN)
        assert promoted.status_code == 200, promoted.text
    _wait(lambda: _active_version(http, sim_api) == BROKEN, 10)
    assert _card_version(caller, high, "before-rollback") == BROKEN
    breach_at: float | None = None
    breach: dict[str, Any] | None = None
    for _ in range(12):
        sent = ward.hour()
        figures, verdict = ward.figures(BROKEN, POLICY_WINDOW_H)
        if breach_at is None and (verdict.behaviour == "act" or _event(db, "rollback")):
            breach_at = sent
            breach = {"hours": ward.hours, "alert_rate": figures.alert_rate,
                      "score_psi": figures.score_psi}  # fmt: skip
        if _event(db, "rollback") is not None:
            break
    rolled_at = _wait(lambda: _event(db, "rollback") is not None)
    event = _event(db, "rollback")
    assert event is not None and breach_at is not None, "the breach was never reached"
    assert event["actor"] == "drift-monitor"
    assert event["version"] == ACTIVE and event["figures"]["rolled_back_from"] == BROKEN
    assert event["figures"]["alert_rate_level"] == "act"
    assert event["figures"]["inputs"] != "act"
    assert event["figures"]["alert_rate_ratio"] >= 2.0
    followed_at = _wait(lambda: _active_version(http, sim_api) == ACTIVE, 10)
    assert _card_version(caller, high, "after-rollback") == ACTIVE, [
        (e["action"], e["reason"], e.get("figures")) for e in _events(db) if e["action"] == "stop"
    ]
    event_at = datetime.fromisoformat(event["at"]).timestamp()
    # The worker follows too, within a polling interval: its next rescoring scores with the
    # previous version again.
    time.sleep(POLL_S)
    ward.hour()
    # The monitoring page shows it: the rollback event and the drift plots over time.
    page = http.get(f"{sim_api.url}/admin/monitor", headers=ADMIN)
    assert page.status_code == 200
    assert "rollback" in page.text and "drift-monitor" in page.text
    assert page.text.count("<svg") >= 4 and BROKEN in page.text
    on_census = [m.decode() for m in db.zrange(CENSUS, 0, -1)]
    assert len(on_census) == BEDS
    assert {db.hget(f"cds:pt:{p}", "version") for p in on_census} == {ACTIVE.encode()}
    _save(
        "2-broken-alert-level-rolled-back",
        {
            "breach": breach,
            "rollback_event_figures": event["figures"],
            # from the start of the rescoring whose counts crossed the act level
            "seconds_breach_to_rollback_event": round(event_at - breach_at, 2),
            "seconds_rollback_event_to_api_following": round(followed_at - event_at, 2),
            "seconds_breach_to_rollback_seen": round(rolled_at - breach_at, 2),
            "drift_check_interval_s": CHECK_S,
            "poll_interval_s": POLL_S,
        },
    )


def _stops(db: redis.Redis) -> int:
    return len([e for e in _events(db) if e["action"] == "stop"])


def _send_until_stopped(
    caller: Caller,
    db: redis.Redis,
    replay: CensusReplay,
    break_input: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    seed: int,
    stops: int = 0,
) -> tuple[int, float]:
    """Hook calls for the replay's patients, each at a random hour of its stay, with
    ``break_input`` applied, until a new stop event appears; returns (calls, last sent)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible sample
    stays = [bed.current.patient for bed in replay.beds]
    calls, sent_at = 0, time.time()
    while _stops(db) == stops and calls < 600:
        patient = rng.choice(stays)
        hours = rng.randrange(1, len(patient.iculos) + 1)
        cut = replace(
            patient, iculos=patient.iculos[:hours], values=patient.values[:hours],
            labels=patient.labels[:hours],
        )  # fmt: skip
        response = caller.post(PATIENT_VIEW, break_input(hook_request(SepsisCase(cut, 0.0))))
        assert response.status_code == 200, response.text
        calls += 1
        sent_at = time.time()
    return calls, sent_at


def _fahrenheit_labelled_celsius(request: dict[str, Any]) -> dict[str, Any]:
    for entry in request["prefetch"]["vitals"]["entry"]:
        quantity = entry["resource"].get("valueQuantity", {})
        if quantity.get("code") == "Cel":
            quantity["value"] = round(quantity["value"] * 9 / 5 + 32, 1)
    return request


def test_temperatures_in_fahrenheit_labelled_celsius_stop_the_cards(
    ward: Ward, db: redis.Redis, sim_api: LiveApi, http: httpx.Client, caller: Caller,
    high: SepsisCase, replay: CensusReplay,
) -> None:  # fmt: skip
    assert _active_version(http, sim_api) == ACTIVE
    # A fresh window for the A model: in this compressed replay the earlier scenarios' hours
    # are in the same two-hour buckets; on a ward they would have rolled out of the window.
    for key in db.scan_iter(f"cds:drift:{ACTIVE}:*"):
        db.delete(key)
    assert _card_version(caller, high, "before-break") == ACTIVE
    calls, sent_at = _send_until_stopped(caller, db, replay, _fahrenheit_labelled_celsius, seed=3)
    stopped_at = _wait(lambda: _event(db, "stop") is not None)
    event = _event(db, "stop")
    assert event is not None and event["actor"] == "drift-monitor"
    assert event["figures"]["inputs"] == "act"
    flagged = event["figures"]["features"]
    assert any(name.startswith("temperature") for name in flagged), flagged
    assert (
        _event(db, "rollback") is not None
        and len([e for e in _events(db) if e["action"] == "rollback"]) == 1
    )
    _wait(
        lambda: (
            "sepsis-patient-view"
            in http.get(f"{sim_api.url}/readyz").json()["deployment"]["cards_off"]
        ),
        10,
    )
    # Stopped: the high-risk patient (normal temperatures) gets no card; the alert is raised.
    assert _card_version(caller, high, "after-break") is None
    text = http.get(f"{sim_api.url}/metrics").text
    assert re.search(
        r'^cds_cards_off\{service="sepsis-patient-view",why="stopped"\} 1\.0$', text, re.M
    )
    assert re.search(r'^cds_lifecycle_actions_total\{action="stop"\} 1\.0$', text, re.M)
    assert re.search(rf'^cds_drift_level\{{part="inputs",version="{ACTIVE}"\}} 2\.0$', text, re.M)
    temperature = {k: v for k, v in flagged.items() if k.startswith("temperature")}
    _save(
        "3-fahrenheit-as-celsius-stopped",
        {
            "hook_calls": calls,
            "stop_event_figures": event["figures"] | {"temperature_features": temperature},
            "seconds_last_call_to_stop_seen": round(stopped_at - sent_at, 2),
        },
    )


def _fio2_fraction_labelled_percent(request: dict[str, Any]) -> dict[str, Any]:
    for bundle in ("vitals", "labs"):
        for entry in request["prefetch"][bundle]["entry"]:
            resource = entry["resource"]
            if resource["code"]["coding"][0]["code"] in ("3150-0", "19994-3"):
                resource["valueQuantity"].update(unit="%", code="%")  # 0.4 "%" for 40 %
    return request


def test_fio2_as_a_fraction_labelled_percent_stops_the_cards(
    ward: Ward, db: redis.Redis, sim_api: LiveApi, http: httpx.Client, caller: Caller,
    high: SepsisCase, replay: CensusReplay,
) -> None:  # fmt: skip
    """After the °F break is fixed and the cards resumed, the second unit error of the issue."""
    resumed = http.post(
        f"{sim_api.url}/admin/resume", json={"reason": "temperature feed fixed"}, headers=ADMIN
    )
    assert resumed.status_code == 200, resumed.text
    _wait(lambda: not http.get(f"{sim_api.url}/readyz").json()["deployment"]["cards_off"], 10)
    for key in db.scan_iter(f"cds:drift:{ACTIVE}:*"):  # a fresh window, as above
        db.delete(key)
    assert _card_version(caller, high, "after-resume") == ACTIVE
    stops = _stops(db)
    calls, _ = _send_until_stopped(
        caller, db, replay, _fio2_fraction_labelled_percent, seed=4, stops=stops
    )
    _wait(lambda: _stops(db) > stops)
    event = [e for e in _events(db) if e["action"] == "stop"][-1]
    flagged = event["figures"]["features"]
    assert event["figures"]["inputs"] == "act"
    assert any(name.startswith("fio2") for name in flagged), flagged
    _wait(
        lambda: (
            "sepsis-patient-view"
            in http.get(f"{sim_api.url}/readyz").json()["deployment"]["cards_off"]
        ),
        10,
    )
    assert _card_version(caller, high, "after-fio2-break") is None
    fio2 = {k: v for k, v in flagged.items() if k.startswith("fio2")}
    _save(
        "4-fio2-fraction-as-percent-stopped",
        {"hook_calls": calls, "stop_event_figures": event["figures"] | {"fio2_features": fio2}},
    )
