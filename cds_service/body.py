"""Reading a JSON request body within the size limit."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from cds_service.errors import BadRequest, PayloadTooLarge


async def read_json(request: Request, limit: int) -> Any:
    """The parsed body; 413 past ``limit`` bytes (checked while streaming), 400 if not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over the {limit}-byte limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadRequest("the request body is empty; a JSON object is expected")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson's message gives line, column and char offset, never body content.
        raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
