"""The Celery app: Redis as broker and result backend, from the same Settings as the API.

Until the workers issue fills it, the app carries one task, ``workers.ping``, so that `make run` and
the integration tests can prove a real worker process consumes from the real broker.
"""

from __future__ import annotations

from celery import Celery

from cds_service.settings import Settings


def create_celery_app(settings: Settings) -> Celery:
    if settings.redis_url is None:
        raise RuntimeError("the worker needs Redis: set REDIS_URL (or CDS_REDIS_URL)")
    url = settings.redis_url.get_secret_value()
    app = Celery("cds_workers", broker=url, backend=url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=60,
        task_soft_time_limit=45,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name="workers.ping")
    def ping() -> str:
        return "pong"

    return app
