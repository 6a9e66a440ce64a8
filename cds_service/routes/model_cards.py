"""GET /model-cards/{version}: the model card a sepsis card links to, as Markdown.

Only versions in the registry's manifest are served, and only when the card file still has the
sha256 the manifest records: a card that does not match its model must not be shown as its card.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from cds_service.deps import ComponentsDep
from cds_service.errors import NotFound
from cds_service.inference.registry import ModelRefused, verified_card

router = APIRouter()


@router.get("/model-cards/{version}")
async def model_card(version: str, c: ComponentsDep) -> Response:
    current = c.models.current
    if current is not None and current.version == version:
        text = current.card_markdown
    else:
        try:
            text = verified_card(c.models.root, version)
        except ModelRefused as refused:
            raise NotFound(
                f"no model card for version {version!r}", expression="version"
            ) from refused
    return Response(text, media_type="text/markdown; charset=utf-8")
