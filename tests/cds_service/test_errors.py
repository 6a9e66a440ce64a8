"""Bad input gets a clear 4xx with an OperationOutcome naming the problem, never a 500."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from support import Caller, EhrKey, LiveApi
from support import patient_view_request as valid_request

pytestmark = pytest.mark.integration

PATIENT_VIEW = "/cds-services/sepsis-patient-view"


def expressions(response: httpx.Response) -> list[str]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert all(issue["diagnostics"] for issue in body["issue"])
    return [e for issue in body["issue"] for e in issue.get("expression", [])]


def test_valid_request_is_200(caller: Caller) -> None:
    response = caller.post(PATIENT_VIEW, valid_request())
    assert response.status_code == 200
    assert response.json() == {"cards": []}
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b"   ", b'{"hook": "patient-view",', "\u00e9".encode("latin-1")],
)
def test_malformed_json_is_400(caller: Caller, content: bytes) -> None:
    response = caller.post(PATIENT_VIEW, content=content)
    assert response.status_code == 400
    assert "JSON" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_body_that_is_not_an_object_is_400(caller: Caller, body: Any) -> None:
    response = caller.post(PATIENT_VIEW, content=json.dumps(body).encode())
    assert response.status_code == 400


@pytest.mark.parametrize("field", ["hook", "hookInstance", "context"])
def test_missing_envelope_field_is_400_naming_it(caller: Caller, field: str) -> None:
    body = valid_request()
    del body[field]
    response = caller.post(PATIENT_VIEW, body)
    assert response.status_code == 400
    assert field in expressions(response)


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("hookInstance",), "not-a-uuid", "hookInstance"),
        (("context", "patientId"), "Patient/p1", "context.patientId"),
        (("context", "patientId"), 12, "context.patientId"),
        (("context", "userId"), "p1", "context.userId"),
        (("context", "userId"), "Device/1", "context.userId"),
        (("context", "encounterId"), "", "context.encounterId"),
        (("fhirServer",), "ftp://ehr.example.org", "fhirServer"),
        (("prefetch",), [], "prefetch"),
        (("prefetch", "vitals"), "not a resource", "prefetch.vitals"),
        (("extension",), ["not", "an", "object"], "extension"),
    ],
)
def test_wrong_field_is_400_naming_it(
    caller: Caller, path: tuple[str, ...], value: Any, named: str
) -> None:
    body = valid_request()
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    response = caller.post(PATIENT_VIEW, body)
    assert response.status_code == 400, response.text
    assert named in expressions(response)


def test_missing_required_context_field_per_hook(caller: Caller) -> None:
    body = valid_request()
    body.update(hook="encounter-discharge")
    response = caller.post("/cds-services/sepsis-encounter-discharge", body)
    assert response.status_code == 400
    assert expressions(response) == ["context.encounterId"]

    body.update(hook="order-select")
    response = caller.post("/cds-services/sepsis-order-select", body)
    assert response.status_code == 400
    assert set(expressions(response)) == {"context.selections", "context.draftOrders"}


def test_hook_that_does_not_match_the_service_is_400(caller: Caller) -> None:
    body = valid_request()
    body["hook"] = "order-sign"
    response = caller.post(PATIENT_VIEW, body)
    assert response.status_code == 400
    assert expressions(response) == ["hook"]
    assert "patient-view" in response.json()["issue"][0]["diagnostics"]


def test_unknown_service_is_404(caller: Caller) -> None:
    response = caller.post("/cds-services/no-such-service", valid_request())
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_unknown_route_and_wrong_method_are_json(api: LiveApi, http: httpx.Client) -> None:
    missing = http.get(f"{api.url}/nowhere")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    wrong = http.get(f"{api.url}{PATIENT_VIEW}")
    assert wrong.status_code == 405
    assert wrong.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("auth", "named"),
    [
        ({"token_type": "Bearer", "expires_in": 300, "scope": "s", "subject": "x"}, "access_token"),
        ({"access_token": "t", "token_type": "MAC", "expires_in": 300, "scope": "s", "subject": "x"}, "token_type"),
        ({"access_token": "t", "token_type": "Bearer", "expires_in": "300", "scope": "s", "subject": "x"}, "expires_in"),
        ({"access_token": "t", "token_type": "Bearer", "expires_in": 300, "subject": "x"}, "scope"),
        ({"access_token": "t", "token_type": "Bearer", "expires_in": 300, "scope": "s"}, "subject"),
    ],
)  # fmt: skip
def test_incomplete_fhir_authorization_is_400(
    caller: Caller, auth: dict[str, Any], named: str
) -> None:
    body = valid_request()
    body.update(fhirServer="https://ehr.example.org/fhir", fhirAuthorization=auth)
    response = caller.post(PATIENT_VIEW, body)
    assert response.status_code == 400
    assert f"fhirAuthorization.{named}" in expressions(response)
    assert "t" not in [i["diagnostics"] for i in response.json()["issue"]]


def test_fhir_authorization_without_fhir_server_is_400(caller: Caller) -> None:
    body = valid_request()
    body["fhirAuthorization"] = {
        "access_token": "secret-token-value",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds",
    }
    response = caller.post(PATIENT_VIEW, body)
    assert response.status_code == 400
    assert "fhirServer" in response.json()["issue"][0]["diagnostics"]
    assert "secret-token-value" not in response.text


def test_prefetched_patient_of_another_patient_is_400(caller: Caller) -> None:
    body = valid_request()
    body["prefetch"]["patient"]["id"] = "someone-else"
    response = caller.post(PATIENT_VIEW, body)
    assert response.status_code == 400
    assert expressions(response) == ["prefetch.patient.id"]


def test_prefetch_of_the_wrong_resource_type_is_400(caller: Caller) -> None:
    body = valid_request()
    body["prefetch"]["vitals"] = {"resourceType": "Patient", "id": "p1"}
    response = caller.post(PATIENT_VIEW, body)
    assert response.status_code == 400
    assert expressions(response) == ["prefetch.vitals"]


def test_prefetch_null_means_no_data(caller: Caller) -> None:
    body = valid_request()
    body["prefetch"]["vitals"] = None
    assert caller.post(PATIENT_VIEW, body).status_code == 200


def test_prefetch_operation_outcome_counts_as_missing(caller: Caller) -> None:
    body = valid_request()
    body["prefetch"]["vitals"] = {"resourceType": "OperationOutcome", "issue": []}
    response = caller.post(PATIENT_VIEW, body)
    assert response.status_code == 412
    assert expressions(response) == ["prefetch.vitals"]


def test_missing_optional_prefetch_is_fine(caller: Caller) -> None:
    body = valid_request()
    assert "labs" not in body["prefetch"]
    assert caller.post(PATIENT_VIEW, body).status_code == 200


def test_unknown_fields_and_extensions_are_ignored(caller: Caller) -> None:
    body = valid_request()
    body["extension"] = {"org.example.flag": True}
    body["somethingNew"] = 1
    body["context"]["extraContext"] = {"x": 1}
    assert caller.post(PATIENT_VIEW, body).status_code == 200


@pytest.fixture(scope="module")
def small_api(start_api: Callable[..., LiveApi]) -> Iterator[LiveApi]:
    yield start_api(max_request_bytes=4096)


def test_body_over_the_limit_is_413(small_api: LiveApi, es_key: EhrKey, http: httpx.Client) -> None:
    body = valid_request()
    body["prefetch"]["vitals"]["entry"] = [{"resource": {"resourceType": "Observation"}}] * 200
    response = Caller(small_api, es_key, http).post(PATIENT_VIEW, body)
    assert response.status_code == 413
    assert response.json()["issue"][0]["code"] == "too-long"


def test_chunked_body_over_the_limit_is_413(
    small_api: LiveApi, es_key: EhrKey, http: httpx.Client
) -> None:
    url = f"{small_api.url}{PATIENT_VIEW}"

    def chunks() -> Iterator[bytes]:
        yield b'{"hook": "patient-view", "pad": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = http.post(
        url,
        content=chunks(),
        headers={
            "Authorization": f"Bearer {es_key.token(url)}",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 413


def _mutations(document: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every way of breaking one node: drop it, or swap it for a value of each other JSON type."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield (*path, key), None
            yield from _mutations(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from _mutations(value, (*path, index))
    for replacement in ({}, [], "", 0, 1.5, True, "x" * 300, {"resourceType": "OperationOutcome"}):
        yield path, ("set", replacement)


def _apply(document: Any, path: tuple[Any, ...], change: Any) -> Any:
    mutated = copy.deepcopy(document)
    if not path:
        return change[1]
    target = mutated
    for part in path[:-1]:
        target = target[part]
    if change is None:
        del target[path[-1]]
    else:
        target[path[-1]] = change[1]
    return mutated


def test_no_mutation_of_a_valid_request_gets_a_500(caller: Caller) -> None:
    base = valid_request()
    base["fhirServer"] = "https://ehr.example.org/fhir"
    base["fhirAuthorization"] = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds",
        "patient": "p1",
    }
    statuses: dict[int, int] = {}
    for path, change in _mutations(base):
        response = caller.post(
            PATIENT_VIEW, content=json.dumps(_apply(base, path, change)).encode()
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (path, change, response.text)
        assert response.headers["content-type"] == "application/json"
        if response.status_code >= 400:
            assert response.json()["resourceType"] == "OperationOutcome"
    assert statuses.get(400, 0) > 50 and statuses.get(200, 0) > 0
