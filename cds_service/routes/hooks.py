"""POST /cds-services/{id} (CDS Hooks 2.0.1 §Calling a CDS Service)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from cds_service.body import read_json
from cds_service.cards.deterioration import SERVICE_ID as DETERIORATION
from cds_service.deps import Components, ComponentsDep
from cds_service.errors import NotFound, Overloaded
from cds_service.hook_call import parse_hook_call
from cds_service.responses import JsonResponse
from cds_service.security.fhir_allowlist import fhir_access_for

router = APIRouter()


@router.post("/cds-services/{service_id}")
async def call_service(service_id: str, request: Request, c: ComponentsDep) -> JsonResponse:
    if c.in_flight.count >= c.settings.max_hooks_in_flight:
        c.metrics.hooks_shed.inc()
        raise Overloaded("too many hook calls in flight; try again shortly")
    c.in_flight.count += 1
    try:
        return await _answer(service_id, request, c)
    finally:
        c.in_flight.count -= 1


async def _answer(service_id: str, request: Request, c: Components) -> JsonResponse:
    started = time.perf_counter()
    service = c.catalogue.get(service_id)
    if service is None:
        raise NotFound(f"no CDS service with id {service_id!r}", expression="id")
    await c.verifier.authenticate(
        request.headers.get("authorization"),
        audience=f"{c.settings.base_url}/cds-services/{service.id}",
        required=c.settings.jwt.required,
    )
    call = parse_hook_call(service, await read_json(request, c.settings.max_request_bytes))
    auth = call.request.fhirAuthorization
    access = fhir_access_for(
        call.request.fhirServer, auth.access_token if auth else None, c.settings.fhir
    )
    # A patient the workers keep fresh needs no FHIR read at all (the sepsis services only: the
    # cache holds what the sepsis model needs, not NEWS2's pregnancy and SpO2 target facts).
    cached = (
        None
        if service.id == DETERIORATION
        else await c.patients.fresh_context(
            call.context.patientId, c.settings.worker.fresh_for_hooks_s
        )
    )
    prefetch = await c.prefetch.resolve(
        service, call.context_values, call.request.prefetch, access, cached=cached is not None
    )
    response = await c.answerer.answer(service, call, prefetch, datetime.now(UTC), cached)
    c.metrics.hook_latency.labels(service=service.id).observe(time.perf_counter() - started)
    return JsonResponse(response.to_json())
