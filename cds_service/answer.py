"""What each service answers, once its call is validated and its data resolved."""

from __future__ import annotations

from cds_service.catalogue import CdsService
from cds_service.hook_call import HookCall
from cds_service.hooks_models import HookResponse
from cds_service.prefetch import PrefetchResult


async def answer(service: CdsService, call: HookCall, data: PrefetchResult) -> HookResponse:
    """No cards yet: scoring arrives with the model and NEWS2 work, and a card without a validated
    model behind it would be a placeholder risk, which a clinician must never see."""
    del service, call, data
    return HookResponse(cards=[])
