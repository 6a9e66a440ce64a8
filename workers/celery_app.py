"""The Celery app: Redis as broker and result backend, from the same Settings as the API.

Delivery: ``acks_late`` with ``reject_on_worker_lost`` — a task is acknowledged only when it has
finished, and one whose worker child died is put back; prefetch multiplier 1, so a dying worker
holds at most one unacknowledged task per child. The Redis transport redelivers an unacknowledged
task after its visibility timeout (``CDS_WORKER__VISIBILITY_TIMEOUT_S``; Redis's default is one
hour), so no countdown or ETA may exceed it: retries cap their backoff below it.

Beat: RedBeat keeps the schedule in Redis and holds a lock there, so a second beat process started
by mistake (two replicas, a rolling update) waits instead of sending every task twice.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import task_failure, task_retry, task_success

from cds_service.lifecycle.policy import load_policy
from cds_service.settings import Settings
from workers.runtime import RuntimeHolder
from workers.tasks import register_tasks

#: Redis hash of task outcome counts, read by the API's /metrics (prefork children cannot share
#: an in-process registry).
TASK_COUNTS = "cds:worker:tasks"


def create_celery_app(settings: Settings) -> Celery:
    if settings.redis_url is None:
        raise RuntimeError("the worker needs Redis: set REDIS_URL (or CDS_REDIS_URL)")
    url = settings.redis_url.get_secret_value()
    worker = settings.worker
    policy = load_policy(settings.lifecycle.policy_file)
    app = Celery("cds_workers", broker=url, backend=url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=worker.task_time_limit_s,
        task_soft_time_limit=worker.task_time_limit_s * 0.8,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        # kombu sweeps for abandoned messages every interval x throttle seconds (10 x 10 by
        # default): one sweep per interval, at most half the visibility timeout, so a task
        # whose worker died comes back within about 1.5 visibility timeouts.
        broker_transport_options={
            "visibility_timeout": worker.visibility_timeout_s,
            "unacked_restore_interval": max(1, min(10, worker.visibility_timeout_s // 2)),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": worker.visibility_timeout_s},
        worker_hijack_root_logger=False,
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=url,
        redbeat_key_prefix="cds:redbeat:",
        # The lock outlives a beat's tick; a beat that dies releases it when it expires.
        redbeat_lock_timeout=max(30, int(min(worker.census_interval_s, 300))),
        beat_max_loop_interval=5,
        beat_schedule=_schedule(settings, policy.drift.check_interval_s),
    )
    app.conf.cds_retry_cap_s = min(worker.retry_backoff_max_s, worker.visibility_timeout_s // 2)

    @app.task(name="workers.ping")
    def ping() -> str:
        return "pong"

    register_tasks(app, RuntimeHolder(settings), settings)
    _count_outcomes(app)
    return app


def _schedule(settings: Settings, drift_check_s: float) -> dict[str, dict[str, Any]]:
    """The drift check always; the census jobs only where there is a FHIR server to read."""
    worker = settings.worker
    schedule: dict[str, dict[str, Any]] = {
        "drift-check": {"task": "workers.drift_check", "schedule": drift_check_s},
    }
    if worker.fhir_base_url is not None:
        schedule["census-refresh"] = {
            "task": "workers.census_refresh",
            "schedule": worker.census_interval_s,
        }
        schedule["census-rescore"] = {
            "task": "workers.census_rescore",
            "schedule": worker.rescore_interval_s,
        }
    return schedule


def _count_outcomes(app: Celery) -> None:
    def count(sender: Any, outcome: str) -> None:
        name = getattr(sender, "name", None) or "unknown"
        try:
            # The Redis result backend's own client: no extra connection pool per child.
            client = getattr(app.backend, "client")  # noqa: B009 - untyped attribute
            client.hincrby(TASK_COUNTS, f"{name}|{outcome}", 1)
        except Exception:  # a metric must never fail a task
            return

    task_success.connect(lambda sender=None, **_: count(sender, "done"), weak=False)
    task_failure.connect(lambda sender=None, **_: count(sender, "failed"), weak=False)
    task_retry.connect(lambda sender=None, **_: count(sender, "retried"), weak=False)
