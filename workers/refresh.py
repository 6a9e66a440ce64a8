"""The workers' jobs as plain async code (``workers.tasks`` wraps them in Celery tasks).

* ``census``: the in-progress stays at the configured ICU locations → each patient registered in
  the cache (FHIR id encrypted) → the pseudonyms that are new or stale, to refresh.
* ``refresh``: a patient's Observations changed since the watermark, every page → canonical
  observations → merged into the timeline → the feature vector now (``feature_rows``, the hook
  call's own code) → a score → write-back when the patient crossed the alert level. The watermark
  is stored only after the merge succeeded, so a failed or killed refresh reads the same data
  again and the timeline (which stores an observation once) holds no duplicate.
* ``rescore``: every census patient's cached vector in one ORT batch per shown version.

Both follow the deployment (``cds_service.lifecycle``): each patient is scored by the version
whose cards they get (canary or active), the shadow scores beside it, and the drift counts,
alerts and patient time go to Redis for the drift monitor. Only the rescoring, which visits the
whole census at a fixed cadence, counts patient time (``rescore_interval_s`` per patient); both
count new alerts (a patient crossing the alert level), as the training's alert rate does. Stopped
cards stop the write-back too: the inputs they would rest on are in doubt.

All of it is idempotent: a task delivered twice merges nothing new and writes the same values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import numpy as np
from pydantic import SecretStr

from cds_service.features import LOOKBACK_HOURS, PatientContext
from cds_service.inference.registry import LoadedModel
from cds_service.lifecycle.follower import Deployment, ModelHolder
from cds_service.lifecycle.recorder import ScoredBatch, ScoreRecorder, ShadowPair
from cds_service.patient_facts import age_in_years
from cds_service.sepsis.assess import band_of, feature_rows
from cds_service.sepsis.assessment import RiskBand
from cds_service.sepsis.stay import icu_stay
from cds_service.settings import WorkerSettings
from cds_service.store.patients import CachedPatient, PatientCache, StayContext
from cds_service.store.timeline import TimelineStore
from fhir_adapters.client import FhirClient
from fhir_adapters.errors import FhirBadResponse
from fhir_adapters.observations import MappingStats, map_observations
from fhir_adapters.site_codes import CodeIndex
from fhir_adapters.smart_backend import BackendAuth
from workers.writeback import risk_assessment

log = logging.getLogger(__name__)

T = TypeVar("T")
#: An observation stamped later than this past the worker's clock is not merged as "now" data.
FUTURE_TOLERANCE = timedelta(minutes=5)
#: the write-back (a RiskAssessment in the EHR) is shown like this service's card: it stops with it
WRITEBACK = "sepsis-patient-view"


@dataclass(frozen=True)
class RefreshResult:
    fetched: int
    added: int
    risk: float | None
    wrote_back: bool


class Refresher:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        http: httpx.AsyncClient,
        auth: BackendAuth | None,
        timeline: TimelineStore,
        cache: PatientCache,
        models: ModelHolder,
        codes: CodeIndex,
        recorder: ScoreRecorder | None = None,
        timeout_s: float = 10.0,
        max_pages: int = 100,
    ) -> None:
        if settings.fhir_base_url is None:
            raise RuntimeError("CDS_WORKER__FHIR_BASE_URL is needed by the workers")
        self._settings = settings
        self._base = settings.fhir_base_url
        self._http = http
        self._auth = auth
        self._timeline = timeline
        self._cache = cache
        self._models = models
        self._codes = codes
        self._recorder = recorder
        self._timeout = timeout_s
        self._max_pages = max_pages

    async def _fhir(self, call: Callable[[FhirClient], Awaitable[T]]) -> T:
        """Run ``call`` with a client holding a current token; renew the token once on a 401."""
        for attempt in (1, 2):
            token: SecretStr | None = await self._auth.token() if self._auth else None
            # Retries inside the client are few and short: the task's own retry with backoff
            # handles long outages without holding a worker.
            client = FhirClient(
                self._http, self._base, token, self._timeout, self._max_pages, retries=2
            )
            try:
                return await call(client)
            except FhirBadResponse as error:
                if error.status != 401 or self._auth is None or token is None or attempt == 2:
                    raise
                log.info("FHIR server refused the token (401): renewing it")
                self._auth.invalidate(token)
        raise AssertionError("unreachable")  # pragma: no cover

    async def census(self, now: float | None = None) -> list[str]:
        """Register every stay at the census locations; the pseudonyms due for a refresh."""
        now = time.time() if now is None else now
        locations = self._settings.census_locations
        if not locations:
            return []
        query = f"Encounter?status=in-progress&location={','.join(locations)}&_count=100"
        bundle, _ = await self._fhir(lambda c: c.search(query))
        due: list[str] = []
        for entry in bundle.get("entry") or ():
            encounter = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(encounter, dict) or encounter.get("resourceType") != "Encounter":
                continue
            reference = (encounter.get("subject") or {}).get("reference", "")
            patient_id = reference.removeprefix("Patient/") if isinstance(reference, str) else ""
            stay = icu_stay(encounter, locations, require_icu=True)
            if not patient_id or "/" in patient_id or stay is None:
                continue
            cached = await self._cache.get(self._cache.pseudonym(patient_id))
            context = StayContext(
                encounter_id=stay.encounter_id,
                icu_start=stay.icu_start.isoformat(),
                unit=stay.unit,
                hospital_to_icu_hours=stay.hospital_to_icu_hours,
                age_years=cached.context.age_years if cached else None,
                sex=cached.context.sex if cached else None,
            )
            p = await self._cache.register(patient_id, context, now)
            stale = cached is None or cached.refreshed is None
            if cached is not None and cached.refreshed is not None:
                stale = now - cached.refreshed >= self._settings.stale_after_s
            if stale:
                due.append(p)
        return due

    async def _demographics(self, patient_id: str, context: StayContext) -> StayContext:
        if context.age_years is not None:
            return context
        patient = await self._fhir(lambda c: c.get(f"Patient/{patient_id}"))
        gender = patient.get("gender")
        return replace(
            context,
            age_years=age_in_years(patient, datetime.now(UTC)),
            sex=gender if gender in ("female", "male") else None,
        )

    async def refresh(self, p: str, now: datetime | None = None) -> RefreshResult | None:
        """Bring one census patient up to date; None when the patient is no longer cached."""
        now = now or datetime.now(UTC)
        cached = await self._cache.get(p)
        if cached is None:
            return None
        context = await self._demographics(cached.patient_id, cached.context)
        if context != cached.context:
            await self._cache.update_context(p, context)
        entries, watermark, _ = await self._fhir(
            lambda c: c.search_since(
                "Observation", {"patient": cached.patient_id, "_count": "100"}, cached.watermark
            )
        )
        stats = MappingStats()
        mapped = map_observations(
            [{"resourceType": "Bundle", "type": "searchset", "entry": entries}],
            stats,
            patient=cached.patient_id,
            index=self._codes,
        )
        start = now - timedelta(hours=LOOKBACK_HOURS)
        added, window = await self._timeline.merge_and_read(
            cached.patient_id, mapped, now, start, now + FUTURE_TOLERANCE
        )
        deployment = self._models.deployment
        model, _ = deployment.shown(p)
        features = None
        risk = None
        if context.age_years is not None and window:
            features = self._features(window, context, now)
        newest = max((o.time for o in window), default=None)
        await self._cache.save_refresh(p, watermark, features, newest, now.timestamp())
        wrote = False
        if features is not None and model is not None:
            rows = features[None, :]
            scores = model.predict(rows)
            risk = float(scores[0])
            alerted, wrote = await self._score(
                p,
                patient_id=cached.patient_id,
                context=context,
                risk=risk,
                model=model,
                was_above=cached.above,
                deployment=deployment,
                countable=self._countable(cached, context, now),
            )
            await self._record(
                deployment,
                [ScoredBatch(model, rows, scores, alerts=int(alerted), patients=(p,))],
                now,
            )
        return RefreshResult(len(entries), added, risk, wrote)

    async def _record(
        self, deployment: Deployment, batches: list[ScoredBatch], now: datetime
    ) -> None:
        if self._recorder is None:
            return
        shadow = deployment.shadow
        pairs = []
        for b in batches:
            if shadow is None or shadow.version == b.model.version or not len(b.rows):
                continue
            try:
                shadow_scores = shadow.predict(b.rows)
            except Exception as exc:  # the shadow must never cost the shown scores
                log.warning("shadow %s failed (%s)", shadow.version, type(exc).__name__)
                continue
            pairs.append(ShadowPair(b.model, shadow, b.rows, b.scores, shadow_scores, b.patients))
        await self._recorder.record(batches, now, pairs)

    def _features(self, window: list[Any], context: StayContext, now: datetime) -> Any:
        patient = PatientContext(
            age_years=context.age_years,
            sex=context.sex,
            icu_unit=context.unit,
            hospital_to_icu_hours=context.hospital_to_icu_hours,
        )
        icu_start = context.icu_start_time
        if now < icu_start:
            return None
        rows, _, _ = feature_rows(window, icu_start, patient, now)
        return rows[-1]

    async def _score(
        self,
        p: str,
        *,
        patient_id: str,
        context: StayContext,
        risk: float,
        model: LoadedModel,
        was_above: bool,
        deployment: Deployment,
        countable: bool = True,
    ) -> tuple[bool, bool]:
        """Save the score; write back on a crossing. Returns (a new alert, written back); a
        crossing that is not ``countable`` (see :meth:`_countable`) is no new alert."""
        above = band_of(risk, model) is RiskBand.HIGH
        crossed = above != was_above
        write = crossed and self._settings.writeback and deployment.cards_off(WRITEBACK) is None
        if write:
            resource = risk_assessment(
                p, patient_id=patient_id, encounter_id=context.encounter_id, risk=risk, model=model
            )
            search = {"identifier": resource["identifier"][0]["system"] + "|" + p}
            await self._fhir(lambda c: c.conditional_update(resource, search))
        await self._cache.save_score(p, risk, model.version, above if crossed else None)
        return crossed and above and countable, write

    def _countable(self, cached: CachedPatient, context: StayContext, now: datetime) -> bool:
        """Whether this patient's crossing now counts as a new alert for the drift monitor.

        A patient first scored mid-stay (the service or its cache just started, a transfer in)
        and already above the level crossed before the service saw them; counting it would read
        as a burst of alerts after every start (twice the validation rate in the simulation).
        A stay that began within the last rescoring interval and an hour is a new admission:
        its first hour counts, as training counts a stay's first positive hour."""
        if cached.scored:
            return True
        recent = timedelta(seconds=self._settings.rescore_interval_s) + timedelta(hours=1)
        return now - context.icu_start_time <= recent

    async def rescore(self, now: float | None = None) -> int:
        """Score every census patient's cached vector, one batch per shown version; returns the
        rows scored."""
        now = time.time() if now is None else now
        deployment = self._models.deployment
        if deployment.active is None:
            return 0
        seen = now - 3 * self._settings.census_interval_s
        vectors = await self._cache.features(await self._cache.census(seen))
        if not vectors:
            return 0
        groups: dict[str, tuple[LoadedModel, list[str]]] = {}
        for p in vectors:
            model, _ = deployment.shown(p)
            if model is not None:
                groups.setdefault(model.version, (model, []))[1].append(p)
        hours_each = self._settings.rescore_interval_s / 3600
        scored_at = datetime.fromtimestamp(now, UTC)
        batches = []
        for model, pseudonyms in groups.values():
            rows = np.vstack([vectors[p] for p in pseudonyms])
            risks = model.predict(rows)
            alerts = 0
            for p, risk in zip(pseudonyms, risks.tolist(), strict=True):
                cached = await self._cache.get(p)
                if cached is not None:
                    alerted, _ = await self._score(
                        p,
                        patient_id=cached.patient_id,
                        context=cached.context,
                        risk=risk,
                        model=model,
                        was_above=cached.above,
                        deployment=deployment,
                        countable=self._countable(cached, cached.context, scored_at),
                    )
                    alerts += alerted
            batches.append(
                ScoredBatch(
                    model,
                    rows,
                    risks,
                    alerts=alerts,
                    patient_hours=hours_each * len(rows),
                    patients=tuple(pseudonyms),
                )
            )
        await self._record(deployment, batches, scored_at)
        return sum(len(b.rows) for b in batches)
