"""The sepsis services' answer: assess, build the card the hook calls for, apply alert discipline.

Fail-safe rules (issue 6): no model loaded → no sepsis card (``/readyz`` says not ready); Redis
down → the score comes from the prefetch alone and the card says so, and the repeat check is
skipped (the card is shown: a missed sepsis alert is worse than a repeated one).
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import uuid4

from cds_service.cards.sepsis import build_sepsis_card
from cds_service.cards.sepsis_orders import build_workup_card, draft_order_content
from cds_service.clinical_data import PatientData
from cds_service.errors import DependencyUnavailable
from cds_service.hooks_models import (
    Card,
    HookContext,
    OrderSelectContext,
    OrderSignContext,
)
from cds_service.inference.scorer import ModelUnavailable
from cds_service.metrics import Metrics
from cds_service.sepsis.assess import NotScored, SepsisAssessor
from cds_service.sepsis.assessment import SepsisAssessment
from cds_service.settings import SepsisSettings
from cds_service.store.alerts import AlertState
from cds_service.store.patients import StayContext

log = logging.getLogger(__name__)


class SepsisAnswer:
    def __init__(
        self,
        assessor: SepsisAssessor,
        alerts: AlertState,
        settings: SepsisSettings,
        metrics: Metrics,
    ) -> None:
        self._assessor = assessor
        self._alerts = alerts
        self._settings = settings
        self._metrics = metrics

    def _not_shown(self, reason: str) -> None:
        self._metrics.score_not_shown.labels(score="sepsis", reason=reason).inc()

    async def cards(
        self,
        service_id: str,
        context: HookContext,
        data: PatientData,
        resources: dict[str, dict[str, Any] | None],
        cached: StayContext | None = None,
    ) -> list[Card]:
        try:
            result = await self._assessor.assess(
                data, resources, context.patientId, context.encounterId, cached
            )
        except ModelUnavailable:
            self._not_shown("no-model")
            return []
        if isinstance(result, NotScored):
            self._not_shown(result.reason)
            return []
        card = self._card(context, result)
        if card is None or not await self._may_show(service_id, result, card):
            return []
        return [card]

    def _card(self, context: HookContext, assessment: SepsisAssessment) -> Card | None:
        if isinstance(context, OrderSelectContext | OrderSignContext):
            content = draft_order_content(context.draftOrders)
            return build_workup_card(assessment, content, card_uuid=uuid4())
        return build_sepsis_card(assessment, self._settings, card_uuid=uuid4())

    async def _may_show(self, service_id: str, assessment: SepsisAssessment, card: Card) -> bool:
        if card.uuid is None:  # every card we build has one; without it feedback cannot snooze
            return True
        try:
            decision = await self._alerts.decide(
                service_id, assessment.patient_id, assessment.band.rank, card.uuid, assessment.now
            )
        except DependencyUnavailable:
            self._metrics.alert_state_unavailable.inc()
            log.warning("alert state unavailable: card shown without the repeat check")
            return True
        if not decision.show:
            self._metrics.cards_suppressed.labels(service=service_id, reason=decision.reason).inc()
        return decision.show
