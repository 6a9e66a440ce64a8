"""Past the in-flight limit a hook call gets an immediate 503 with Retry-After, not a queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from support import EhrKey, FhirTestServer, LiveApi, patient_view_request

pytestmark = pytest.mark.integration


def _reached(server: FhirTestServer) -> bool:
    return any("/Observation" in r.path for r in server.requests)


def test_calls_over_the_limit_are_shed_at_once(
    start_api: Callable[..., LiveApi], fhir_server: FhirTestServer, es_key: EhrKey
) -> None:
    api = start_api(max_hooks_in_flight=1, fhir={"allowed_servers": [fhir_server.url]})
    released = threading.Event()

    def slow_vitals(_: str) -> tuple[int, object]:
        released.wait(timeout=10)
        return 200, {"resourceType": "Bundle", "type": "searchset", "total": 0}

    fhir_server.routes.clear()
    fhir_server.requests.clear()  # the server is shared by the session's tests
    fhir_server.routes["Observation?"] = slow_vitals
    url = f"{api.url}/cds-services/deterioration-patient-view"
    slow = patient_view_request()
    del slow["prefetch"]["vitals"]  # fetched from the slow server: the call stays in flight
    slow["fhirServer"] = fhir_server.url
    slow["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "patient/*.read",
        "subject": "cds",
    }
    results: dict[str, int] = {}

    def first() -> None:
        with httpx.Client(timeout=20) as client:
            auth = {"Authorization": f"Bearer {es_key.token(url)}"}
            results["first"] = client.post(url, json=slow, headers=auth).status_code

    thread = threading.Thread(target=first)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not _reached(fhir_server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _reached(fhir_server), "the first call never reached the FHIR server"
        with httpx.Client(timeout=5) as client:
            auth = {"Authorization": f"Bearer {es_key.token(url)}"}
            shed = client.post(url, json=patient_view_request(), headers=auth)
            assert shed.status_code == 503
            assert shed.headers["retry-after"] == "1"
            assert shed.json()["issue"][0]["code"] == "throttled"
            assert "cds_hooks_shed_total 1.0" in client.get(f"{api.url}/metrics").text
    finally:
        released.set()
        thread.join(timeout=20)
        fhir_server.routes.clear()
    assert results["first"] == 200
    with httpx.Client(timeout=5) as client:
        auth = {"Authorization": f"Bearer {es_key.token(url)}"}
        assert client.post(url, json=patient_view_request(), headers=auth).status_code == 200
