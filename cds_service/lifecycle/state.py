"""The deployment state of a model family in Redis, changed only together with its audit event.

``cds:lifecycle:{model}`` holds one JSON document: which registered version is active, which are
shadow and canary, the earlier active versions (for rollback), whether the model's cards are
stopped, and which services have their kill switch on. Every API and worker process reads it
each polling interval (``cds_service.lifecycle.follower``); only :meth:`LifecycleStore.change`
writes it, in a WATCH/MULTI transaction that also appends the audit event, so no change is ever
applied without its event or recorded without being applied.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from uuid import uuid4

import redis.asyncio as aioredis
from pydantic import BaseModel, Field
from redis.exceptions import RedisError, WatchError

from cds_service.errors import DependencyUnavailable
from cds_service.lifecycle.audit import LIFECYCLE_STREAM, AuditTrail, LifecycleEvent

STATE_PREFIX = "cds:lifecycle"
#: counts of lifecycle actions per model family, field = action (exported on /metrics)
ACTIONS_PREFIX = "cds:lifecycle-actions"
#: the sepsis services share one model family (the NEWS2 service has no model, only a kill switch)
SEPSIS_MODEL = "sepsis"


class Stop(BaseModel):
    """Why cards are not shown: who (or the drift monitor) stopped them, when, on what figures."""

    reason: str
    at: datetime
    actor: str


class DeploymentState(BaseModel):
    model: str
    lineage: str = Field(
        default="", description="random id of this history: revisions restart if Redis loses it"
    )
    revision: int = 0
    active: str | None
    previous: list[str] = Field(
        default_factory=list, description="earlier active versions, the newest last"
    )
    shadow: str | None = None
    canary: str | None = None
    canary_share: float = Field(default=0.1, gt=0, lt=1)
    stopped: Stop | None = None
    killed: dict[str, Stop] = Field(default_factory=dict)
    withdrawn: list[str] = Field(
        default_factory=list, description="versions rolled back or withdrawn by the monitor"
    )
    changed: datetime | None = None

    def role_of(self, version: str) -> str | None:
        if version == self.active:
            return "active"
        if version == self.canary:
            return "canary"
        if version == self.shadow:
            return "shadow"
        return None


class LifecycleRefused(Exception):
    """A change the state or the policy does not allow; the message says why."""

    def __init__(self, message: str, event: LifecycleEvent | None = None) -> None:
        super().__init__(message)
        #: the refusal's own audit event (refusals are audited too)
        self.event = event


Mutation = Callable[[DeploymentState], LifecycleEvent]


class LifecycleStore:
    def __init__(self, redis: aioredis.Redis, audit: AuditTrail, model: str = SEPSIS_MODEL) -> None:
        self._redis = redis
        self._audit = audit
        self.model = model

    @property
    def key(self) -> str:
        return f"{STATE_PREFIX}:{self.model}"

    async def read(self) -> DeploymentState | None:
        """The stored state, or None before the first change (the manifest's active is used)."""
        try:
            raw = await self._redis.get(self.key)
        except RedisError as exc:
            raise DependencyUnavailable("lifecycle state unavailable: Redis unavailable") from exc
        return None if raw is None else DeploymentState.model_validate_json(raw)

    async def change(
        self, seed: DeploymentState, mutate: Mutation, now: datetime
    ) -> tuple[DeploymentState, LifecycleEvent]:
        """Apply ``mutate`` to the current state (``seed`` when none is stored) and append the
        event it returns, atomically. ``mutate`` edits the copy it is given, or raises
        :class:`LifecycleRefused`; it is re-run if another process changed the state meanwhile."""
        for _ in range(20):
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(self.key)
                    raw = await pipe.get(self.key)
                    current = seed if raw is None else DeploymentState.model_validate_json(raw)
                    state = current.model_copy(deep=True)
                    if raw is None:
                        state.lineage = uuid4().hex
                    event = mutate(state)
                    state.revision = current.revision + 1
                    state.changed = now
                    event = event.model_copy(update={"revision": state.revision})
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(self.key, state.model_dump_json())
                    self._audit.add(pipe, LIFECYCLE_STREAM, event, now)
                    pipe.hincrby(f"{ACTIONS_PREFIX}:{self.model}", event.action, 1)
                    await pipe.execute()
                    return state, event
            except WatchError:
                continue
            except RedisError as exc:
                raise DependencyUnavailable(
                    "lifecycle state unavailable: Redis unavailable"
                ) from exc
        raise DependencyUnavailable("lifecycle state changed too often to apply the change")
