"""The admin API (``/admin/*``): registry operations, audit, drift, shadow, the monitoring page.

Authenticated by ``AdminAuth`` (the admin's own tokens, never the EHR's JWT); every change names
its actor and reason in the audit trail. Refused changes answer 409 with the reason (gates that
failed, a step out of order) and are audited as well.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from cds_service.deps import ComponentsDep
from cds_service.errors import Conflict, NotFound
from cds_service.inference.registry import ModelRefused, verified_card
from cds_service.lifecycle.audit import CALLS_STREAM, LIFECYCLE_STREAM, LifecycleEvent, durability
from cds_service.lifecycle.monitor_page import render_monitor
from cds_service.lifecycle.recorder import COUNTS_RETENTION
from cds_service.lifecycle.shadow import ShadowStats
from cds_service.lifecycle.state import DeploymentState, LifecycleRefused
from cds_service.lifecycle.views import feature_figures, monitor_view, shadow_report, version_rows
from cds_service.responses import JsonResponse

router = APIRouter(prefix="/admin")
#: the page is one document with inline CSS and SVG: nothing else may load or run
_PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


async def _actor(
    request: Request, c: ComponentsDep, authorization: Annotated[str | None, Header()] = None
) -> str:
    return c.admins.actor(authorization, request.method)


ActorDep = Annotated[str, Depends(_actor)]
Reason = Annotated[str, Field(min_length=3, max_length=500)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


class PromoteBody(_Body):
    version: str = Field(min_length=1, max_length=100)
    to: Literal["shadow", "canary", "active"]


class ShareBody(_Body):
    share: float = Field(gt=0, lt=1)


class ServiceBody(_Body):
    service: str = Field(min_length=1, max_length=100)


def _changed(state: DeploymentState, event: LifecycleEvent) -> JsonResponse:
    return JsonResponse(
        {
            "state": state.model_dump(mode="json"),
            "event": event.model_dump(mode="json", exclude_none=True),
        }
    )


def _now() -> datetime:
    return datetime.now(UTC)


@router.get("/state")
async def state(c: ComponentsDep, _: ActorDep) -> JsonResponse:
    current = await c.operations.state()
    running = c.models.deployment
    return JsonResponse(
        {
            "state": current.model_dump(mode="json"),
            "this_process": {
                "revision": running.revision,
                "active": running.active.version if running.active else None,
                "shadow": running.shadow.version if running.shadow else None,
                "canary": running.canary.version if running.canary else None,
            },
        }
    )


@router.get("/versions")
async def versions(c: ComponentsDep, _: ActorDep) -> JsonResponse:
    rows = version_rows(c.operations.manifest(), await c.operations.state(), c.operations.policy)
    return JsonResponse({"versions": [r.model_dump(mode="json") for r in rows]})


@router.get("/versions/{version}/card")
async def card(version: str, c: ComponentsDep, _: ActorDep) -> Response:
    try:
        text = verified_card(c.operations.root, version)
    except ModelRefused as refused:
        raise NotFound(f"no model card for {version!r}", expression="version") from refused
    return Response(text, media_type="text/markdown; charset=utf-8")


async def _apply(change: Any) -> JsonResponse:
    try:
        state, event = await change
    except LifecycleRefused as refused:
        raise Conflict(str(refused)) from refused
    return _changed(state, event)


@router.post("/promote")
async def promote(body: PromoteBody, c: ComponentsDep, actor: ActorDep) -> JsonResponse:
    return await _apply(c.operations.promote(body.version, body.to, actor, body.reason, _now()))


@router.post("/rollback")
async def rollback(body: _Body, c: ComponentsDep, actor: ActorDep) -> JsonResponse:
    return await _apply(c.operations.rollback(actor, body.reason, _now()))


@router.post("/withdraw-canary")
async def withdraw_canary(body: _Body, c: ComponentsDep, actor: ActorDep) -> JsonResponse:
    return await _apply(c.operations.withdraw_canary(actor, body.reason, _now()))


@router.post("/canary-share")
async def canary_share(body: ShareBody, c: ComponentsDep, actor: ActorDep) -> JsonResponse:
    return await _apply(c.operations.set_canary_share(body.share, actor, body.reason, _now()))


@router.post("/stop")
async def stop(body: _Body, c: ComponentsDep, actor: ActorDep) -> JsonResponse:
    return await _apply(c.operations.stop(actor, body.reason, _now()))


@router.post("/resume")
async def resume(body: _Body, c: ComponentsDep, actor: ActorDep) -> JsonResponse:
    return await _apply(c.operations.resume(actor, body.reason, _now()))


@router.post("/kill")
async def kill(body: ServiceBody, c: ComponentsDep, actor: ActorDep) -> JsonResponse:
    return await _apply(c.operations.kill(body.service, True, actor, body.reason, _now()))


@router.post("/revive")
async def revive(body: ServiceBody, c: ComponentsDep, actor: ActorDep) -> JsonResponse:
    return await _apply(c.operations.kill(body.service, False, actor, body.reason, _now()))


@router.get("/audit")
async def audit(
    c: ComponentsDep,
    _: ActorDep,
    stream: Literal["lifecycle", "calls"] = "lifecycle",
    count: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JsonResponse:
    name = LIFECYCLE_STREAM if stream == "lifecycle" else CALLS_STREAM
    entries = await c.audit.recent(name, count)
    return JsonResponse(
        {
            "stream": stream,
            "length": await c.audit.length(name),
            "retention_days": c.audit.retention_of(name).days,
            "entries": [e.model_dump(mode="json") for e in entries],
        }
    )


@router.get("/drift")
async def drift(c: ComponentsDep, _: ActorDep) -> JsonResponse:
    current = await c.operations.state()
    monitor = c.monitor
    now = _now()
    result: dict[str, Any] = {"window_hours": c.operations.policy.drift.window_hours}
    for role, version in (("active", current.active), ("canary", current.canary)):
        if version is None:
            continue
        try:
            figures, verdict = await monitor.figures(version, now)
        except (ModelRefused, KeyError, ValueError):
            result[role] = {"version": version, "figures": None, "why": "no readable reference"}
            continue
        result[role] = {
            "version": version,
            "figures": figures.model_dump(exclude={"features"}),
            "verdict": verdict.model_dump(exclude={"features"}),
            "features": [f.model_dump() for f in feature_figures(figures, verdict)],
            "history": [s.model_dump(mode="json") for s in await monitor.history(version)],
        }
    return JsonResponse(result)


@router.get("/shadow")
async def shadow(c: ComponentsDep, _: ActorDep) -> JsonResponse:
    current = await c.operations.state()
    report = await shadow_report(
        ShadowStats(c.redis, COUNTS_RETENTION),
        current,
        c.operations.policy.drift.window_hours,
        _now(),
    )
    return JsonResponse({"shadow": report.model_dump() if report else None})


@router.get("/monitor")
async def monitor(c: ComponentsDep, _: ActorDep) -> HTMLResponse:
    problem = await durability(c.redis)
    view = await monitor_view(
        state=await c.operations.state(),
        manifest=c.operations.manifest(),
        policy=c.operations.policy,
        monitor=c.monitor,
        audit=c.audit,
        shadow=ShadowStats(c.redis, COUNTS_RETENTION),
        durable=problem is None if not (problem or "").startswith("unknown") else None,
        now=_now(),
    )
    return HTMLResponse(
        render_monitor(view),
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": _PAGE_POLICY,
            "X-Frame-Options": "DENY",
        },
    )
