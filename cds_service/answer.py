"""What each service answers, once its call is validated and its data resolved."""

from __future__ import annotations

from datetime import datetime, timedelta

from cds_service.cards.deterioration import SERVICE_ID as DETERIORATION
from cds_service.cards.deterioration import build_deterioration_card
from cds_service.catalogue import CdsService
from cds_service.clinical_data import ClinicalData, PatientData
from cds_service.features import LOOKBACK_HOURS
from cds_service.hook_call import HookCall
from cds_service.hooks_models import Card, HookResponse
from cds_service.lifecycle.follower import ModelHolder
from cds_service.metrics import Metrics
from cds_service.prefetch import PrefetchResult
from cds_service.scores import TimedValue, Vitals
from cds_service.scores.news2 import score_news2
from cds_service.scores.qsofa import score_qsofa
from cds_service.sepsis.answer import SepsisAnswer
from cds_service.store.patients import StayContext

#: NEWS2 reads at most ``news2_lookback_h`` (<= 72 h) back; 24 h of timeline covers the default.
DETERIORATION_WINDOW = timedelta(hours=24)
SEPSIS_WINDOW = timedelta(hours=LOOKBACK_HOURS)

_PARTIAL_HISTORY = (
    "**Partial history:** the service's patient timeline was unavailable, so this is based on the "
    "prefetched data of this call alone."
)


def recent_values(data: PatientData, lookback: timedelta) -> Vitals:
    """The newest value of each variable no older than ``lookback``."""
    since = data.now - lookback
    return {
        name: TimedValue(value=obs.value, time=obs.time)
        for name, obs in data.latest.items()
        if obs.time >= since
    }


def _why_not(data: PatientData) -> str:
    """A fixed label for the metric (the result's own reason is a sentence)."""
    age = data.facts.age_years
    if age is None:
        return "age-unknown"
    return "under-16" if age < 16 else "pregnant"


class Answerer:
    def __init__(
        self,
        data: ClinicalData,
        metrics: Metrics,
        sepsis: SepsisAnswer,
        *,
        models: ModelHolder,
        news2_lookback: timedelta,
        news2_show_low: bool,
    ) -> None:
        self._data = data
        self._sepsis = sepsis
        self._models = models
        self._metrics = metrics
        self._lookback = news2_lookback
        self._show_low = news2_show_low

    async def answer(
        self,
        service: CdsService,
        call: HookCall,
        prefetch: PrefetchResult,
        now: datetime,
        cached: StayContext | None = None,
    ) -> HookResponse:
        patient = call.context.patientId
        cards: list[Card] = []
        if service.id == DETERIORATION and self._models.deployment.cards_off(DETERIORATION):
            # The kill switch: no work, no card (the sepsis services check it themselves).
            self._metrics.cards_suppressed.labels(service=service.id, reason="killed").inc()
        elif service.id == DETERIORATION:
            window = max(DETERIORATION_WINDOW, self._lookback)
            data = await self._data.assemble(patient, prefetch, now, window)
            card = self._deterioration(data)
            if card is not None:
                cards.append(card)
        else:
            data = await self._data.assemble(patient, prefetch, now, SEPSIS_WINDOW)
            cards += await self._sepsis.cards(
                service.id, call.context, data, prefetch.resources, cached
            )
        for card in cards:
            self._metrics.cards.labels(service=service.id, indicator=card.indicator).inc()
        return HookResponse(cards=cards)

    def _deterioration(self, data: PatientData) -> Card | None:
        values = recent_values(data, self._lookback)
        news2 = score_news2(
            values,
            age_years=data.facts.age_years,
            pregnant=data.facts.pregnant,
            spo2_scale2=data.facts.spo2_scale2,
            now=data.now,
        )
        if not news2.eligible:
            self._metrics.score_not_shown.labels(score="news2", reason=_why_not(data)).inc()
            return None
        card = build_deterioration_card(
            news2, score_qsofa(values), lookback=self._lookback, show_low=self._show_low
        )
        if card is not None and data.history == "prefetch-only":
            card = card.model_copy(update={"detail": f"{card.detail}\n\n{_PARTIAL_HISTORY}"})
        return card
