"""Turns a request body into a validated hook call, or a 400 that names every broken rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from cds_service.catalogue import CdsService
from cds_service.errors import BadRequest, HookMismatch
from cds_service.hooks_models import CONTEXT_MODELS, HookContext, HookRequest

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class HookCall:
    request: HookRequest
    context: HookContext

    @property
    def context_values(self) -> dict[str, Any]:
        """The context as sent (prefetch tokens are filled from it)."""
        return self.request.context


def _location(loc: tuple[int | str, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def validate(model: type[M], data: object, prefix: str = "") -> M:
    """``model.model_validate`` with pydantic's errors turned into one 400 naming each field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems: list[tuple[str | None, str]] = []
        for error in exc.errors(include_url=False, include_input=False):
            # A rule on the whole model has an empty location: it is reported without one.
            where = _location(tuple(error["loc"]), prefix) or None
            message = error["msg"].removeprefix("Value error, ")
            problems.append((where, f"{where}: {message}" if where else message))
        (first_where, first_message), *rest = problems
        raise BadRequest(first_message, expression=first_where, more=rest) from exc


def parse_hook_call(service: CdsService, body: object) -> HookCall:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    request = validate(HookRequest, body)
    if request.hook != service.hook:
        raise HookMismatch(
            f"hook {request.hook!r} does not match service {service.id!r}, "
            f"which is registered for {service.hook!r}",
            expression="hook",
        )
    context = validate(CONTEXT_MODELS[service.hook], request.context, prefix="context")
    return HookCall(request=request, context=context)
