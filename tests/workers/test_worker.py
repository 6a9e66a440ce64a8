"""A real Celery worker process consuming from the real Redis broker (no eager mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from celery import Celery

from cds_service.redis_server import EmbeddedRedis
from cds_service.settings import Settings
from workers.celery_app import create_celery_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(redis_server: EmbeddedRedis) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "CDS_REDIS_URL": redis_server.url, "CDS_ENVIRONMENT": "development"}
    args = [
        sys.executable, "-m", "celery", "-A", "workers.main", "worker",
        "--concurrency=1", "--loglevel=WARNING", "--without-gossip", "--without-mingle",
        "--hostname=test-worker@%h",
    ]  # fmt: skip
    process = subprocess.Popen(args, env=env, start_new_session=True)
    yield process
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def celery_client(redis_server: EmbeddedRedis) -> Iterator[Celery]:
    app = create_celery_app(Settings(environment="development", redis_url=redis_server.url))
    yield app
    app.close()


def test_ping_runs_in_the_worker_process(
    worker: subprocess.Popen[bytes], celery_client: Celery
) -> None:
    result = celery_client.send_task("workers.ping")
    assert result.get(timeout=60) == "pong"
    assert worker.poll() is None


def test_worker_configuration_is_safe_for_redelivery(celery_client: Celery) -> None:
    conf = celery_client.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
