"""Hook-call latency over real HTTP: a real redis-server and uvicorn on loopback, one client.

    .venv/bin/python bench/hook_latency.py [--calls 500] [--observations 200]

Tokens are minted before the clock starts, so the figures are the service's time (JWT check with
a Redis replay check, body parsing and validation, prefetch resolution) plus loopback HTTP.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from cds_service.redis_server import EmbeddedRedis, free_port
from cds_service.security.dev_keys import DEV_ISSUER, ensure_dev_keys
from cds_service.settings import TrustedIssuer


def request_body(observations: int) -> dict[str, Any]:
    entries = [
        {
            "resource": {
                "resourceType": "Observation",
                "id": f"obs-{i}",
                "status": "final",
                "category": [{"coding": [{"code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": "Patient/bench-1"},
                "effectiveDateTime": f"2026-11-30T{i % 24:02d}:00:00Z",
                "valueQuantity": {"value": 80 + i % 30, "unit": "/min", "code": "/min"},
            }
        }
        for i in range(observations)
    ]  # fmt: skip
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/bench", "patientId": "bench-1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "bench-1", "birthDate": "1960-01-01"},
            "vitals": {"resourceType": "Bundle", "type": "searchset", "entry": entries},
            "labs": None,
            "encounter": None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--observations", type=int, default=200)
    args = parser.parse_args()

    with EmbeddedRedis() as redis_server, tempfile.TemporaryDirectory() as keys_dir:
        keys, _ = ensure_dev_keys(Path(keys_dir))
        port = free_port()
        issuers = [TrustedIssuer(iss=DEV_ISSUER, jwks_path=keys.jwks_path).model_dump(mode="json")]
        env = {
            **os.environ,
            "CDS_ENVIRONMENT": "development",
            "CDS_REDIS_URL": redis_server.url,
            "CDS_PORT": str(port),
            "CDS_LOG_LEVEL": "WARNING",
            "CDS_JWT__ISSUERS": json.dumps(issuers),
        }
        # The API runs in its own process, as in production: a client thread in the same
        # interpreter would share its GIL and distort the figures.
        server = subprocess.Popen([sys.executable, "-m", "cds_service.cli", "serve"], env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.1)
            url = f"{base}/cds-services/sepsis-patient-view"
            body = httpx.Request("POST", url, json=request_body(args.observations)).content
            tokens = [keys.mint(url) for _ in range(args.calls + 20)]
            timings: list[float] = []
            with httpx.Client() as client:
                for i, token in enumerate(tokens):
                    headers = {
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json",
                    }
                    started = time.perf_counter()
                    response = client.post(url, content=body, headers=headers)
                    elapsed = time.perf_counter() - started
                    assert response.status_code == 200, response.text
                    if i >= 20:  # warm-up calls are not counted
                        timings.append(elapsed * 1000)
        finally:
            server.terminate()
            server.wait(timeout=20)

    timings.sort()
    quantile = statistics.quantiles(timings, n=100)
    print(
        f"{args.calls} calls, {args.observations} observations, {len(body) / 1024:.0f} KiB body: "
        f"p50 {quantile[49]:.2f} ms, p95 {quantile[94]:.2f} ms, p99 {quantile[98]:.2f} ms, "
        f"max {timings[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
