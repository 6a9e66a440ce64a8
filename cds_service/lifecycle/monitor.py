"""The drift monitor: judge each shown version's live counts, act, and keep the figures.

Run by the workers' beat every ``drift.check_interval_s``. For the active and the canary version
it sums the window's counts (``cds_service.drift.live``), computes the figures against the
version's reference and classifies them with the policy's thresholds. Then:

- inputs at ``act`` (a feature's distribution or missingness moved: a unit error, a feed gone
  silent) → the model's cards stop and an alert is raised. Every version would see the same
  inputs, so rolling back would not help;
- otherwise the active version's behaviour at ``act`` (its score distribution or alert rate) →
  roll back to the previous active version (stop the cards when there is none);
- otherwise the canary's behaviour at ``act`` → withdraw the canary.

Each action is an audit event carrying the figures. Each check's headline figures are kept per
version (``cds:drift:history:{version}``, the newest 500) for the monitoring page's plots.
A stop is lifted only by a person (``resume``): inputs that recover say nothing about why they
broke.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel
from redis.exceptions import LockError, RedisError

from cds_service.drift.live import LiveStats, report
from cds_service.drift.statistics import DriftReport, Level, Reference, Verdict, classify
from cds_service.errors import DependencyUnavailable
from cds_service.inference.registry import ModelRefused, verified_reference
from cds_service.lifecycle.audit import LIFECYCLE_STREAM, AuditTrail, LifecycleEvent
from cds_service.lifecycle.operations import Operations
from cds_service.lifecycle.policy import DriftPolicy
from cds_service.lifecycle.recorder import COUNTS_RETENTION
from cds_service.lifecycle.state import LifecycleRefused

log = logging.getLogger(__name__)

ACTOR = "drift-monitor"
LOCK_KEY = "cds:drift-monitor:lock"
LOCK_TIMEOUT_S = 120
HISTORY_PREFIX = "cds:drift-history"
HISTORY_LENGTH = 500
_ORDER: dict[Level, int] = {"ok": 0, "warn": 1, "act": 2}


class DriftSnapshot(BaseModel):
    """One check's headline figures for one version (what the page plots)."""

    at: datetime
    version: str
    role: str = "active"
    rows: int
    patient_hours: float
    score_psi: float
    max_feature_psi: float
    max_feature: str | None
    max_missing_delta: float
    alert_rate: float | None
    reference_alert_rate: float | None
    inputs: Level
    behaviour: Level


class CheckResult(BaseModel):
    snapshots: list[DriftSnapshot]
    actions: list[LifecycleEvent]


def snapshot(
    version: str, role: str, figures: DriftReport, verdict: Verdict, now: datetime
) -> DriftSnapshot:
    worst = max(figures.features.items(), key=lambda item: item[1].psi, default=None)
    return DriftSnapshot(
        at=now,
        version=version,
        role=role,
        rows=figures.rows,
        patient_hours=figures.patient_hours,
        score_psi=figures.score_psi,
        max_feature_psi=worst[1].psi if worst else 0.0,
        max_feature=worst[0] if worst else None,
        max_missing_delta=max((abs(f.missing_delta) for f in figures.features.values()), default=0),
        alert_rate=figures.alert_rate,
        reference_alert_rate=figures.reference_alert_rate,
        inputs=verdict.inputs,
        behaviour=verdict.behaviour,
    )


def event_figures(figures: DriftReport, verdict: Verdict, window_hours: int) -> dict[str, Any]:
    """What an audit event says about the breach: the window, the judged figures, the worst
    features (never a row: counts and figures only)."""
    flagged = sorted(
        (name for name, level in verdict.features.items() if level != "ok"),
        key=lambda name: (
            -max(figures.features[name].psi, abs(figures.features[name].missing_delta))
        ),
    )
    ratio = (
        figures.alert_rate / figures.reference_alert_rate
        if figures.alert_rate is not None and figures.reference_alert_rate
        else None
    )
    return {
        "window_hours": window_hours,
        "rows": figures.rows,
        "patient_hours": round(figures.patient_hours, 2),
        "score_psi": round(figures.score_psi, 4),
        "score_psi_level": verdict.score_psi,
        "alert_rate": figures.alert_rate,
        "reference_alert_rate": figures.reference_alert_rate,
        "alert_rate_ratio": ratio,
        "alert_rate_level": verdict.alert_rate,
        "inputs": verdict.inputs,
        "behaviour": verdict.behaviour,
        "features": {
            name: {
                "level": verdict.features[name],
                "psi": round(figures.features[name].psi, 4),
                "wasserstein": round(figures.features[name].wasserstein, 4),
                "missing_delta": round(figures.features[name].missing_delta, 4),
                "n": figures.features[name].n,
            }
            for name in flagged[:10]
        },
    }


