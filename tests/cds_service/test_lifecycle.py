"""Model lifecycle: gates, ordered promotion, rollback, kill switch, stop, audit, canary and
shadow, through the admin API of a real API process with its own real redis-server (lifecycle
state is shared by every process on a Redis, so these tests never touch the session's)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from lifecycle_support import ADMIN, ADMIN_HASH, ADMIN_TOKEN, registry_copy

from cds_service.admin_cli import CliSettings
from cds_service.admin_cli import main as admin_cli
from cds_service.inference.registry import read_manifest
from cds_service.lifecycle.audit import LIFECYCLE_STREAM, AuditTrail, LifecycleEvent, durability
from cds_service.lifecycle.follower import ModelHolder, canary_bucket
from cds_service.lifecycle.gates import check_gates
from cds_service.lifecycle.operations import Operations
from cds_service.lifecycle.policy import PolicyError, load_policy
from cds_service.lifecycle.state import LifecycleRefused, LifecycleStore
from cds_service.metrics import Metrics
from cds_service.redis_server import EmbeddedRedis
from cds_service.settings import LifecycleSettings

from sepsis_patients import MODEL_ROOT, NO_PHYSIONET, SET_A, SepsisCase, find_cases, hook_request
from support import Caller, EhrKey, LiveApi

pytestmark = pytest.mark.integration

POLICY = load_policy(LifecycleSettings().policy_file)
PATIENT_VIEW = "/cds-services/sepsis-patient-view"
POLL_S = 0.2


def _failing(entry: dict[str, Any]) -> None:
    entry["metrics"]["validation"] |= {"auroc": 0.61, "calibration_slope": 1.6}


def _renamed(entry: dict[str, Any]) -> None:
    """A retrained candidate that passes every gate."""


@pytest.fixture(scope="module")
def own_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def clean(own_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url)
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return registry_copy(
        tmp_path_factory.mktemp("registry"),
        active="sepsis-gbdt-AB-1",
        extra={
            "sepsis-gbdt-AB-2": ("sepsis-gbdt-AB-1", _renamed),
            "sepsis-gbdt-AB-2-weak": ("sepsis-gbdt-AB-1", _failing),
        },
    )


def _ops(url: str, root: Path) -> tuple[Operations, AuditTrail, aioredis.Redis]:
    client = aioredis.Redis.from_url(url)
    audit = AuditTrail(client, timedelta(days=30))
    return Operations(LifecycleStore(client, audit), audit, root, POLICY), audit, client


def _events(client: redis.Redis) -> list[dict[str, Any]]:
    return [
        LifecycleEvent.model_validate_json(f[b"e"]).model_dump()
        for _, f in client.xrange(LIFECYCLE_STREAM)
    ]


# --- gates and policy -------------------------------------------------------------------------


def test_committed_versions_pass_the_shipped_gates() -> None:
    for entry in read_manifest(MODEL_ROOT).versions:
        result = check_gates(entry, POLICY.gates)
        assert result.passed, (entry.version, result.failures)
        assert result.figures["auroc"] >= POLICY.gates.min_auroc


def test_gates_name_each_failing_figure(root: Path) -> None:
    weak = next(v for v in read_manifest(root).versions if v.version == "sepsis-gbdt-AB-2-weak")
    result = check_gates(weak, POLICY.gates)
    assert not result.passed
    assert any(f.startswith("AUROC 0.610") for f in result.failures)
    assert any(f.startswith("calibration slope 1.600") for f in result.failures)
    assert len(result.failures) == 2


def test_a_version_without_validation_figures_fails_the_gates(root: Path) -> None:
    entry = read_manifest(root).versions[0].model_copy(update={"metrics": {}})
    assert check_gates(entry, POLICY.gates).failures[0].startswith("no 'validation' figures")


def test_a_policy_with_warn_above_act_is_refused(tmp_path: Path) -> None:
    text = (LifecycleSettings().policy_file).read_text().replace("psi_warn = 0.1", "psi_warn = 0.3")
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(PolicyError, match="warn threshold"):
        load_policy(tmp_path / "p.toml")
    with pytest.raises(PolicyError, match="no lifecycle policy"):
        load_policy(tmp_path / "missing.toml")


# --- operations on a real Redis ---------------------------------------------------------------


def test_the_weak_candidate_is_refused_at_the_gate_and_the_refusal_is_audited(
    own_redis: EmbeddedRedis, clean: redis.Redis, root: Path
) -> None:
    async def run() -> None:
        ops, _, client = _ops(own_redis.url, root)
        now = datetime.now(UTC)
        await ops.promote("sepsis-gbdt-AB-2-weak", "shadow", "alice", "try the retrain", now)
        with pytest.raises(LifecycleRefused, match=r"gates failed: AUROC 0\.610"):
            await ops.promote("sepsis-gbdt-AB-2-weak", "canary", "alice", "looks fine", now)
        state = await ops.state()
        assert state.canary is None and state.shadow == "sepsis-gbdt-AB-2-weak"
        await client.aclose()

    asyncio.run(run())
    refused = [e for e in _events(clean) if e["action"] == "promote-refused"]
    assert len(refused) == 1
    assert refused[0]["actor"] == "alice" and refused[0]["reason"] == "looks fine"
    assert refused[0]["figures"]["gates"]["auroc"] == pytest.approx(0.61)


def test_promotion_goes_shadow_canary_active_and_rolls_back(
    own_redis: EmbeddedRedis, clean: redis.Redis, root: Path
) -> None:
    async def run() -> None:
        ops, _, client = _ops(own_redis.url, root)
        now = datetime.now(UTC)
        with pytest.raises(LifecycleRefused, match="must be shadow before canary"):
            await ops.promote("sepsis-gbdt-AB-2", "canary", "bob", "skip a step", now)
        with pytest.raises(LifecycleRefused, match="must be canary before active"):
            await ops.promote("sepsis-gbdt-AB-2", "active", "bob", "skip two steps", now)
        for role in ("shadow", "canary", "active"):
            state, event = await ops.promote("sepsis-gbdt-AB-2", role, "bob", f"to {role}", now)  # type: ignore[arg-type]
            assert event.to_role == role and event.revision == state.revision
        assert state.active == "sepsis-gbdt-AB-2" and state.previous == ["sepsis-gbdt-AB-1"]
        state, event = await ops.rollback("bob", "clinicians report odd risks", now)
        assert state.active == "sepsis-gbdt-AB-1" and state.withdrawn == ["sepsis-gbdt-AB-2"]
        assert event.figures["withdrawn"] == "sepsis-gbdt-AB-2"
        with pytest.raises(LifecycleRefused, match="no previous active version"):
            await ops.rollback("bob", "again", now)
        with pytest.raises(LifecycleRefused, match="was withdrawn"):
            await ops.promote("sepsis-gbdt-AB-2", "shadow", "bob", "retry", now)
        await client.aclose()

    asyncio.run(run())
    actions = [e["action"] for e in _events(clean)]
    assert actions == [
        "promote-refused", "promote-refused", "promote", "promote", "promote", "rollback",
        "rollback-refused", "promote-refused",
    ]  # fmt: skip
    assert [int(r) for r in (clean.hget("cds:lifecycle-actions:sepsis", "promote"),)] == [3]


def test_concurrent_changes_are_all_applied_each_with_its_event(
    own_redis: EmbeddedRedis, clean: redis.Redis, root: Path
) -> None:
    async def run() -> int:
        ops, _, client = _ops(own_redis.url, root)
        now = datetime.now(UTC)
        shares = [0.05 + i / 100 for i in range(12)]
        await asyncio.gather(*(ops.set_canary_share(s, "carol", "tune", now) for s in shares))
        state = await ops.state()
        await client.aclose()
        return state.revision

    assert asyncio.run(run()) == 12
    assert len(_events(clean)) == 12


def test_a_version_whose_files_do_not_verify_is_refused(
    own_redis: EmbeddedRedis, clean: redis.Redis, tmp_path: Path
) -> None:
    broken = registry_copy(
        tmp_path / "r", "sepsis-gbdt-AB-1", {"sepsis-gbdt-AB-3": ("sepsis-gbdt-AB-1", _renamed)}
    )
    (broken / "sepsis-gbdt-AB-3" / "model.onnx").write_bytes(b"not a model")

    async def run() -> None:
        ops, _, client = _ops(own_redis.url, broken)
        with pytest.raises(LifecycleRefused, match=r"does not load.*sha256"):
            await ops.promote("sepsis-gbdt-AB-3", "shadow", "dan", "new", datetime.now(UTC))
        await client.aclose()

    asyncio.run(run())


def test_audit_retention_trims_old_events_and_redis_is_durable(
    own_redis: EmbeddedRedis, clean: redis.Redis
) -> None:
    async def run() -> tuple[int, str | None]:
        client = aioredis.Redis.from_url(own_redis.url)
        audit = AuditTrail(client, timedelta(seconds=1))
        event = LifecycleEvent(
            at=datetime.now(UTC), actor="x", action="stop", model="sepsis", reason="test"
        )
        await audit.append(LIFECYCLE_STREAM, event)
        await asyncio.sleep(1.2)
        await audit.append(LIFECYCLE_STREAM, event)
        length = await audit.length(LIFECYCLE_STREAM)
        problem = await durability(client)
        await client.aclose()
        return length, problem

    assert asyncio.run(run()) == (1, None)


def test_canary_buckets_are_stable_and_near_the_share() -> None:
    buckets = [canary_bucket("v2", f"p{i}") for i in range(4000)]
    assert buckets == [canary_bucket("v2", f"p{i}") for i in range(4000)]
    share = sum(b < 0.25 for b in buckets) / len(buckets)
    assert 0.22 < share < 0.28
    # another canary version draws another sample of patients
    other = [canary_bucket("v3", f"p{i}") < 0.25 for i in range(4000)]
    assert other != [b < 0.25 for b in buckets]


# --- through the admin API and hook calls of a running API ------------------------------------


@pytest.fixture(scope="module")
def lifecycle_api(
    start_api: Callable[..., LiveApi], own_redis: EmbeddedRedis, root: Path
) -> LiveApi:
    return start_api(
        redis_url=own_redis.url,
        sepsis={"model_root": root, "device": "cpu"},
        lifecycle={"poll_interval_s": POLL_S},
        admin={"tokens": {"alice": ADMIN_HASH}},
    )


@pytest.fixture
def on_own(lifecycle_api: LiveApi, es_key: EhrKey, http: httpx.Client) -> Caller:
    return Caller(lifecycle_api, es_key, http)


def _wait_for(check: Callable[[], bool], timeout_s: float = 5.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError("the API did not follow the state in time")
        time.sleep(0.02)
    return time.monotonic() - started


def _revision(http: httpx.Client, api: LiveApi) -> int:
    return int(http.get(f"{api.url}/readyz").json()["deployment"]["revision"])


def _change(http: httpx.Client, api: LiveApi, action: str, body: dict[str, Any]) -> float:
    """POST an admin change; returns how long the API took to run the new revision."""
    response = http.post(f"{api.url}/admin/{action}", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    state = response.json()["state"]

    def running() -> bool:
        deployment = http.get(f"{api.url}/readyz").json()["deployment"]
        return (deployment["lineage"], deployment["revision"]) == (
            state["lineage"],
            state["revision"],
        )

    return _wait_for(running)


def test_the_admin_api_has_its_own_authentication(
    lifecycle_api: LiveApi, api: LiveApi, http: httpx.Client, es_key: EhrKey
) -> None:
    assert http.get(f"{api.url}/admin/state").status_code == 404  # no tokens: off
    url = f"{lifecycle_api.url}/admin/state"
    missing = http.get(url)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Basic")
    assert http.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    # The EHR's own signed JWT is not an admin credential.
    ehr = es_key.token(aud=f"{lifecycle_api.url}/cds-services/sepsis-patient-view")
    assert http.get(url, headers={"Authorization": f"Bearer {ehr}"}).status_code == 401
    assert http.get(url, headers=ADMIN).status_code == 200
    basic = base64.b64encode(f"alice:{ADMIN_TOKEN}".encode()).decode()
    assert http.get(url, headers={"Authorization": f"Basic {basic}"}).status_code == 200
    wrong_name = base64.b64encode(f"mallory:{ADMIN_TOKEN}".encode()).decode()
    assert http.get(url, headers={"Authorization": f"Basic {wrong_name}"}).status_code == 401


def test_gates_refuse_the_weak_candidate_over_http(
    lifecycle_api: LiveApi, clean: redis.Redis, http: httpx.Client
) -> None:
    base = f"{lifecycle_api.url}/admin"
    body = {"version": "sepsis-gbdt-AB-2-weak", "to": "shadow", "reason": "retrained"}
    assert http.post(f"{base}/promote", json=body, headers=ADMIN).status_code == 200
    refused = http.post(f"{base}/promote", json=body | {"to": "canary"}, headers=ADMIN)
    assert refused.status_code == 409
    assert "AUROC 0.610 < 0.750" in refused.text
    assert http.post(f"{base}/promote", json={"to": "canary"}, headers=ADMIN).status_code == 400
    audit = http.get(f"{base}/audit", headers=ADMIN).json()
    assert [e["event"]["action"] for e in audit["entries"]][:2] == ["promote-refused", "promote"]
    assert audit["entries"][0]["event"]["actor"] == "alice"
    versions = {
        v["version"]: v for v in http.get(f"{base}/versions", headers=ADMIN).json()["versions"]
    }
    assert versions["sepsis-gbdt-AB-2-weak"]["gates_passed"] is False
    assert versions["sepsis-gbdt-AB-1"]["role"] == "active"


@pytest.fixture(scope="module")
def high() -> SepsisCase:
    if not SET_A.is_file():
        pytest.skip(NO_PHYSIONET)
    model = ModelHolder(MODEL_ROOT, "cpu", Metrics()).load_active()
    assert model is not None
    return find_cases(model)[0]


def _card_versions(caller: Caller, case: SepsisCase, patients: list[str]) -> list[str | None]:
    versions: list[str | None] = []
    for patient in patients:
        response = caller.post(PATIENT_VIEW, hook_request(case, patient_id=patient))
        assert response.status_code == 200, response.text
        cards = response.json()["cards"]
        versions.append(cards[0]["source"]["label"].rsplit(" ", 1)[1] if cards else None)
    return versions


def test_kill_switch_canary_and_shadow_while_the_api_runs(
    lifecycle_api: LiveApi, on_own: Caller, clean: redis.Redis, http: httpx.Client,
    high: SepsisCase,
) -> None:  # fmt: skip
    base = f"{lifecycle_api.url}/admin"
    assert _card_versions(on_own, high, ["k-1"]) == ["sepsis-gbdt-AB-1"]
    kill = {"service": "sepsis-patient-view", "reason": "vendor incident 42"}
    followed = _change(http, lifecycle_api, "kill", kill)
    assert followed < POLL_S * 5
    assert _card_versions(on_own, high, ["k-2"]) == [None]
    _change(http, lifecycle_api, "revive", kill)
    assert _card_versions(on_own, high, ["k-3"]) == ["sepsis-gbdt-AB-1"]

    for role in ("shadow", "canary"):
        body = {"version": "sepsis-gbdt-AB-2", "to": role, "reason": "retrained on 2026 data"}
        assert http.post(f"{base}/promote", json=body, headers=ADMIN).status_code == 200
    share = {"share": 0.5, "reason": "half the patients"}
    assert http.post(f"{base}/canary-share", json=share, headers=ADMIN).status_code == 200
    _wait_for(
        lambda: (
            http.get(f"{lifecycle_api.url}/readyz").json()["deployment"]["canary"]
            == "sepsis-gbdt-AB-2"
        )
    )
    patients = [f"canary-{i}" for i in range(16)]
    versions = _card_versions(on_own, high, patients)
    # Each patient sees the version its pseudonym's bucket picks, and the same one next time.
    assert set(versions) == {"sepsis-gbdt-AB-1", "sepsis-gbdt-AB-2"}
    for key in clean.scan_iter("cds:alert*"):  # the repeat window would hide the second round
        clean.delete(key)
    assert _card_versions(on_own, high, patients) == versions

    # Active, then rolled back by an admin while the API runs: everyone gets AB-1 again.
    _change(
        http,
        lifecycle_api,
        "promote",
        {"version": "sepsis-gbdt-AB-2", "to": "active", "reason": "canary clean"},
    )
    assert set(_card_versions(on_own, high, ["after-promotion"])) == {"sepsis-gbdt-AB-2"}
    _change(http, lifecycle_api, "rollback", {"reason": "clinicians report odd risks"})
    assert _card_versions(on_own, high, ["after-rollback"]) == ["sepsis-gbdt-AB-1"]


def test_the_shadow_scores_every_call_and_is_never_shown(
    lifecycle_api: LiveApi, on_own: Caller, clean: redis.Redis, http: httpx.Client,
    high: SepsisCase,
) -> None:  # fmt: skip
    base = f"{lifecycle_api.url}/admin"
    body = {"version": "sepsis-gbdt-A-1", "to": "shadow", "reason": "compare the A model"}
    assert http.post(f"{base}/promote", json=body, headers=ADMIN).status_code == 200
    _wait_for(
        lambda: (
            http.get(f"{lifecycle_api.url}/readyz").json()["deployment"]["shadow"]
            == "sepsis-gbdt-A-1"
        )
    )
    versions = _card_versions(on_own, high, [f"shadow-{i}" for i in range(5)])
    assert set(versions) == {"sepsis-gbdt-AB-1"}
    report = http.get(f"{base}/shadow", headers=ADMIN).json()["shadow"]
    assert report["rows"] == 5 and report["shadow"] == "sepsis-gbdt-A-1"
    assert 0 <= report["agreement"] <= 1 and report["mean_abs_difference"] > 0
    calls = http.get(f"{base}/audit", params={"stream": "calls", "count": 5}, headers=ADMIN).json()
    event = calls["entries"][0]["event"]
    assert event["shadow_version"] == "sepsis-gbdt-A-1" and event["version"] == "sepsis-gbdt-AB-1"
    assert event["card"] == "shown" and len(event["patient"]) >= 32  # a pseudonym, not the id
    assert "shadow-" not in str(calls)
    page = http.get(f"{base}/monitor", headers=ADMIN)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert (
        "sepsis-gbdt-A-1" in page.text
        and "default-src 'none'" in page.headers["content-security-policy"]
    )


def test_feedback_joins_its_scored_call_in_the_audit_trail(
    lifecycle_api: LiveApi, on_own: Caller, clean: redis.Redis, http: httpx.Client,
    high: SepsisCase,
) -> None:  # fmt: skip
    response = on_own.post(PATIENT_VIEW, hook_request(high, patient_id="feedback-1"))
    card = response.json()["cards"][0]
    entry = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {
            "reason": {"code": "not-septic", "system": card["overrideReasons"][0]["system"]},
            "userComment": "Patient feedback-1 is fine",
        },
        "outcomeTimestamp": datetime.now(UTC).isoformat(),
    }
    assert on_own.post(f"{PATIENT_VIEW}/feedback", {"feedback": [entry]}).status_code == 200
    calls = http.get(
        f"{lifecycle_api.url}/admin/audit", params={"stream": "calls"}, headers=ADMIN
    ).json()["entries"]
    feedback, call = calls[0]["event"], calls[1]["event"]
    assert feedback["kind"] == "feedback" and feedback["card"] == "overridden"
    assert feedback["override_reason"] == "not-septic"
    assert feedback["card_uuid"] == call["card_uuid"] == card["uuid"]
    assert call["kind"] == "call" and call["card"] == "shown"
    assert "feedback-1" not in str(calls)  # neither the id nor the free-text comment


def test_the_cli_drives_the_admin_api(
    lifecycle_api: LiveApi, clean: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = CliSettings(url=lifecycle_api.url, token=ADMIN_TOKEN)
    assert admin_cli(["versions"], settings) == 0
    versions = json.loads(capsys.readouterr().out)["versions"]
    assert {v["version"] for v in versions} >= {"sepsis-gbdt-AB-1", "sepsis-gbdt-AB-2"}
    assert admin_cli(["card", "sepsis-gbdt-AB-1"], settings) == 0
    assert "sepsis-gbdt-AB-1" in capsys.readouterr().out
    promote = ["promote", "sepsis-gbdt-AB-2-weak", "--to", "shadow", "--reason", "try it"]
    assert admin_cli(promote, settings) == 0
    capsys.readouterr()
    refused = ["promote", "sepsis-gbdt-AB-2-weak", "--to", "canary", "--reason", "go live"]
    assert admin_cli(refused, settings) == 1
    assert "409" in capsys.readouterr().err
    assert admin_cli(["audit", "--count", "2"], settings) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    assert [e["event"]["actor"] for e in entries] == ["alice", "alice"]
    no_token = CliSettings(url=lifecycle_api.url, token=None)
    assert admin_cli(["state"], no_token) == 2
    wrong = CliSettings(url=lifecycle_api.url, token="not-the-token")
    assert admin_cli(["state"], wrong) == 1
    assert "401" in capsys.readouterr().err


def test_the_cli_runs_as_a_command(lifecycle_api: LiveApi) -> None:
    env = {**os.environ, "CDS_ADMIN_URL": lifecycle_api.url, "CDS_ADMIN_TOKEN": ADMIN_TOKEN}
    result = subprocess.run(
        [sys.executable, "-m", "cds_service.admin_cli", "state"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "revision" in json.loads(result.stdout)["state"]


def test_basic_credentials_may_read_but_never_change(
    lifecycle_api: LiveApi, clean: redis.Redis, http: httpx.Client
) -> None:
    """A browser replays cached Basic credentials cross-site: changes need a Bearer token."""
    basic = {"Authorization": "Basic " + base64.b64encode(f"alice:{ADMIN_TOKEN}".encode()).decode()}
    kill = {"service": "sepsis-patient-view", "reason": "forged by another page"}
    refused = http.post(f"{lifecycle_api.url}/admin/kill", json=kill, headers=basic)
    assert refused.status_code == 401 and "Bearer" in refused.text
    assert http.get(f"{lifecycle_api.url}/admin/monitor", headers=basic).status_code == 200
    assert clean.get("cds:lifecycle:sepsis") is None  # nothing changed


def test_a_new_history_after_redis_lost_the_state_is_followed(
    lifecycle_api: LiveApi, clean: redis.Redis, http: httpx.Client
) -> None:
    """Revisions restart at 1 when the state is lost; the lineage tells the two apart."""
    kill = {"service": "deterioration-patient-view", "reason": "first history"}
    _change(http, lifecycle_api, "kill", kill)
    clean.delete("cds:lifecycle:sepsis")
    _change(http, lifecycle_api, "kill", {"service": "sepsis-order-sign", "reason": "new history"})
    off = http.get(f"{lifecycle_api.url}/readyz").json()["deployment"]["cards_off"]
    assert off == {"sepsis-order-sign": "killed"}


def test_a_failing_shadow_never_costs_the_shown_card(
    lifecycle_api: LiveApi, on_own: Caller, clean: redis.Redis, http: httpx.Client,
    high: SepsisCase, root: Path,
) -> None:  # fmt: skip
    _change(
        http,
        lifecycle_api,
        "promote",
        {"version": "sepsis-gbdt-A-1", "to": "shadow", "reason": "compare"},
    )
    holder: ModelHolder = lifecycle_api.app.state.components.models
    shadow = holder.deployment.shadow
    assert shadow is not None

    class Broken:
        def run(self, *_: object) -> object:
            raise RuntimeError("CUDA out of memory")

    object.__setattr__(shadow, "session", Broken())
    assert _card_versions(on_own, high, ["shadow-broken"]) == ["sepsis-gbdt-AB-1"]


def test_a_redis_that_may_lose_the_audit_trail_makes_the_api_not_ready(
    start_api: Callable[..., LiveApi], http: httpx.Client
) -> None:
    with EmbeddedRedis() as lossy:
        client = redis.Redis.from_url(lossy.url)
        client.config_set("appendonly", "no")
        client.config_set("maxmemory-policy", "allkeys-lru")
        api = start_api(redis_url=lossy.url, sepsis={"device": "cpu"})
        ready = http.get(f"{api.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["audit"] == (
            "not-durable: appendonly off, maxmemory-policy allkeys-lru"
        )
        assert re.search(r"^cds_audit_durable 0\.0$", http.get(f"{api.url}/metrics").text, re.M)
        client.config_set("appendonly", "yes")
        client.config_set("maxmemory-policy", "noeviction")
        assert http.get(f"{api.url}/readyz").status_code == 200
        client.close()
