"""No token, identifier or payload reaches a log line; CORS preflight for browser clients."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from support import EhrKey, FhirTestServer, LiveApi

pytestmark = pytest.mark.integration

FHIR_TOKEN = "fhir-access-token-never-logged"
PATIENT = "patient-id-never-logged"


def test_logs_carry_no_token_identifier_or_payload(
    start_api: Callable[..., LiveApi],
    fhir_server: FhirTestServer,
    es_key: EhrKey,
    http: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fhir_server.routes.clear()
    fhir_server.routes["Observation?"] = lambda path: (500, {"resourceType": "OperationOutcome"})
    api = start_api(fhir={"allowed_servers": [fhir_server.url]})
    body = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": fhir_server.url,
        "fhirAuthorization": {
            "access_token": FHIR_TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds",
        },
        "context": {"userId": "Practitioner/example", "patientId": PATIENT},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": PATIENT, "name": [{"family": "Doe"}]}
        },
    }
    url = f"{api.url}/cds-services/sepsis-patient-view"
    jwt = es_key.token(url)
    with caplog.at_level(logging.DEBUG):
        response = http.post(url, json=body, headers={"Authorization": f"Bearer {jwt}"})
        assert response.status_code == 412  # vitals could not be fetched: warnings were logged
        bad = http.post(
            url, json={**body, "hook": "nope"}, headers={"Authorization": f"Bearer {jwt}"}
        )
        assert bad.status_code == 401  # replayed jti
    fhir_server.routes.clear()
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert "could not be fetched" in logged
    for secret in (FHIR_TOKEN, PATIENT, jwt, "Doe", es_key.iss):
        assert secret not in logged, secret


def test_request_id_is_echoed_when_safe_and_made_otherwise(
    api: LiveApi, http: httpx.Client
) -> None:
    given = http.get(f"{api.url}/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    unsafe = http.get(f"{api.url}/healthz", headers={"X-Request-ID": "a b;Patient/1"})
    assert unsafe.headers["x-request-id"] != "a b;Patient/1"
    assert len(unsafe.headers["x-request-id"]) == 32


@pytest.fixture(scope="module")
def browser_api(start_api: Callable[..., LiveApi]) -> LiveApi:
    return start_api(cors_allow_origins=["https://sandbox.cds-hooks.org"])


@pytest.mark.parametrize(
    "path",
    [
        "/cds-services",
        "/cds-services/sepsis-patient-view",
        "/cds-services/sepsis-patient-view/feedback",
    ],
)
def test_cors_preflight_is_answered_for_allowed_origins(
    browser_api: LiveApi, http: httpx.Client, path: str
) -> None:
    preflight = {
        "Origin": "https://sandbox.cds-hooks.org",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    response = http.options(f"{browser_api.url}{path}", headers=preflight)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    stranger = http.options(
        f"{browser_api.url}{path}", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in stranger.headers


def test_no_cors_unless_configured(api: LiveApi, http: httpx.Client) -> None:
    response = http.get(
        f"{api.url}/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"}
    )
    assert "access-control-allow-origin" not in response.headers
