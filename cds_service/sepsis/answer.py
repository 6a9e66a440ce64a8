"""The sepsis services' answer: assess, build the card the hook calls for, apply alert discipline.

Fail-safe rules (issue 6): no model loaded → no sepsis card (``/readyz`` says not ready); Redis
down → the score comes from the prefetch alone and the card says so, and the repeat check is
skipped (the card is shown: a missed sepsis alert is worse than a repeated one).

Lifecycle (issue 9): the deployment snapshot decides which version a patient's card comes from
(the canary for a stable share of pseudonyms, the active otherwise), scores the shadow beside it,
and turns cards off: a killed service does no work; stopped cards are still scored and counted
so that the drift figures show when the inputs recover. Each scored call leaves its drift counts,
shadow comparison and audit event in one Redis round trip.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import numpy as np

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
from cds_service.inference.registry import LoadedModel
from cds_service.inference.scorer import ModelUnavailable, Scorer
from cds_service.lifecycle.audit import CallEvent
from cds_service.lifecycle.follower import ModelHolder, ShownRole
from cds_service.lifecycle.recorder import ScoredBatch, ScoreRecorder, ShadowPair
from cds_service.metrics import Metrics
from cds_service.security.pseudonym import Pseudonymiser
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
        *,
        models: ModelHolder,
        scorer: Scorer,
        recorder: ScoreRecorder,
        pseudonymiser: Pseudonymiser,
    ) -> None:
        self._assessor = assessor
        self._alerts = alerts
        self._settings = settings
        self._metrics = metrics
        self._models = models
        self._scorer = scorer
        self._recorder = recorder
        self._pseudonymiser = pseudonymiser

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
        # One snapshot per call: a promotion or rollback never mixes two states in one answer.
        deployment = self._models.deployment
        off = deployment.cards_off(service_id)
        if off is not None and off[0] == "killed":
            self._metrics.cards_suppressed.labels(service=service_id, reason="killed").inc()
            return []
        pseudonym = self._pseudonymiser.pseudonym("patient", context.patientId)
        model, role = deployment.shown(pseudonym)
        if model is None:
            self._not_shown("no-model")
            return []
        try:
            result = await self._assessor.assess(
                data, resources, context.patientId, context.encounterId, cached, model=model
            )
        except ModelUnavailable:
            self._not_shown("no-model")
            return []
        if isinstance(result, NotScored):
            self._not_shown(result.reason)
            return []
        card = self._card(context, result)
        if off is not None:
            # Stopped by the drift monitor or an admin: scored and counted (so recovery shows
            # in the figures), never shown.
            self._metrics.cards_suppressed.labels(service=service_id, reason="stopped").inc()
            shown, why = False, "stopped"
        elif card is None:
            shown, why = False, "no-card"
        else:
            shown, why = await self._may_show(service_id, result, card)
        await self._record(
            service_id=service_id, pseudonym=pseudonym, model=model, role=role,
            shadow=deployment.shadow, result=result, card=card, why=why,
        )  # fmt: skip
        return [card] if shown and card is not None else []

    async def _record(
        self,
        *,
        service_id: str,
        pseudonym: str,
        model: LoadedModel,
        role: ShownRole,
        shadow: LoadedModel | None,
        result: SepsisAssessment,
        card: Card | None,
        why: str,
    ) -> None:
        if result.features is None:
            return
        row = result.features[None, :]
        scores = np.array([result.risk])
        pairs: list[ShadowPair] = []
        shadow_risk = None
        if shadow is not None and shadow.version != model.version:
            try:
                shadow_scores = await self._scorer.score(shadow, row)
            except Exception as exc:  # the shadow must never cost the shown card
                self._metrics.shadow_failures.inc()
                log.warning("shadow %s failed (%s)", shadow.version, type(exc).__name__)
            else:
                shadow_risk = float(shadow_scores[0])
                pairs.append(ShadowPair(model, shadow, row, scores, shadow_scores, (pseudonym,)))
        event = CallEvent(
            at=result.now,
            kind="call",
            service=service_id,
            patient=pseudonym,
            version=model.version,
            role=role,
            risk=result.risk,
            card=why,
            card_uuid=str(card.uuid) if card is not None and card.uuid else None,
            shadow_version=shadow.version if shadow_risk is not None and shadow else None,
            shadow_risk=shadow_risk,
        )
        await self._recorder.record(
            [ScoredBatch(model, row, scores, patients=(pseudonym,))],
            datetime.now(UTC),
            pairs,
            [event],
        )

    def _card(self, context: HookContext, assessment: SepsisAssessment) -> Card | None:
        if isinstance(context, OrderSelectContext | OrderSignContext):
            content = draft_order_content(context.draftOrders)
            return build_workup_card(assessment, content, card_uuid=uuid4())
        return build_sepsis_card(assessment, self._settings, card_uuid=uuid4())

    async def _may_show(
        self, service_id: str, assessment: SepsisAssessment, card: Card
    ) -> tuple[bool, str]:
        """Whether the alert discipline lets the card through: (show, 'shown' or the reason)."""
        if card.uuid is None:  # every card we build has one; without it feedback cannot snooze
            return True, "shown"
        try:
            decision = await self._alerts.decide(
                service_id, assessment.patient_id, assessment.band.rank, card.uuid, assessment.now
            )
        except DependencyUnavailable:
            self._metrics.alert_state_unavailable.inc()
            log.warning("alert state unavailable: card shown without the repeat check")
            return True, "shown"
        if not decision.show:
            self._metrics.cards_suppressed.labels(service=service_id, reason=decision.reason).inc()
            return False, f"suppressed:{decision.reason}"
        return True, "shown"
