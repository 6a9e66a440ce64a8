"""Registry operations: promote through the gates, roll back, withdraw, stop, kill, resume.

The one implementation behind the admin API, its CLI and the drift monitor's automatic actions.
Promotion follows shadow → canary → active; the gates are checked on the two steps that put a
version's cards in front of clinicians (canary, active). Every change, and every refusal, is an
audit event with the actor, the reason and the figures.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cds_service.catalogue import SERVICES
from cds_service.inference.registry import (
    Device,
    Manifest,
    ModelRefused,
    find_version,
    load_version,
    read_manifest,
)
from cds_service.lifecycle.audit import LIFECYCLE_STREAM, Action, AuditTrail, LifecycleEvent
from cds_service.lifecycle.gates import GateResult, check_gates
from cds_service.lifecycle.policy import Policy
from cds_service.lifecycle.state import (
    DeploymentState,
    LifecycleRefused,
    LifecycleStore,
    Stop,
)

Role = Literal["shadow", "canary", "active"]
SERVICE_IDS = frozenset(s.id for s in SERVICES)


def seed_state(manifest: Manifest, model: str) -> DeploymentState:
    """The state before any change: the manifest's active version, nothing else."""
    return DeploymentState(model=model, active=manifest.active)


class Operations:
    def __init__(
        self,
        store: LifecycleStore,
        audit: AuditTrail,
        root: Path,
        policy: Policy,
        device: Device = "cpu",
    ) -> None:
        self._store = store
        self._audit = audit
        self._root = root
        self._policy = policy
        self._device = device

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def model(self) -> str:
        return self._store.model

    @property
    def root(self) -> Path:
        return self._root

    def manifest(self) -> Manifest:
        return read_manifest(self._root)

    async def state(self) -> DeploymentState:
        stored = await self._store.read()
        return stored if stored is not None else seed_state(self.manifest(), self._store.model)

    def _event(
        self, action: Action, actor: str, reason: str, now: datetime, **rest: Any
    ) -> LifecycleEvent:
        return LifecycleEvent(
            at=now, actor=actor, action=action, model=self._store.model, reason=reason, **rest
        )

    async def _change(self, mutate: Any, now: datetime) -> tuple[DeploymentState, LifecycleEvent]:
        try:
            return await self._store.change(
                seed_state(self.manifest(), self._store.model), mutate, now
            )
        except LifecycleRefused as refused:
            if refused.event is not None:
                await self._audit.append(LIFECYCLE_STREAM, refused.event, now)
            raise

    async def promote(
        self, version: str, to: Role, actor: str, reason: str, now: datetime
    ) -> tuple[DeploymentState, LifecycleEvent]:
        manifest = self.manifest()

        def refuse(why: str, figures: dict[str, Any] | None = None) -> LifecycleRefused:
            event = self._event(
                "promote-refused", actor, reason, now, version=version, to_role=to,
                figures={"refused": why, **(figures or {})},
            )  # fmt: skip
            return LifecycleRefused(why, event)

        try:
            gate = await self._admissible(version, to, manifest, refuse)
        except LifecycleRefused as refused:
            if refused.event is not None:
                await self._audit.append(LIFECYCLE_STREAM, refused.event, now)
            raise
        figures: dict[str, Any] = {"gates": gate.figures} if gate else {}

        def mutate(state: DeploymentState) -> LifecycleEvent:
            role = state.role_of(version)
            if version in state.withdrawn:
                raise refuse("was withdrawn (rolled back); register a corrected version", None)
            if role == "active":
                raise refuse("is already active", None)
            needed = {"shadow": None, "canary": "shadow", "active": "canary"}[to]
            if to != "shadow" and role != needed:
                raise refuse(f"must be {needed} before {to} (it is {role or 'not deployed'})", None)
            if to == "shadow":
                if state.canary == version:
                    state.canary = None
                state.shadow = version
            elif to == "canary":
                state.shadow, state.canary = None, version
            else:
                if state.active is not None:
                    state.previous.append(state.active)
                state.active, state.canary = version, None
            return self._event(
                "promote", actor, reason, now, version=version, from_role=role, to_role=to,
                figures=figures,
            )  # fmt: skip

        return await self._change(mutate, now)

    async def _admissible(
        self,
        version: str,
        to: Role,
        manifest: Manifest,
        refuse: Callable[[str, dict[str, Any] | None], LifecycleRefused],
    ) -> GateResult | None:
        """The checks that need no state: registered, through the gates, loadable."""
        try:
            entry = find_version(manifest, version)
        except ModelRefused as exc:
            raise refuse(str(exc), None) from exc
        gate = check_gates(entry, self._policy.gates) if to != "shadow" else None
        if gate is not None and not gate.passed:
            raise refuse("gates failed: " + "; ".join(gate.failures), {"gates": gate.figures})
        problem = await self._does_not_load(version, manifest)
        if problem is not None:
            raise refuse(problem, None)
        return gate

    async def _does_not_load(self, version: str, manifest: Manifest | None = None) -> str | None:
        """Why ``version`` would be refused by every process (files, features), or None.
        A state naming such a version leaves every process without a model: refuse it here."""
        try:
            await asyncio.to_thread(load_version, self._root, version, self._device, manifest)
        except ModelRefused as exc:
            return f"does not load: {exc}"
        return None

    async def rollback(
        self,
        actor: str,
        reason: str,
        now: datetime,
        figures: dict[str, Any] | None = None,
        expected: str | None = None,
    ) -> tuple[DeploymentState, LifecycleEvent]:
        """Back to the previous active version, if it still loads. ``expected``: only if that
        version is still the active one (the drift monitor judged it; a change since then must
        not be undone)."""
        current = await self.state()
        if current.previous:
            target = current.previous[-1]
            problem = await self._does_not_load(target)
            if problem is not None:
                event = self._event(
                    "rollback-refused", actor, reason, now, version=target,
                    figures={"refused": problem, **(figures or {})},
                )  # fmt: skip
                await self._audit.append(LIFECYCLE_STREAM, event, now)
                raise LifecycleRefused(f"{target} {problem}", event)

        def mutate(state: DeploymentState) -> LifecycleEvent:
            if expected is not None and state.active != expected:
                raise LifecycleRefused(f"{expected} is no longer active")
            if not state.previous:
                event = self._event(
                    "rollback-refused", actor, reason, now, version=state.active,
                    figures={"refused": "no previous active version", **(figures or {})},
                )  # fmt: skip
                raise LifecycleRefused("no previous active version to roll back to", event)
            withdrawn = state.active
            state.active = state.previous.pop()
            if withdrawn is not None:
                state.withdrawn.append(withdrawn)
            return self._event(
                "rollback", actor, reason, now, version=state.active, from_role=withdrawn,
                to_role="active", figures={"withdrawn": withdrawn, **(figures or {})},
            )  # fmt: skip

        return await self._change(mutate, now)

    async def withdraw_canary(
        self,
        actor: str,
        reason: str,
        now: datetime,
        figures: dict[str, Any] | None = None,
        expected: str | None = None,
    ) -> tuple[DeploymentState, LifecycleEvent]:
        def mutate(state: DeploymentState) -> LifecycleEvent:
            if state.canary is None:
                raise LifecycleRefused("no canary version")
            if expected is not None and state.canary != expected:
                raise LifecycleRefused(f"{expected} is no longer the canary")
            version, state.canary = state.canary, None
            state.withdrawn.append(version)
            return self._event(
                "withdraw", actor, reason, now, version=version, from_role="canary",
                figures=figures or {},
            )  # fmt: skip

        return await self._change(mutate, now)

    async def set_canary_share(
        self, share: float, actor: str, reason: str, now: datetime
    ) -> tuple[DeploymentState, LifecycleEvent]:
        if not 0 < share < 1:
            raise LifecycleRefused("the canary share is between 0 and 1")

        def mutate(state: DeploymentState) -> LifecycleEvent:
            before, state.canary_share = state.canary_share, share
            return self._event(
                "canary-share", actor, reason, now, version=state.canary,
                figures={"from": before, "to": share},
            )  # fmt: skip

        return await self._change(mutate, now)

    async def stop(
        self, actor: str, reason: str, now: datetime, figures: dict[str, Any] | None = None
    ) -> tuple[DeploymentState, LifecycleEvent]:
        """Stop the model's cards (every version would see a broken input)."""

        def mutate(state: DeploymentState) -> LifecycleEvent:
            if state.stopped is not None:
                raise LifecycleRefused("the cards are already stopped")
            state.stopped = Stop(reason=reason, at=now, actor=actor)
            return self._event(
                "stop", actor, reason, now, version=state.active, figures=figures or {}
            )

        return await self._change(mutate, now)

    async def resume(
        self, actor: str, reason: str, now: datetime
    ) -> tuple[DeploymentState, LifecycleEvent]:
        def mutate(state: DeploymentState) -> LifecycleEvent:
            if state.stopped is None:
                raise LifecycleRefused("the cards are not stopped")
            stopped, state.stopped = state.stopped, None
            return self._event(
                "resume", actor, reason, now, version=state.active,
                figures={"stopped_for": stopped.reason, "stopped_at": stopped.at.isoformat()},
            )  # fmt: skip

        return await self._change(mutate, now)

    async def kill(
        self, service: str, on: bool, actor: str, reason: str, now: datetime
    ) -> tuple[DeploymentState, LifecycleEvent]:
        """The kill switch of one CDS service: ``on`` stops its cards at once, ``off`` revives."""
        if service not in SERVICE_IDS:
            raise LifecycleRefused(f"no service {service!r}")

        def mutate(state: DeploymentState) -> LifecycleEvent:
            if on == (service in state.killed):
                raise LifecycleRefused(f"{service} is already {'off' if on else 'on'}")
            if on:
                state.killed[service] = Stop(reason=reason, at=now, actor=actor)
            else:
                del state.killed[service]
            return self._event("kill" if on else "revive", actor, reason, now, service=service)

        return await self._change(mutate, now)
