"""`make run`: a private redis-server (unless REDIS_URL is set), one Celery worker and the API.

Each child runs in its own session, so Ctrl-C reaches only this supervisor, which then stops every
child's whole process group (Celery's pool children included) and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import httpx

from cds_service.redis_server import EmbeddedRedis
from cds_service.security.dev_keys import DEV_ISSUER, ensure_dev_keys
from cds_service.settings import Settings, TrustedIssuer

SHARED_EXAMPLE = Path("../shared/cds-hooks/request-patient-view-sandbox-captured.json")
OWN_EXAMPLE = Path(__file__).parent / "examples" / "patient-view.json"

_BANNER = """
################################################################################
#  DEVELOPMENT MODE: this service trusts a local signing key that stands in for #
#  an EHR ({kid}).
#  Anyone holding {key} can call it.
#  Never use these keys, or CDS_ENVIRONMENT=development, with patient data.    #
################################################################################
"""


def _say(message: str) -> None:
    print(message, flush=True)


def _stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the child's process group, SIGKILL what is left after the grace period."""
    with contextlib.suppress(ProcessLookupError):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace_s)
    # The leader may be gone while its group still holds pool children.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _wait_ready(url: str, processes: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError("a child process exited during start-up (see its output above)")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready in {timeout_s:.0f} s")


def _ping_worker(redis_url: str, timeout_s: float) -> None:
    from workers.celery_app import create_celery_app  # noqa: PLC0415 - the API never needs Celery

    app = create_celery_app(Settings(environment="development", redis_url=redis_url))
    try:
        reply = app.send_task("workers.ping").get(timeout=timeout_s)
    finally:
        app.close()
    if reply != "pong":
        raise RuntimeError(f"the worker answered {reply!r} to ping")


def fire_command(base_url: str, keys_dir: Path, cli: Path) -> str:
    example = SHARED_EXAMPLE.resolve() if SHARED_EXAMPLE.exists() else OWN_EXAMPLE
    url = f"{base_url}/cds-services/sepsis-patient-view"
    mint = f"{shlex.quote(str(cli))} mint-token --keys-dir {shlex.quote(str(keys_dir))} --aud {url}"
    return (
        f"curl -sS --fail-with-body -X POST {url} -H 'Content-Type: application/json' "
        f'-H "Authorization: Bearer $({mint})" --data @{shlex.quote(str(example))}'
    )


def run_dev(state_dir: Path = Path(".dev")) -> int:
    settings = Settings(environment="development")
    keys, created = ensure_dev_keys(state_dir.resolve() / "keys")
    _say(_BANNER.format(kid=keys.kid, key=keys.private_key_path))
    if created:
        _say(f"Created the development key pair in {keys.private_key_path.parent}")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    embedded: EmbeddedRedis | None = None
    children: list[subprocess.Popen[bytes]] = []
    try:
        if settings.redis_url is None:
            embedded = EmbeddedRedis().start()
            redis_url = embedded.url
            _say(f"Started a private redis-server on {redis_url} (no REDIS_URL configured)")
        else:
            redis_url = settings.redis_url.get_secret_value()
            _say("Using the configured REDIS_URL")
        issuers = [
            *settings.jwt.issuers,
            TrustedIssuer(iss=DEV_ISSUER, jwks_path=keys.jwks_path),
        ]
        env = {
            **os.environ,
            "CDS_ENVIRONMENT": "development",
            "CDS_REDIS_URL": redis_url,
            "CDS_JWT__ISSUERS": json.dumps([i.model_dump(mode="json") for i in issuers]),
            "CDS_LOG_JSON": os.environ.get("CDS_LOG_JSON", "false"),
        }
        python = sys.executable
        worker_args = [
            python, "-m", "celery", "-A", "workers.main", "worker",
            "--loglevel=INFO", "--concurrency=1", "--hostname=dev-worker@%h",
            "--without-gossip", "--without-mingle",
            # the beat inside the worker: the drift monitor's checks (and the census jobs when
            # a FHIR server is configured) run in development too
            "--beat",
        ]  # fmt: skip
        children.append(subprocess.Popen(worker_args, env=env, start_new_session=True))
        api_args = [python, "-m", "cds_service.cli", "serve"]
        children.append(subprocess.Popen(api_args, env=env, start_new_session=True))

        base_url = settings.base_url
        _wait_ready(f"http://{settings.host}:{settings.port}/readyz", children, timeout_s=60)
        _ping_worker(redis_url, timeout_s=60)
        cli = Path(sys.executable).parent / "cds-service"
        _say(
            "\nReady.\n"
            f"  Discovery:  {base_url}/cds-services\n"
            "  Fire the patient-view example with a fresh JWT (paste into a shell):\n\n"
            f"FIRE: {fire_command(base_url, keys.private_key_path.parent, cli)}\n\n"
            "Ctrl-C stops the API, the worker and Redis.\n"
        )
        while not stop.wait(0.5):
            if any(p.poll() is not None for p in children):
                _say("A child process exited; stopping everything.")
                return 1
        return 0
    except (RuntimeError, TimeoutError, OSError) as exc:
        _say(f"make run failed: {exc}")
        return 1
    finally:
        for child in reversed(children):
            _stop_group(child, grace_s=10)
        if embedded is not None:
            embedded.stop()
        _say("Stopped.")
