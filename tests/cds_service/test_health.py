"""Probes and metrics, and failing safe when Redis is gone."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from cds_service.redis_server import free_port

from support import Caller, EhrKey, LiveApi

pytestmark = pytest.mark.integration


def test_live_and_ready(api: LiveApi, http: httpx.Client) -> None:
    assert http.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = http.get(f"{api.url}/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"redis": "ok", "model": "ok"}
    # CI has no GPU: the tree-ensemble form on the CPU (the CUDA path is proven in bench/)
    assert body["model"]["version"].startswith("sepsis-gbdt-")
    assert body["model"]["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")


def test_metrics_are_prometheus_text(api: LiveApi, http: httpx.Client) -> None:
    response = http.get(f"{api.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE cds_hook_latency_seconds histogram" in response.text


def test_hook_latency_is_observed(caller: Caller, api: LiveApi, http: httpx.Client) -> None:
    body = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": "p1"},
        "prefetch": {"patient": None, "vitals": None},
    }
    assert caller.post("/cds-services/deterioration-patient-view", body).status_code == 200
    metrics = http.get(f"{api.url}/metrics").text
    assert 'cds_hook_latency_seconds_count{service="deterioration-patient-view"}' in metrics


@pytest.fixture(scope="module")
def api_without_redis(start_api: Callable[..., LiveApi]) -> LiveApi:
    return start_api(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.2)


def test_not_ready_without_redis_but_alive(api_without_redis: LiveApi, http: httpx.Client) -> None:
    assert http.get(f"{api_without_redis.url}/healthz").status_code == 200
    ready = http.get(f"{api_without_redis.url}/readyz")
    assert ready.status_code == 503
    # without Redis the shared deployment state (kill switches, stops) cannot be known either
    assert ready.json()["checks"] == {
        "redis": "unreachable",
        "model": "ok",
        "lifecycle": "state-not-read",
    }


def test_hook_still_answers_without_redis(
    api_without_redis: LiveApi, es_key: EhrKey, http: httpx.Client
) -> None:
    """Replay protection falls back to process memory (counted) instead of failing every call."""
    body = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": "p1"},
        "prefetch": {"patient": None, "vitals": None},
    }
    url = f"{api_without_redis.url}/cds-services/sepsis-patient-view"
    token = es_key.token(url)
    first = http.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert first.status_code == 200
    replay = http.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert replay.status_code == 401
    metrics = http.get(f"{api_without_redis.url}/metrics").text
    assert "cds_jwt_replay_check_degraded_total 2.0" in metrics


def test_feedback_without_redis_is_503_not_lost_silently(
    api_without_redis: LiveApi, es_key: EhrKey, http: httpx.Client
) -> None:
    body = {
        "feedback": [
            {
                "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-30T10:00:00Z",
            }
        ]
    }
    response = Caller(api_without_redis, es_key, http).post(
        "/cds-services/sepsis-patient-view/feedback", body
    )
    assert response.status_code == 503
    assert response.json()["issue"][0]["code"] == "transient"