class DriftMonitor:
    def __init__(
        self,
        redis: aioredis.Redis,
        operations: Operations,
        audit: AuditTrail,
        root: Path,
        policy: DriftPolicy,
    ) -> None:
        self._redis = redis
        self._ops = operations
        self._audit = audit
        self._root = root
        self._policy = policy
        self._references: dict[str, Reference] = {}

    def reference(self, version: str) -> Reference:
        if version not in self._references:
            self._references[version] = verified_reference(self._root, version)
        return self._references[version]

    async def figures(self, version: str, now: datetime) -> tuple[DriftReport, Verdict]:
        """The version's figures over the policy's window, and their levels."""
        reference = self.reference(version)
        live = LiveStats(self._redis, version, reference, COUNTS_RETENTION)
        counts = await live.window(self._policy.window_hours, now)
        figures = report(counts, reference)
        return figures, classify(figures, self._policy.thresholds())

    async def history(self, version: str) -> list[DriftSnapshot]:
        try:
            raw = await self._redis.lrange(f"{HISTORY_PREFIX}:{version}", 0, -1)
        except RedisError as exc:
            raise DependencyUnavailable("drift history unavailable: Redis unavailable") from exc
        return [DriftSnapshot.model_validate_json(item) for item in raw]

    async def _keep(self, snap: DriftSnapshot) -> DriftSnapshot | None:
        """Append ``snap`` to its version's history; returns the previous snapshot."""
        key = f"{HISTORY_PREFIX}:{snap.version}"
        pipe = self._redis.pipeline(transaction=True)
        pipe.lindex(key, -1)
        pipe.rpush(key, snap.model_dump_json())
        pipe.ltrim(key, -HISTORY_LENGTH, -1)
        try:
            previous, _, _ = await pipe.execute()
        except RedisError as exc:
            raise DependencyUnavailable("drift history unavailable: Redis unavailable") from exc
        return None if previous is None else DriftSnapshot.model_validate_json(previous)

    async def check(self, now: datetime) -> CheckResult:
        """One run. Overlapping runs (a backlog, a retry) would judge the same window twice and
        could act twice: a Redis lock lets one run at a time, the others return empty."""
        lock = self._redis.lock(LOCK_KEY, timeout=LOCK_TIMEOUT_S, blocking=False)
        try:
            if not await lock.acquire():
                return CheckResult(snapshots=[], actions=[])
        except RedisError as exc:
            raise DependencyUnavailable("drift monitor lock: Redis unavailable") from exc
        try:
            return await self._check(now)
        finally:
            try:
                await lock.release()
            except (RedisError, LockError):
                log.warning("drift monitor lock expired before the run ended")

    async def _check(self, now: datetime) -> CheckResult:
        state = await self._ops.state()
        judged: list[tuple[str, str, DriftReport, Verdict]] = []
        snapshots: list[DriftSnapshot] = []
        warnings: list[LifecycleEvent] = []
        for role, version in (("active", state.active), ("canary", state.canary)):
            if version is None:
                continue
            try:
                figures, verdict = await self.figures(version, now)
            except (ModelRefused, KeyError, ValueError) as exc:
                # One version whose reference cannot be read must not blind the others.
                log.error("drift check of %s skipped: %s", version, type(exc).__name__)
                continue
            snap = snapshot(version, role, figures, verdict, now)
            previous = await self._keep(snap)
            snapshots.append(snap)
            judged.append((role, version, figures, verdict))
            rose = [
                part
                for part in ("inputs", "behaviour")
                if getattr(snap, part) == "warn"
                and (previous is None or _ORDER[getattr(previous, part)] < _ORDER["warn"])
            ]
            if rose:
                warnings.append(
                    LifecycleEvent(
                        at=now,
                        actor=ACTOR,
                        action="drift-warn",
                        model=self._ops.model,
                        version=version,
                        from_role=role,
                        reason=f"{' and '.join(rose)} reached the warn level",
                        figures=event_figures(figures, verdict, self._policy.window_hours),
                    )
                )
        for event in warnings:
            await self._audit.append(LIFECYCLE_STREAM, event, now)
        actions = list(warnings)
        action = await self._act(judged, state.stopped is not None, bool(state.previous), now)
        if action is not None:
            actions.append(action)
        return CheckResult(snapshots=snapshots, actions=actions)

    async def _act(
        self,
        judged: list[tuple[str, str, DriftReport, Verdict]],
        stopped: bool,
        has_previous: bool,
        now: datetime,
    ) -> LifecycleEvent | None:
        try:
            event = await self._on_inputs(judged, stopped, now)
            if event is None:
                event = await self._on_behaviour(judged, stopped, has_previous, now)
        except LifecycleRefused as refused:
            log.warning("drift monitor could not act: %s", refused)
            return None
        if event is not None:
            log.error("drift monitor: %s (%s)", event.action, event.reason)
        return event

    async def _on_inputs(
        self, judged: list[tuple[str, str, DriftReport, Verdict]], stopped: bool, now: datetime
    ) -> LifecycleEvent | None:
        window = self._policy.window_hours
        active_inputs = any(r == "active" and v.inputs == "act" for r, _, _, v in judged)
        for role, version, figures, verdict in judged:
            if verdict.inputs != "act":
                continue
            details = event_figures(figures, verdict, window)
            if role == "canary" and not active_inputs:
                # Only the canary's inputs look wrong: its own reference (another training
                # population) is the likelier cause than the feed; the active one is fine.
                _, event = await self._ops.withdraw_canary(
                    ACTOR, f"canary {version}: its inputs are out of its reference's bounds",
                    now, details, expected=version,
                )  # fmt: skip
                return event
            if stopped:
                return None
            names = ", ".join(n for n, lv in verdict.features.items() if lv == "act")
            _, event = await self._ops.stop(
                ACTOR,
                f"inputs out of bounds for {version} ({role}): {names}; every version "
                "would see them, so the cards are stopped instead of rolled back",
                now,
                details,
            )
            return event
        return None

    async def _on_behaviour(
        self,
        judged: list[tuple[str, str, DriftReport, Verdict]],
        stopped: bool,
        has_previous: bool,
        now: datetime,
    ) -> LifecycleEvent | None:
        for role, version, figures, verdict in judged:
            if verdict.behaviour != "act":
                continue
            what = _behaviour(verdict)
            details = event_figures(figures, verdict, self._policy.window_hours)
            if role == "canary":
                _, event = await self._ops.withdraw_canary(
                    ACTOR, f"canary {version}: {what} at the act level", now, details,
                    expected=version,
                )  # fmt: skip
                return event
            if has_previous:
                try:
                    _, event = await self._ops.rollback(
                        ACTOR, f"{version}: {what} at the act level while its inputs hold",
                        now, details | {"rolled_back_from": version}, expected=version,
                    )  # fmt: skip
                    return event
                except LifecycleRefused as refused:
                    if refused.event is None:  # no longer active: nothing left to act on
                        raise
                    why = f"the previous version cannot be restored ({refused})"
            else:
                why = "no earlier version"
            if stopped:
                return None
            _, event = await self._ops.stop(
                ACTOR, f"{version}: {what} at the act level and {why}", now, details
            )
            return event
        return None


def _behaviour(verdict: Verdict) -> str:
    parts = []
    if verdict.score_psi == "act":
        parts.append("score distribution (PSI)")
    if verdict.alert_rate == "act":
        parts.append("alert rate")
    return " and ".join(parts) or "behaviour"
