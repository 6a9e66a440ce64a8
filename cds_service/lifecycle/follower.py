"""What each process scores with: the deployment state, followed each polling interval.

``ModelHolder.deployment`` is an immutable snapshot (active, shadow and canary models, stops,
kill switches); readers take it once per call or batch, so a change never mixes two states in one
answer. ``apply`` loads only verified versions. When the state names an active version that does not
load here, the process runs no active model (no sepsis card, ``/readyz`` not ready) rather than
the one it ran before, which after a rollback would be the very version withdrawn; a shadow or
canary that does not load is simply left out. ``cds_lifecycle_applied`` says which it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cds_service.errors import DependencyUnavailable
from cds_service.inference.registry import (
    Device,
    LoadedModel,
    ModelRefused,
    load_version,
    read_manifest,
)
from cds_service.lifecycle.state import DeploymentState, LifecycleStore, Stop
from cds_service.metrics import Metrics

log = logging.getLogger(__name__)

ShownRole = Literal["active", "canary"]
#: the services whose cards come from the sepsis model (the drift monitor's stop applies to them)
SEPSIS_SERVICE_PREFIX = "sepsis-"


def canary_bucket(canary: str, pseudonym: str) -> float:
    """A stable number in [0, 1) per patient and canary version: the patient gets the canary's
    cards when it is below the share. Keyed by version, so each canary gets a fresh sample."""
    digest = hashlib.sha256(f"{canary}\x00{pseudonym}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Deployment:
    state: DeploymentState | None = None
    active: LoadedModel | None = None
    shadow: LoadedModel | None = None
    canary: LoadedModel | None = None

    @property
    def revision(self) -> int:
        return self.state.revision if self.state else -1

    @property
    def identity(self) -> tuple[str, int]:
        """(lineage, revision): revisions restart when Redis loses the state, lineages do not."""
        return (self.state.lineage, self.state.revision) if self.state else ("", -1)

    def shown(self, pseudonym: str) -> tuple[LoadedModel | None, ShownRole]:
        """The model whose cards this patient gets, and in which role."""
        canary, state = self.canary, self.state
        if canary and state and canary_bucket(canary.version, pseudonym) < state.canary_share:
            return canary, "canary"
        return self.active, "active"

    def cards_off(self, service_id: str) -> tuple[str, Stop] | None:
        """Why ``service_id`` shows no card now: ('killed', ...) or ('stopped', ...), or None."""
        if self.state is None:
            return None
        killed = self.state.killed.get(service_id)
        if killed is not None:
            return "killed", killed
        if self.state.stopped is not None and service_id.startswith(SEPSIS_SERVICE_PREFIX):
            return "stopped", self.state.stopped
        return None


@dataclass
class ModelHolder:
    """The deployment in use by this process."""

    root: Path
    device: Device
    metrics: Metrics
    deployment: Deployment = field(default_factory=Deployment)
    #: why the last load of the active version failed, for /readyz (a fixed label)
    last_refusal: str | None = None
    #: the shared state has been read at least once (a process is not ready before)
    followed: bool = False

    @property
    def current(self) -> LoadedModel | None:
        """The active model (what every patient outside the canary gets)."""
        return self.deployment.active

    def load_active(self) -> LoadedModel | None:
        """Start-up: the manifest's active version, before the shared state has been read."""
        try:
            manifest = read_manifest(self.root)
        except ModelRefused as refused:
            self._refused("active", refused)
            self.last_refusal = refused.reason
            return None
        self.apply(DeploymentState(model="sepsis", revision=-1, active=manifest.active))
        return self.current if self.last_refusal is None else None

    def _refused(self, role: str, refused: ModelRefused) -> None:
        self.metrics.model_loads.labels(outcome=refused.reason).inc()
        log.error("%s model refused (%s): %s", role, refused.reason, refused)

    def _load(
        self, version: str | None, role: str, loaded: dict[str, LoadedModel]
    ) -> LoadedModel | None:
        if version is None:
            return None
        running = {
            m.version: m
            for m in (self.deployment.active, self.deployment.shadow, self.deployment.canary)
            if m is not None
        }
        if version in loaded:
            return loaded[version]
        model = running.get(version)
        if model is None:
            try:
                model = load_version(self.root, version, self.device)
            except ModelRefused as refused:
                self._refused(role, refused)
                if role == "active":
                    self.last_refusal = refused.reason
                return None
            self.metrics.model_loads.labels(outcome="loaded").inc()
            log.info("%s model %s loaded (%s on %s)", role, version, model.form, model.provider)
        loaded[version] = model
        return model

    def apply(self, state: DeploymentState) -> Deployment:
        """Load what ``state`` names (blocking: run it off the event loop) and swap it in."""
        loaded: dict[str, LoadedModel] = {}
        active = self._load(state.active, "active", loaded)
        if state.active is None:
            self.last_refusal = "no-active-version"
        elif active is not None:
            self.last_refusal = None
        else:
            # Fail closed: keeping the model that ran before would show cards from a version the
            # state no longer names (after a rollback, the very one withdrawn). No sepsis card
            # from this process, and /readyz not ready, until the named version loads.
            log.error("the active version %s does not load here: no sepsis cards", state.active)
        deployment = Deployment(
            state=state,
            active=active,
            shadow=self._load(state.shadow, "shadow", loaded),
            canary=self._load(state.canary, "canary", loaded),
        )
        self.deployment = deployment
        self.metrics.lifecycle_revision.set(state.revision)
        named = (state.active, state.shadow, state.canary)
        running = (deployment.active, deployment.shadow, deployment.canary)
        applied = all((v is None) == (m is None) for v, m in zip(named, running, strict=True))
        self.metrics.lifecycle_applied.set(1 if applied else 0)
        return deployment


async def poll(holder: ModelHolder, store: LifecycleStore) -> bool:
    """Read the shared state once; apply it when its revision changed. True when it did."""
    state = await store.read()
    holder.followed = True
    if state is None:
        # No stored state (never changed, or Redis lost its data): run what any process
        # starting now would run, the manifest's active version, so that all processes agree.
        if holder.deployment.revision == -1:
            return False
        await asyncio.to_thread(holder.load_active)
        return True
    if (state.lineage, state.revision) == holder.deployment.identity:
        return False
    await asyncio.to_thread(holder.apply, state)
    return True


async def follow(holder: ModelHolder, store: LifecycleStore, interval_s: float) -> None:
    """Poll forever (the API's background task); Redis outages keep the last state."""
    while True:
        try:
            await poll(holder, store)
        except DependencyUnavailable:
            log.warning(
                "lifecycle state unreadable; keeping revision %s", holder.deployment.revision
            )
        except Exception as exc:  # this loop must outlive any one bad read
            log.error("lifecycle state not applied (%s); retrying", type(exc).__name__)
        await asyncio.sleep(interval_s)
