"""fhirAuthorization tokens go only to the fhirServer they came with, and only when allow-listed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from cds_service.security.fhir_allowlist import fhir_access_for
from cds_service.settings import FhirSettings

from support import Caller, EhrKey, FhirTestServer, LiveApi

pytestmark = pytest.mark.integration

TOKEN = "opaque-fhir-token-7f3a"
SERVICE = "/cds-services/sepsis-patient-view"


def observation(i: int) -> dict[str, Any]:
    return {"resource": {"resourceType": "Observation", "id": f"o{i}", "status": "final"}}


def request_for(fhir_url: str, prefetch: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": fhir_url,
        "fhirAuthorization": {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/Observation.read patient/Patient.read",
            "subject": "sepsis-cds",
            "patient": "p1",
        },
        "context": {"userId": "Practitioner/example", "patientId": "p1"},
        "prefetch": prefetch or {"patient": {"resourceType": "Patient", "id": "p1"}},
    }


def paged_prefetch(next_url: str) -> dict[str, Any]:
    """A prefetch whose vitals searchset has a second page at ``next_url``."""
    return {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "vitals": {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [observation(1)],
            "link": [{"relation": "next", "url": next_url}],
        },
        "labs": None,
        "encounter": None,
    }


@pytest.fixture
def other_server() -> Iterator[FhirTestServer]:
    server = FhirTestServer()
    yield server
    server.close()


@pytest.fixture
def ehr(fhir_server: FhirTestServer) -> Iterator[FhirTestServer]:
    fhir_server.routes.clear()
    fhir_server.requests.clear()
    fhir_server.routes.update(
        {
            "Observation?": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [observation(1)],
            },
            "Encounter?": {"resourceType": "Bundle", "type": "searchset", "total": 0},
        }
    )
    yield fhir_server
    fhir_server.routes.clear()


@pytest.fixture
def allowed_api(start_api: Callable[..., LiveApi], fhir_server: FhirTestServer) -> LiveApi:
    return start_api(fhir={"allowed_servers": [fhir_server.url]})


def test_server_not_allow_listed_is_never_contacted(caller: Caller, ehr: FhirTestServer) -> None:
    response = caller.post(SERVICE, request_for(ehr.url))
    assert response.status_code == 412
    assert ehr.requests == []
    assert TOKEN not in response.text


def test_allow_listed_server_gets_the_token_and_fills_the_gaps(
    allowed_api: LiveApi, es_key: EhrKey, http: httpx.Client, ehr: FhirTestServer
) -> None:
    response = Caller(allowed_api, es_key, http).post(SERVICE, request_for(ehr.url))
    assert response.status_code == 200, response.text
    paths = sorted(r.path.split("?")[0] for r in ehr.requests)
    assert paths == ["/fhir/Encounter", "/fhir/Observation", "/fhir/Observation"]  # vitals, labs
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in ehr.requests)
    assert all("patient=p1" in r.path for r in ehr.requests)
    metrics = http.get(f"{allowed_api.url}/metrics").text
    line = 'cds_prefetch_keys_total{key="vitals",service="sepsis-patient-view",source="fetched"}'
    assert line in metrics


def test_lookalike_server_urls_are_not_allow_listed(ehr: FhirTestServer) -> None:
    settings = FhirSettings(allowed_servers=["https://ehr.example.org/fhir"])
    token = None
    for url in [
        "https://ehr.example.org.attacker.net/fhir",
        "https://ehr.example.org/fhir-other",
        "https://ehr.example.org/fhir/../admin",
        "http://ehr.example.org/fhir",
        "https://ehr.example.org:8443/fhir",
        "https://user@ehr.example.org/fhir",
    ]:
        assert fhir_access_for(url, token, settings) is None, url
    for url in ["https://EHR.example.org/fhir/", "https://ehr.example.org/fhir"]:
        access = fhir_access_for(url, token, settings)
        assert access is not None and access.base_url == "https://ehr.example.org/fhir"


def test_next_link_to_another_server_is_not_followed(
    allowed_api: LiveApi,
    es_key: EhrKey,
    http: httpx.Client,
    ehr: FhirTestServer,
    other_server: FhirTestServer,
) -> None:
    prefetch = paged_prefetch(f"{other_server.url}/Observation?page=2")
    response = Caller(allowed_api, es_key, http).post(SERVICE, request_for(ehr.url, prefetch))
    assert response.status_code == 200
    assert other_server.requests == []
    assert ehr.requests == []
    metrics = http.get(f"{allowed_api.url}/metrics").text
    assert 'key="vitals",service="sepsis-patient-view",source="partial"' in metrics


def test_next_link_on_the_same_server_is_followed_with_the_token(
    allowed_api: LiveApi, es_key: EhrKey, http: httpx.Client, ehr: FhirTestServer
) -> None:
    ehr.routes["Observation?page=2"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [observation(2)],
    }
    prefetch = paged_prefetch(f"{ehr.url}/Observation?page=2")
    response = Caller(allowed_api, es_key, http).post(SERVICE, request_for(ehr.url, prefetch))
    assert response.status_code == 200
    assert [r.path for r in ehr.requests] == ["/fhir/Observation?page=2"]
    assert ehr.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("status", [500, 429, 403])
def test_fhir_server_failure_for_needed_data_is_412(
    allowed_api: LiveApi, es_key: EhrKey, http: httpx.Client, ehr: FhirTestServer, status: int
) -> None:
    ehr.routes["Observation?"] = lambda path: (status, {"resourceType": "OperationOutcome"})
    response = Caller(allowed_api, es_key, http).post(SERVICE, request_for(ehr.url))
    assert response.status_code == 412
    assert response.json()["issue"][0]["expression"] == ["prefetch.vitals"]


def test_prefetch_operation_outcome_is_refetched(
    allowed_api: LiveApi, es_key: EhrKey, http: httpx.Client, ehr: FhirTestServer
) -> None:
    prefetch = {
        "patient": {"resourceType": "Patient", "id": "p1"},
        "vitals": {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "timeout"}],
        },
        "labs": None,
        "encounter": None,
    }
    response = Caller(allowed_api, es_key, http).post(SERVICE, request_for(ehr.url, prefetch))
    assert response.status_code == 200
    assert [r.path.split("?")[0] for r in ehr.requests] == ["/fhir/Observation"]
    assert "category=vital-signs" in ehr.requests[0].path
