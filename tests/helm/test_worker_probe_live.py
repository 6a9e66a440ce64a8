"""The worker Deployment's command and probe, as rendered, run against a real worker and Redis."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chart_render import find, render

from cds_service.redis_server import EmbeddedRedis

pytestmark = pytest.mark.integration

POD_NAME = "sepsis-cds-worker-7d9f-abcde"
# A short probe timeout so that the negative case ends quickly.
VALUES = ("workers.livenessProbe.timeoutSeconds=10", "workers.concurrency=1")


def _worker_container() -> dict[str, object]:
    docs = render("minimal", *VALUES)
    return dict(
        find(docs, "Deployment", "sepsis-cds-worker")["spec"]["template"]["spec"]["containers"][0]
    )


def _environment(redis_url: str) -> dict[str, str]:
    docs = render("minimal", *VALUES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "REDIS_URL"}
    for name in ("sepsis-cds", "sepsis-cds-worker"):
        env.update(find(docs, "ConfigMap", name)["data"])
    env["CDS_PSEUDONYM_KEY"] = "live-probe-test-pseudonymisation-key-0123456789"
    env["REDIS_URL"] = redis_url
    env["POD_NAME"] = POD_NAME
    # `celery` as the image's PATH has it: the venv's bin folder.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def chart_worker(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    env = _environment(redis_server.url)
    command = [
        re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], str(a)) for a in _worker_container()["command"]
    ]
    assert command[0] == "celery"
    args = [sys.executable, "-m", *command]
    process = subprocess.Popen(
        args, env=env, cwd=tmp_path_factory.mktemp("worker"), start_new_session=True
    )
    yield env
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _probe(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    probe = _worker_container()["livenessProbe"]
    command = probe["exec"]["command"]
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_probe_passes_once_the_worker_is_up(
    chart_worker: dict[str, str], tmp_path: Path
) -> None:
    for _ in range(10):
        result = _probe(chart_worker, tmp_path)
        if result.returncode == 0:
            break
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"worker@{POD_NAME}" in result.stdout


def test_the_probe_fails_for_another_node(chart_worker: dict[str, str], tmp_path: Path) -> None:
    result = _probe({**chart_worker, "POD_NAME": "sepsis-cds-worker-gone"}, tmp_path)
    assert result.returncode != 0
