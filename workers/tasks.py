"""The Celery tasks: thin wrappers over ``workers.refresh`` with retry rules.

Transient failures (FHIR 5xx/429/timeouts, a token endpoint down, Redis down) are retried with
exponential backoff and jitter, capped below the broker's visibility timeout; a ``Retry-After``
the FHIR server sent is honoured up to the same cap. Task arguments carry pseudonyms only: the
broker is Redis, where no FHIR id may be in plain text.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from celery import Celery, Task

from cds_service.errors import DependencyUnavailable
from cds_service.settings import Settings
from fhir_adapters.errors import FhirUnavailable
from workers.runtime import RuntimeHolder, WorkerRuntime

TRANSIENT = (FhirUnavailable, DependencyUnavailable)


def register_tasks(app: Celery, runtimes: RuntimeHolder, settings: Settings) -> None:
    cap = int(app.conf.cds_retry_cap_s)
    retries = settings.worker.max_retries

    def backoff(task: Task[Any, Any], error: Exception) -> float:
        asked = getattr(error, "retry_after_s", None)
        if isinstance(asked, int | float) and asked > 0:
            return float(min(asked, cap))
        base = min(cap, 2 ** (task.request.retries + 1))
        return float(base / 2 + random.uniform(0, base / 2))  # noqa: S311 - jitter needs no secrecy

    def runtime() -> WorkerRuntime:
        current = runtimes.get()
        current.follow()
        return current

    @app.task(name="workers.census_refresh", bind=True, max_retries=retries)
    def census_refresh(self: Task[Any, Any]) -> int:
        try:
            due = runtime().run(runtimes.get().refresher.census())
        except TRANSIENT as error:
            raise self.retry(exc=error, countdown=backoff(self, error)) from error
        for p in due:
            patient_refresh.delay(p)
        return len(due)

    @app.task(name="workers.patient_refresh", bind=True, max_retries=retries)
    def patient_refresh(self: Task[Any, Any], pseudonym: str) -> dict[str, object] | None:
        try:
            result = runtime().run(runtimes.get().refresher.refresh(pseudonym))
        except TRANSIENT as error:
            raise self.retry(exc=error, countdown=backoff(self, error)) from error
        if result is None:
            return None
        return {"fetched": result.fetched, "added": result.added, "risk": result.risk}

    @app.task(name="workers.census_rescore", bind=True, max_retries=retries)
    def census_rescore(self: Task[Any, Any]) -> int:
        try:
            return runtime().run(runtimes.get().refresher.rescore())
        except TRANSIENT as error:
            raise self.retry(exc=error, countdown=backoff(self, error)) from error

    @app.task(name="workers.drift_check", bind=True, max_retries=1)
    def drift_check(self: Task[Any, Any]) -> dict[str, Any]:
        """The drift monitor's run: figures per shown version, and the action they call for.
        One retry only: the next scheduled run reads the same window anyway."""
        try:
            result = runtime().run(runtimes.get().monitor.check(datetime.now(UTC)))
        except TRANSIENT as error:
            raise self.retry(exc=error, countdown=backoff(self, error)) from error
        if result.actions:
            runtimes.get().changed_state()
        return {
            "snapshots": [s.model_dump(mode="json") for s in result.snapshots],
            "actions": [a.model_dump(mode="json", exclude_none=True) for a in result.actions],
        }
