"""One patient's clinical data for a hook call: prefetch mapped, merged with the Redis timeline.

When Redis does not answer, the call goes on with the prefetch alone and says so
(``history="prefetch-only"``): a card built on partial history is better than no card, as long as
it is marked as such.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from cds_service.errors import DependencyUnavailable
from cds_service.metrics import Metrics
from cds_service.patient_facts import PatientFacts, patient_facts
from cds_service.prefetch import PrefetchResult
from cds_service.store.timeline import TimelineStore
from fhir_adapters.canonical import CanonicalObservation
from fhir_adapters.observations import MappingStats, map_observations
from fhir_adapters.site_codes import CodeIndex

log = logging.getLogger(__name__)

#: Prefetch keys whose Observations feed the timeline.
OBSERVATION_KEYS = ("vitals", "labs")
#: An observation stamped this far past the server's clock is not "now" data (a clock or time-zone
#: error at the source): it is left out of the window and counted.
FUTURE_TOLERANCE = timedelta(minutes=5)


@dataclass(frozen=True)
class PatientData:
    observations: list[CanonicalObservation]
    facts: PatientFacts
    history: Literal["timeline", "prefetch-only"]
    stats: MappingStats
    window_start: datetime
    now: datetime
    latest: dict[str, CanonicalObservation] = field(default_factory=dict)


def latest_values(observations: list[CanonicalObservation]) -> dict[str, CanonicalObservation]:
    """The most recent observation of each variable (ties broken by source for determinism)."""
    latest: dict[str, CanonicalObservation] = {}
    for obs in sorted(observations, key=lambda o: (o.time, o.source)):
        latest[obs.variable] = obs
    return latest


class ClinicalData:
    def __init__(self, timeline: TimelineStore, metrics: Metrics, codes: CodeIndex) -> None:
        self._timeline = timeline
        self._metrics = metrics
        self._codes = codes

    def _count(self, stats: MappingStats) -> None:
        counter = self._metrics.observations
        counter.labels(outcome="mapped").inc(stats.mapped)
        counter.labels(outcome="skipped-status").inc(stats.skipped_status)
        counter.labels(outcome="no-time").inc(stats.no_time)
        counter.labels(outcome="no-value").inc(stats.no_value)
        counter.labels(outcome="implausible").inc(sum(stats.implausible.values()))
        counter.labels(outcome="bad-unit").inc(sum(stats.bad_unit.values()))
        counter.labels(outcome="unmapped").inc(sum(stats.unmapped.values()))

    async def assemble(
        self, patient: str, prefetch: PrefetchResult, now: datetime, window: timedelta
    ) -> PatientData:
        """Map the prefetch, merge it into the timeline and read back ``window`` up to now."""
        stats = MappingStats()
        mapped = map_observations(
            (prefetch.resources.get(key) for key in OBSERVATION_KEYS),
            stats,
            patient=patient,
            index=self._codes,
        )
        self._count(stats)
        latest_allowed = now + FUTURE_TOLERANCE
        future = sum(1 for o in mapped if o.time > latest_allowed)
        self._metrics.observations.labels(outcome="future").inc(future)
        start = now - window
        history: Literal["timeline", "prefetch-only"] = "timeline"
        try:
            _, observations = await self._timeline.merge_and_read(
                patient, mapped, now, start, latest_allowed
            )
        except DependencyUnavailable:
            self._metrics.partial_history.inc()
            log.warning("timeline unavailable: scoring from prefetch alone")
            history = "prefetch-only"
            observations = [o for o in mapped if start <= o.time <= latest_allowed]
        return PatientData(
            observations=observations,
            facts=patient_facts(prefetch.resources, now),
            history=history,
            stats=stats,
            window_start=start,
            now=now,
            latest=latest_values(observations),
        )
