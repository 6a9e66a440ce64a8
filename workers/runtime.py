"""The long-lived clients of one worker process, made once per process after the fork.

Celery's prefork pool forks children from the parent that imported the app; sockets, an event
loop or an ORT session made before the fork would be shared by every child. ``RuntimeHolder``
builds them lazily in the process that runs a task and rebuilds them if it finds itself in a new
process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import httpx
from cryptography.fernet import Fernet

from cds_service.errors import DependencyUnavailable
from cds_service.lifecycle.audit import AuditTrail
from cds_service.lifecycle.follower import ModelHolder, poll
from cds_service.lifecycle.monitor import DriftMonitor
from cds_service.lifecycle.operations import Operations
from cds_service.lifecycle.policy import load_policy
from cds_service.lifecycle.recorder import ScoreRecorder
from cds_service.lifecycle.state import LifecycleStore
from cds_service.metrics import Metrics
from cds_service.security.pseudonym import Pseudonymiser
from cds_service.settings import Settings
from cds_service.store.patients import PatientCache
from cds_service.store.redis_client import create_redis
from cds_service.store.timeline import TimelineStore
from fhir_adapters.site_codes import site_index
from fhir_adapters.smart_backend import BackendAuth
from fhir_adapters.variables import VARIABLES
from workers.refresh import Refresher

T = TypeVar("T")
log = logging.getLogger(__name__)


class WorkerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.redis = create_redis(settings)
        self.http = httpx.AsyncClient(follow_redirects=False)
        pseudonymiser = Pseudonymiser(settings.pseudonym_key)
        key = settings.worker.identifier_key
        cipher = Fernet(key.get_secret_value().encode()) if key else None
        retention = settings.timeline_retention_h * 3600
        self.cache = PatientCache(self.redis, pseudonymiser, cipher, retention)
        self.timeline = TimelineStore(self.redis, pseudonymiser, VARIABLES, retention_s=retention)
        metrics = Metrics()
        self.models = ModelHolder(settings.sepsis.model_root, settings.sepsis.device, metrics)
        self.models.load_active()
        self.audit = AuditTrail(
            self.redis,
            timedelta(days=settings.lifecycle.audit_retention_days),
            timedelta(days=settings.lifecycle.call_audit_retention_days),
        )
        self.lifecycle = LifecycleStore(self.redis, self.audit)
        policy = load_policy(settings.lifecycle.policy_file)
        root = settings.sepsis.model_root
        operations = Operations(self.lifecycle, self.audit, root, policy, settings.sepsis.device)
        self.monitor = DriftMonitor(self.redis, operations, self.audit, root, policy.drift)
        self._poll_interval = settings.lifecycle.poll_interval_s
        self._polled = -math.inf
        smart = settings.worker.smart
        auth = (
            BackendAuth(
                self.http,
                token_url=smart.token_url,
                client_id=smart.client_id,
                private_key_pem=smart.private_key_pem,
                alg=smart.alg,
                kid=smart.kid,
                scope=smart.scope,
            )
            if smart
            else None
        )
        self._refresher = (
            None
            if settings.worker.fhir_base_url is None
            else Refresher(
                settings.worker,
                http=self.http,
                auth=auth,
                timeline=self.timeline,
                cache=self.cache,
                models=self.models,
                codes=site_index(settings.site_maps),
                recorder=ScoreRecorder(self.redis, self.audit, metrics),
            )
        )

    @property
    def refresher(self) -> Refresher:
        if self._refresher is None:
            raise RuntimeError("CDS_WORKER__FHIR_BASE_URL is needed for census work")
        return self._refresher

    def changed_state(self) -> None:
        """This process changed the state itself (the drift monitor): read it at the next task."""
        self._polled = -math.inf

    def follow(self) -> None:
        """Read the deployment state when the last read is a polling interval old. Called as
        each task starts: a process scores only inside tasks, so an idle one has nothing to
        follow, and a busy one follows within one interval."""
        if time.monotonic() - self._polled < self._poll_interval:
            return
        try:
            self.run(poll(self.models, self.lifecycle))
        except DependencyUnavailable:
            log.warning("lifecycle state unreadable; keeping %s", self.models.deployment.revision)
            return
        except Exception as exc:  # a bad state must not fail every task
            log.error("lifecycle state not applied (%s)", type(exc).__name__)
            return
        self._polled = time.monotonic()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)


class RuntimeHolder:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._runtime: WorkerRuntime | None = None
        self._pid = 0

    def get(self) -> WorkerRuntime:
        if self._runtime is None or self._pid != os.getpid():
            self._runtime, self._pid = WorkerRuntime(self._settings), os.getpid()
        return self._runtime
