"""The public CDS Hooks examples against the running service over HTTP (real uvicorn and Redis)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from cds_validator import validate_discovery, validate_response
from support import CDS_EXAMPLES, SHARED_MISSING, Caller, FhirTestServer, LiveApi, load_example

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CDS_EXAMPLES.is_dir(), reason=SHARED_MISSING),
]

SERVICE_FOR_HOOK = {
    "patient-view": ["sepsis-patient-view", "deterioration-patient-view"],
    "order-select": ["sepsis-order-select"],
    "order-sign": ["sepsis-order-sign"],
    "encounter-start": ["sepsis-encounter-start"],
    "encounter-discharge": ["sepsis-encounter-discharge"],
}

# What each top-level request gets from a service that may contact no FHIR server (none is
# allow-listed): 200 when the prefetch holds what the service needs, else 412 naming the key.
EXPECTED_WITHOUT_FHIR = {
    "request-patient-view-sandbox-captured.json": 200,  # Patient + an empty vitals Bundle
    "request-patient-view-prefetch-fhirauthorization.json": 412,  # only `patientToGreet`
    "request-order-select-r4-servicerequest.json": 412,  # no prefetch at all
    "request-order-select-r4-library-assembled.json": 412,
    "request-order-select-sandbox-captured.json": 412,
    "request-order-sign-sandbox-captured.json": 412,  # Patient but no vitals
    "request-order-sign-r4-prefetch-pagination.json": 412,  # `orders` only
    "request-encounter-start-prefetch-fhirauthorization-assembled.json": 412,
    "request-encounter-discharge-prefetch-fhirauthorization-assembled.json": 412,
}


def _requests() -> list[str]:
    if not CDS_EXAMPLES.is_dir():
        return []
    return sorted(p.name for p in CDS_EXAMPLES.glob("request-*.json"))


def _cases() -> list[tuple[str, str]]:
    return [
        (name, service)
        for name in _requests()
        for service in SERVICE_FOR_HOOK[load_example(name)["hook"]]
    ]


def test_every_shared_request_has_an_expectation() -> None:
    assert set(_requests()) == set(EXPECTED_WITHOUT_FHIR)


def test_discovery_lists_the_services_and_is_spec_valid(api: LiveApi, http: httpx.Client) -> None:
    response = http.get(f"{api.url}/cds-services")
    assert response.status_code == 200
    body = response.json()
    assert validate_discovery(body) == []
    ids = {s["id"]: s for s in body["services"]}
    assert set(ids) == {
        "sepsis-patient-view",
        "sepsis-order-select",
        "sepsis-order-sign",
        "sepsis-encounter-start",
        "sepsis-encounter-discharge",
        "deterioration-patient-view",
    }
    for service in ids.values():
        assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
        assert "category=vital-signs" in service["prefetch"]["vitals"]
        assert "_sort=-date" in service["prefetch"]["vitals"]
    assert ids["sepsis-encounter-discharge"]["hook"] == "encounter-discharge"
    assert "category=laboratory" in ids["sepsis-patient-view"]["prefetch"]["labs"]


@pytest.mark.parametrize(("name", "service"), _cases())
def test_shared_request_without_fhir_access(name: str, service: str, caller: Caller) -> None:
    request = load_example(name)
    response = caller.post(f"/cds-services/{service}", request)
    assert response.status_code == EXPECTED_WITHOUT_FHIR[name], response.text
    body = response.json()
    if response.status_code == 200:
        assert validate_response(body) == []
        assert body == {"cards": []}
    else:
        assert body["resourceType"] == "OperationOutcome"
        named = {e for issue in body["issue"] for e in issue["expression"]}
        missing = {"patient", "vitals"} - set(request.get("prefetch") or {})
        assert named == {f"prefetch.{key}" for key in missing}


@pytest.fixture
def open_fhir(fhir_server: FhirTestServer) -> Iterator[FhirTestServer]:
    """The FHIR test server serving an existing patient with no recent observations."""

    def patient(path: str) -> tuple[int, Any]:
        return 200, {"resourceType": "Patient", "id": path.split("/", 1)[1]}

    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    fhir_server.routes.clear()

    def encounter(path: str) -> tuple[int, Any]:
        return 200, {
            "resourceType": "Encounter",
            "id": path.split("/", 1)[1],
            "status": "in-progress",
        }

    fhir_server.routes.update(
        {"Patient/": patient, "Encounter/": encounter, "Observation?": empty, "Encounter?": empty}
    )
    fhir_server.requests.clear()
    yield fhir_server
    fhir_server.routes.clear()


@pytest.fixture
def api_with_fhir(
    start_api: Callable[..., LiveApi], fhir_server: FhirTestServer
) -> Iterator[LiveApi]:
    yield start_api(fhir={"allowed_servers": [fhir_server.url]})


@pytest.mark.parametrize(("name", "service"), _cases())
def test_shared_request_with_its_fhir_server_allow_listed(
    name: str,
    service: str,
    api_with_fhir: LiveApi,
    open_fhir: FhirTestServer,
    es_key: Any,
    http: httpx.Client,
) -> None:
    """Point each request's fhirServer at the allow-listed test server: what was not prefetched
    is fetched, so every call is answered 200, and the request's token is what was sent."""
    request = copy.deepcopy(load_example(name))
    request["fhirServer"] = open_fhir.url
    response = Caller(api_with_fhir, es_key, http).post(f"/cds-services/{service}", request)
    assert response.status_code == 200, response.text
    assert validate_response(response.json()) == []
    fetched = open_fhir.requests
    assert fetched, "the missing prefetch should have been fetched"
    token = request.get("fhirAuthorization", {}).get("access_token")
    for seen in fetched:
        assert seen.headers.get("authorization") == (f"Bearer {token}" if token else None)
        context = request["context"]
        assert context["patientId"] in seen.path or context.get("encounterId", "-") in seen.path


