"""POST /cds-services/{id}/feedback (CDS Hooks 2.0.1 §Feedback)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request

from cds_service.body import read_json
from cds_service.deps import ComponentsDep
from cds_service.errors import NotFound
from cds_service.hook_call import validate
from cds_service.hooks_models import FeedbackRequest
from cds_service.lifecycle.audit import CALLS_STREAM, CallEvent
from cds_service.responses import JsonResponse

router = APIRouter()


@router.post("/cds-services/{service_id}/feedback")
async def feedback(service_id: str, request: Request, c: ComponentsDep) -> JsonResponse:
    service = c.catalogue.get(service_id)
    if service is None:
        raise NotFound(f"no CDS service with id {service_id!r}", expression="id")
    client = await c.verifier.authenticate(
        request.headers.get("authorization"),
        audience=f"{c.settings.base_url}/cds-services/{service.id}/feedback",
        required=c.settings.jwt.required,
    )
    body = validate(FeedbackRequest, await read_json(request, c.settings.max_request_bytes))
    caller = f"{client.iss}|{client.tenant or ''}" if client else None
    result = await c.feedback.save(service.id, caller, body.feedback)
    # After the entry is stored: an EHR that retries after a 503 here stores nothing twice.
    await c.alerts.apply_feedback(service.id, body.feedback)
    for outcome, stored in result.outcomes:
        c.metrics.feedback.labels(
            service=service.id, outcome=outcome, stored=str(stored).lower()
        ).inc()
    # The audit trail links each new entry to its scored call by the card's uuid; the user's
    # free-text comment stays out of it (it may name the patient).
    now = datetime.now(UTC)
    events = [
        CallEvent(
            at=now,
            kind="feedback",
            service=service.id,
            card=entry.outcome,
            card_uuid=entry.card,
            override_reason=entry.overrideReason.reason.code
            if entry.overrideReason and entry.overrideReason.reason
            else None,
        )
        for entry, (_, stored) in zip(body.feedback, result.outcomes, strict=True)
        if stored
    ]
    for event in events:
        await c.audit.append(CALLS_STREAM, event, now)
    return JsonResponse({"received": result.received, "stored": result.stored})
