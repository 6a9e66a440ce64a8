"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from cds_service.catalogue import SERVICES
from cds_service.deps import ComponentsDep
from cds_service.lifecycle.audit import durability
from cds_service.lifecycle.exported import lifecycle_registry
from cds_service.responses import JsonResponse
from cds_service.worker_metrics import worker_registry

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JsonResponse:
    """Live: the process serves HTTP. Checks no dependency: a Redis outage must restart nothing."""
    return JsonResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(c: ComponentsDep) -> JsonResponse:
    """Ready: every part a call needs answers; names the model version and provider in use."""
    try:
        redis_ok = bool(await c.redis.ping())
    except (RedisError, OSError):
        redis_ok = False
    model = c.models.current
    checks = {
        "redis": "ok" if redis_ok else "unreachable",
        "model": "ok" if model else f"not-loaded: {c.models.last_refusal or 'unknown'}",
    }
    if not c.models.followed:
        checks["lifecycle"] = "state-not-read"
    if redis_ok:
        problem = await durability(c.redis)
        # Outside development the audit trail must be safe before calls are scored. A Redis that
        # hides INFO (some managed offerings) is not known to be unsafe: cds_audit_durable is
        # then absent, and the chart's documentation says what to set there.
        known = problem is not None and not problem.startswith("unknown")
        if known and c.settings.environment == "production":
            checks["audit"] = f"not-durable: {problem}"
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ready" if ready else "not-ready", "checks": checks}
    if model is not None:
        body["model"] = {"version": model.version, "form": model.form, "provider": model.provider}
    deployment = c.models.deployment
    body["deployment"] = {
        "lineage": deployment.identity[0],
        "revision": deployment.revision,
        "active": deployment.state.active if deployment.state else None,
        "shadow": deployment.shadow.version if deployment.shadow else None,
        "canary": deployment.canary.version if deployment.canary else None,
        "cards_off": {s.id: reason[0] for s in SERVICES if (reason := deployment.cards_off(s.id))},
    }
    return JsonResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics(c: ComponentsDep) -> Response:
    workers = await worker_registry(c.redis, c.patients)
    lifecycle = await lifecycle_registry(c.redis, c.models.deployment)
    body = (
        generate_latest(c.metrics.registry) + generate_latest(workers) + generate_latest(lifecycle)
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)