def _nonconforming_request(name: str) -> dict[str, Any]:
    return load_example(f"nonconforming/{name}")


def test_missing_patient_id_is_400_naming_it(caller: Caller) -> None:
    body = _nonconforming_request("request-patient-view-extension-missing-patientid.json")
    response = caller.post("/cds-services/sepsis-patient-view", body)
    assert response.status_code == 400
    issues = response.json()["issue"]
    assert ["context.patientId"] in [i.get("expression") for i in issues]


def test_hapi_request_without_hook_instance_is_400(caller: Caller) -> None:
    body = _nonconforming_request("request-hapi-test-missing-hookinstance.json")
    response = caller.post("/cds-services/sepsis-patient-view", body)
    assert response.status_code == 400
    expressions = [i.get("expression") for i in response.json()["issue"]]
    assert ["hookInstance"] in expressions


def test_hapi_request_with_hook_instance_still_400_for_its_hook(caller: Caller) -> None:
    body = _nonconforming_request("request-hapi-test-missing-hookinstance.json")
    body["hookInstance"] = "5c3e7a0c-3f4b-4d8e-9a59-1f2e3d4c5b6a"
    response = caller.post("/cds-services/sepsis-patient-view", body)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["hook"]


def test_hapi_patient_reference_as_patient_id_is_400(caller: Caller) -> None:
    body = _nonconforming_request("request-hapi-test-missing-hookinstance.json")
    body.update(hook="patient-view", hookInstance="5c3e7a0c-3f4b-4d8e-9a59-1f2e3d4c5b6a")
    response = caller.post("/cds-services/sepsis-patient-view", body)
    assert response.status_code == 400
    expressions = [i.get("expression") for i in response.json()["issue"]]
    assert ["context.patientId"] in expressions  # "Patient/123" is not a bare id
    assert ["context.userId"] in expressions  # and userId is missing


def test_non_ascii_ids_envelope_is_fine(caller: Caller) -> None:
    """Its README: strict parsers reject the ids, but the envelope itself is fine: no 400."""
    body = _nonconforming_request("request-order-sign-pagination-nonascii-ids.json")
    response = caller.post("/cds-services/sepsis-order-sign", body)
    assert response.status_code == 412
    named = [issue["expression"] for issue in response.json()["issue"]]
    assert named == [["prefetch.patient"], ["prefetch.vitals"]]


def test_stu3_style_draft_orders_do_not_fail_the_call(caller: Caller) -> None:
    context = _nonconforming_request("fragment-context-order-sign-r4-library-dosequantity.json")
    body = load_example("request-patient-view-sandbox-captured.json")
    body.update(hook="order-sign", context={**context, "patientId": "example"})
    response = caller.post("/cds-services/sepsis-order-sign", body)
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}


def test_every_nonconforming_request_is_covered() -> None:
    covered = {
        "request-patient-view-extension-missing-patientid.json",
        "request-hapi-test-missing-hookinstance.json",
        "request-order-sign-pagination-nonascii-ids.json",
    }
    assert {p.name for p in (CDS_EXAMPLES / "nonconforming").glob("request-*.json")} == covered
