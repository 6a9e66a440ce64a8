"""GET /cds-services (CDS Hooks 2.0.1 §Discovery)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from cds_service.deps import ComponentsDep
from cds_service.responses import JsonResponse

router = APIRouter()


@router.get("/cds-services")
async def discovery(request: Request, c: ComponentsDep) -> JsonResponse:
    await c.verifier.authenticate(
        request.headers.get("authorization"),
        audience=f"{c.settings.base_url}/cds-services",
        required=c.settings.jwt.required_for_discovery,
    )
    return JsonResponse(c.catalogue.discovery().to_json())
