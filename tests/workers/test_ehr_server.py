"""The EHR stand-in itself, over real HTTP: search and paging, writes, the token endpoint, faults."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ehr_server import (
    CLIENT_ASSERTION_TYPE,
    SYNTHEA_DIRS,
    EhrServer,
    iso,
    observation,
    synthea_bundles,
)
from support import EhrKey, hmac_token

CLIENT_ID = "sepsis-cds-worker"
SYSTEM = "https://sepsis-cds.example.org/fhir/sid/risk-assessment"
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def rs_client_key() -> EhrKey:
    return EhrKey.generate(CLIENT_ID, "RS384")


@pytest.fixture(scope="module")
def es_client_key() -> EhrKey:
    return EhrKey.generate(CLIENT_ID, "ES384")


@pytest.fixture
def ehr(rs_client_key: EhrKey, es_client_key: EhrKey) -> Iterator[EhrServer]:
    with EhrServer() as server:
        server.register_client(
            CLIENT_ID, {"keys": [rs_client_key.public_jwk, es_client_key.public_jwk]}
        )
        yield server


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


@pytest.fixture
def fhir(ehr: EhrServer, http: httpx.Client) -> httpx.Client:
    """A client sending a valid token to the EHR."""
    http.headers["Authorization"] = f"Bearer {ehr.issue_token()}"
    return http


def token_form(assertion: str, scope: str = "system/Observation.rs") -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }


def assertion(key: EhrKey, aud: str, **claims: Any) -> str:
    return key.token(aud, sub=key.iss, **claims)


def vitals(ehr: EhrServer, patient: str, n: int, start: datetime = T0) -> list[dict[str, Any]]:
    return [
        ehr.add(observation(patient, "8867-4", 80 + i, "/min", start + timedelta(minutes=i)))
        for i in range(n)
    ]


def all_pages(http: httpx.Client, url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every page of a search from ``url``: the pages and their resources in order."""
    pages: list[dict[str, Any]] = []
    while url:
        response = http.get(url)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/fhir+json"
        pages.append(response.json())
        url = next((k["url"] for k in pages[-1]["link"] if k["relation"] == "next"), "")
    return pages, [e["resource"] for page in pages for e in page.get("entry", [])]


def test_paging_returns_every_match_once_in_last_updated_order(
    ehr: EhrServer, fhir: httpx.Client
) -> None:
    added = vitals(ehr, "p1", 23)
    vitals(ehr, "p2", 4)
    # Ties on lastUpdated (as real servers have) are ordered by id, so paging stays stable.
    tied = [ehr.add(observation("p1", "9279-1", 16, "/min", T0), last_updated=T0) for _ in range(3)]
    pages, found = all_pages(fhir, f"{ehr.url}/Observation?patient=p1&_sort=_lastUpdated&_count=5")

    assert len(pages) == 6
    assert all(page["total"] == 26 and page["type"] == "searchset" for page in pages)
    assert all(len(page["entry"]) <= 5 for page in pages)
    assert sorted(r["id"] for r in found) == sorted(r["id"] for r in added + tied)
    stamps = [(r["meta"]["lastUpdated"], r["id"]) for r in found]
    assert [s[0] for s in stamps] == sorted(s[0] for s in stamps)
    assert [r["id"] for r in found[:3]] == sorted(r["id"] for r in tied)
    entry = pages[0]["entry"][0]
    assert entry["search"] == {"mode": "match"}
    assert entry["fullUrl"] == f"{ehr.url}/Observation/{entry['resource']['id']}"
    next_url = next(k["url"] for k in pages[0]["link"] if k["relation"] == "next")
    assert next_url.startswith(f"{ehr.url}/Observation?")
    assert "_page" in parse_qs(urlsplit(next_url).query)


def test_pages_hold_the_first_match_list_while_resources_change(
    ehr: EhrServer, fhir: httpx.Client
) -> None:
    added = vitals(ehr, "p1", 6)
    first = fhir.get(f"{ehr.url}/Observation?patient=p1&_sort=_lastUpdated&_count=3").json()
    ehr.update({**added[0], "valueQuantity": {"value": 99}})  # now the newest
    _, rest = all_pages(fhir, next(k["url"] for k in first["link"] if k["relation"] == "next"))
    ids = [e["resource"]["id"] for e in first["entry"]] + [r["id"] for r in rest]
    assert ids == [r["id"] for r in added]


def test_server_clock_only_moves_forward(ehr: EhrServer) -> None:
    ehr.add(
        observation("p1", "8867-4", 80, "/min", T0), last_updated=datetime(2100, 1, 1, tzinfo=UTC)
    )
    later = ehr.add(observation("p1", "8867-4", 81, "/min", T0))
    assert later["meta"]["lastUpdated"] > "2100-01-01T00:00:00"
    again = ehr.update(later)
    assert again["meta"]["versionId"] == "2"
    assert again["meta"]["lastUpdated"] > later["meta"]["lastUpdated"]


def test_last_updated_filters(ehr: EhrServer, fhir: httpx.Client) -> None:
    added = vitals(ehr, "p1", 10)
    pivot = added[4]["meta"]["lastUpdated"]
    base = f"{ehr.url}/Observation"

    def ids(condition: str) -> list[str]:
        params = {"patient": "p1", "_lastUpdated": condition, "_sort": "_lastUpdated"}
        return [r["id"] for r in all_pages(fhir, str(httpx.URL(base, params=params)))[1]]

    assert ids(f"gt{pivot}") == [r["id"] for r in added[5:]]
    assert ids(f"ge{pivot}") == [r["id"] for r in added[4:]]
    assert ids(f"lt{pivot}") == [r["id"] for r in added[:4]]
    # A +00:00 offset (what datetime.isoformat writes) means the same instant as Z.
    as_offset = datetime.fromisoformat(pivot).isoformat()
    assert "+00:00" in as_offset
    assert ids(f"gt{as_offset}") == [r["id"] for r in added[5:]]
    # Precision ranges (R4 §3.1.1.4.2): gt a day is after that whole day.
    assert ids(f"gt{pivot[:10]}") == []
    assert ids(f"ge{pivot[:10]}") == [r["id"] for r in added]
    response = fhir.get(base, params={"_lastUpdated": "gtyesterday"})
    assert response.status_code == 400


def test_category_and_subject_filters(ehr: EhrServer, fhir: httpx.Client) -> None:
    vital = vitals(ehr, "p1", 2)
    lab = ehr.add(observation("p1", "6690-2", 14.2, "10*3/uL", T0, category="laboratory"))
    vitals(ehr, "p2", 3)
    base = f"{ehr.url}/Observation"

    def ids(**params: str) -> set[str]:
        return {r["id"] for r in all_pages(fhir, str(httpx.URL(base, params=params)))[1]}

    assert ids(patient="p1", category="vital-signs") == {r["id"] for r in vital}
    assert ids(patient="p1", category="laboratory") == {lab["id"]}
    assert ids(patient="p1", category="vital-signs,laboratory") == {r["id"] for r in [*vital, lab]}
    system = "http://terminology.hl7.org/CodeSystem/observation-category"
    assert ids(patient="Patient/p1", category=f"{system}|laboratory") == {lab["id"]}
    assert ids(subject="Patient/p1") == ids(patient="p1")
    assert len(ids(patient="p1")) == 3
    assert ids(patient="p1", code="http://loinc.org|6690-2") == {lab["id"]}
    assert fhir.get(base, params={"patient": "p1", "date": "gt2020"}).status_code == 400


def test_encounter_search_by_location(ehr: EhrServer, fhir: httpx.Client) -> None:
    a = ehr.admit("pa", "Location/icu-1", "Medical ICU", T0, hospital_start=T0 - timedelta(hours=5))
    b = ehr.admit("pb", "icu-2", "Surgical ICU", T0)
    ehr.admit("pc", "Location/ward-3", "Ward 3", T0)
    gone = ehr.admit("pd", "Location/icu-1", "Medical ICU", T0)
    ehr.discharge(gone["id"], T0 + timedelta(hours=1))
    base = f"{ehr.url}/Encounter"

    def ids(**params: str | list[str]) -> set[str]:
        return {r["id"] for r in all_pages(fhir, str(httpx.URL(base, params=params)))[1]}

    both = "Location/icu-1,Location/icu-2"
    assert ids(status="in-progress", location=both, _count="100") == {a["id"], b["id"]}
    assert ids(status="in-progress", location="icu-1") == {a["id"]}
    # A repeated parameter ANDs (an encounter at both locations), a comma ORs.
    assert ids(status="in-progress", location=["Location/icu-1", "Location/icu-2"]) == set()
    assert ids(location="Location/icu-1") == {a["id"], gone["id"]}
    pages, _ = all_pages(fhir, f"{base}?status=in-progress&location={both}&_count=1")
    assert len(pages) == 2
    stay = fhir.get(f"{base}/{a['id']}").json()
    assert stay["class"]["code"] == "IMP"
    assert stay["subject"] == {"reference": "Patient/pa"}
    assert stay["period"]["start"] == iso(T0 - timedelta(hours=5))
    assert stay["location"][0]["location"] == {
        "reference": "Location/icu-1",
        "display": "Medical ICU",
    }
    assert stay["location"][0]["period"]["start"] == iso(T0)


def test_patient_read_and_errors(ehr: EhrServer, fhir: httpx.Client) -> None:
    ehr.add({"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1960-02-01"})
    response = fhir.get(f"{ehr.url}/Patient/p1")
    assert response.status_code == 200
    assert response.json()["gender"] == "female"
    assert response.headers["etag"] == 'W/"1"'
    missing = fhir.get(f"{ehr.url}/Patient/nobody")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert fhir.get(f"{ehr.url}/Observation?_page=made-up").status_code == 410


def test_token_endpoint_accepts_rs384_and_es384(
    ehr: EhrServer, http: httpx.Client, rs_client_key: EhrKey, es_client_key: EhrKey
) -> None:
    ehr.token_lifetime_s = 120
    for key in (rs_client_key, es_client_key):
        response = http.post(ehr.token_url, data=token_form(assertion(key, ehr.token_url)))
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["token_type"] == "bearer"
        assert answer["expires_in"] == 120
        assert answer["scope"] == "system/Observation.rs"
        assert response.headers["cache-control"] == "no-store"
        headers = {"Authorization": f"Bearer {answer['access_token']}"}
        assert http.get(f"{ehr.url}/Observation", headers=headers).status_code == 200
    assert [r.status for r in ehr.token_requests] == [200, 200]
    assert [r.header["alg"] for r in ehr.token_requests if r.header] == ["RS384", "ES384"]
    claims = ehr.token_requests[0].claims
    assert claims is not None
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == ehr.token_url


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong aud", "aud is not the token endpoint"),
        ("expired", "the assertion has expired"),
        ("too far ahead", "exp is more than five minutes ahead"),
        ("unknown kid", "kid is not in the client's JWKS"),
        ("no kid", "the assertion has no kid"),
        ("sub differs", "sub is not the client id"),
        ("unknown client", "iss is not a registered client"),
        ("HS256", "alg HS256 is not RS384 or ES384"),
    ],
)
def test_token_endpoint_refuses_bad_assertions(
    ehr: EhrServer, http: httpx.Client, rs_client_key: EhrKey, case: str, reason: str
) -> None:
    key, aud = rs_client_key, ehr.token_url
    signed = {
        "wrong aud": lambda: assertion(key, f"{ehr.origin}/other/token"),
        "expired": lambda: assertion(key, aud, iat_offset_s=-600),
        "too far ahead": lambda: assertion(key, aud, lifetime_s=900),
        "unknown kid": lambda: key.token(aud, sub=key.iss, headers={"kid": "rotated-away"}),
        "no kid": lambda: key.token(aud, sub=key.iss, headers={"kid": None}),
        "sub differs": lambda: key.token(aud, sub="someone-else"),
        "unknown client": lambda: EhrKey.generate("stranger", "ES384").token(aud, sub="stranger"),
        "HS256": lambda: hmac_token(
            {
                "iss": CLIENT_ID,
                "sub": CLIENT_ID,
                "aud": aud,
                "exp": int(time.time()) + 60,
                "jti": "x",
            },
            {"alg": "HS256", "kid": key.kid},
            b"guess",
        ),
    }[case]()
    response = http.post(ehr.token_url, data=token_form(signed))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert ehr.token_requests[-1].reason == reason


def test_token_endpoint_refuses_a_replayed_jti(
    ehr: EhrServer, http: httpx.Client, rs_client_key: EhrKey
) -> None:
    signed = assertion(rs_client_key, ehr.token_url)
    assert http.post(ehr.token_url, data=token_form(signed)).status_code == 200
    again = http.post(ehr.token_url, data=token_form(signed))
    assert again.status_code == 401
    assert again.json()["error"] == "invalid_client"
    assert ehr.token_requests[-1].reason == "jti was used before (replay)"


def test_token_endpoint_checks_the_form(
    ehr: EhrServer, http: httpx.Client, rs_client_key: EhrKey
) -> None:
    form = token_form(assertion(rs_client_key, ehr.token_url))
    bad_grant = http.post(ehr.token_url, data={**form, "grant_type": "password"})
    assert (bad_grant.status_code, bad_grant.json()["error"]) == (400, "unsupported_grant_type")
    bad_type = http.post(ehr.token_url, data={**form, "client_assertion_type": "jwt"})
    assert (bad_type.status_code, bad_type.json()["error"]) == (400, "invalid_request")
    ehr.register_client(
        CLIENT_ID, {"keys": [rs_client_key.public_jwk]}, scopes={"system/Observation.rs"}
    )
    wide = token_form(assertion(rs_client_key, ehr.token_url), scope="system/*.*")
    assert http.post(ehr.token_url, data=wide).json()["error"] == "invalid_scope"
    assert http.get(ehr.token_url).status_code == 405


def test_fhir_requests_need_a_current_token(
    ehr: EhrServer, http: httpx.Client, rs_client_key: EhrKey
) -> None:
    url = f"{ehr.url}/Observation?patient=p1"
    missing = http.get(url, headers={"Authorization": ""})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="ehr"'
    made_up = http.get(url, headers={"Authorization": "Bearer made-up"})
    assert made_up.status_code == 401
    assert 'error="invalid_token"' in made_up.headers["www-authenticate"]
    answer = http.post(ehr.token_url, data=token_form(assertion(rs_client_key, ehr.token_url)))
    headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
    assert http.get(url, headers=headers).status_code == 200
    ehr.expire_tokens()
    assert http.get(url, headers=headers).status_code == 401
    lapsed = {"Authorization": f"Bearer {ehr.issue_token(lifetime_s=0)}"}
    assert http.get(url, headers=lapsed).status_code == 401
    ehr.require_auth = False
    assert http.get(url, headers={"Authorization": ""}).status_code == 200
    # The discovery document is public (SMART App Launch 2.x, "Conformance").
    config = http.get(f"{ehr.url}/.well-known/smart-configuration", headers={"Authorization": ""})
    assert config.json()["token_endpoint"] == ehr.token_url


def test_failures_answer_n_times_then_recover(ehr: EhrServer, fhir: httpx.Client) -> None:
    url = f"{ehr.url}/Observation?patient=p1"
    ehr.fail_next(2, status=500)
    assert [fhir.get(url).status_code for _ in range(3)] == [500, 500, 200]
    ehr.fail_next(1, status=429, retry_after=1)
    limited = fhir.get(url)
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "1")
    assert "retry-after" not in fhir.get(url).headers
    ehr.fail_next(1, status=503, path="Observation")
    assert fhir.get(f"{ehr.url}/Patient/p1").status_code == 404  # not under the prefix
    assert fhir.get(url).status_code == 503
    assert fhir.get(url).status_code == 200
    ehr.fail_next(1, status=503, path="/auth/token")
    assert fhir.post(ehr.token_url, data={}).status_code == 503


def test_slow_answers(ehr: EhrServer, fhir: httpx.Client) -> None:
    url = f"{ehr.url}/Observation?patient=p1"
    ehr.slow_next(1, 0.3)
    started = time.monotonic()
    assert fhir.get(url).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    fhir.get(url)
    assert time.monotonic() - started < 0.3
    ehr.delay_s, ehr.delay_path = 2.0, "Observation"
    with pytest.raises(httpx.ReadTimeout):
        fhir.get(url, timeout=0.2)
    started = time.monotonic()
    assert fhir.get(f"{ehr.url}/Patient/p1").status_code == 404
    assert time.monotonic() - started < 0.3


def test_risk_assessment_writes(ehr: EhrServer, fhir: httpx.Client) -> None:
    def risk(value: float, pseudonym: str = "ps-1") -> dict[str, Any]:
        return {
            "resourceType": "RiskAssessment",
            "status": "final",
            "identifier": [{"system": SYSTEM, "value": pseudonym}],
            "subject": {"reference": "Patient/p1"},
            "prediction": [{"probabilityDecimal": value}],
        }

    url = f"{ehr.url}/RiskAssessment"
    condition = {"identifier": f"{SYSTEM}|ps-1"}
    created = fhir.put(url, params=condition, json=risk(0.7))
    assert created.status_code == 201
    ra_id = created.json()["id"]
    assert created.headers["location"] == f"{url}/{ra_id}/_history/1"
    assert created.headers["etag"] == 'W/"1"'
    updated = fhir.put(url, params=condition, json=risk(0.4))
    assert (updated.status_code, updated.json()["id"]) == (200, ra_id)
    assert updated.json()["meta"]["versionId"] == "2"
    assert [r["prediction"][0]["probabilityDecimal"] for r in ehr.written("RiskAssessment")] == [
        0.4
    ]

    found = fhir.get(url, params=condition).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [ra_id]
    assert fhir.get(url, params={"identifier": "ps-1"}).json()["total"] == 1
    assert fhir.get(url, params={"identifier": "other|ps-1"}).json()["total"] == 0

    posted = fhir.post(url, json=risk(0.9, "ps-2"), headers={"Prefer": "return=minimal"})
    assert (posted.status_code, posted.content) == (201, b"")
    other_id = posted.headers["location"].split("/")[-3]
    stale = fhir.put(
        f"{url}/{other_id}",
        json={**risk(0.8, "ps-1"), "id": other_id},
        headers={"If-Match": 'W/"7"'},
    )
    assert stale.status_code == 412
    by_id = fhir.put(f"{url}/{other_id}", json={**risk(0.8, "ps-1"), "id": other_id})
    assert by_id.status_code == 200
    assert fhir.put(url, params=condition, json=risk(0.1)).status_code == 412  # two match now
    assert (
        fhir.put(f"{url}/new-one", json={**risk(0.2, "ps-3"), "id": "new-one"}).status_code == 201
    )
    assert fhir.put(f"{url}/x", json={**risk(0.2), "id": "y"}).status_code == 400
    assert fhir.post(url, json={"resourceType": "Patient"}).status_code == 400
    assert len(ehr.written("RiskAssessment")) == 3


def test_requests_are_recorded(ehr: EhrServer, fhir: httpx.Client) -> None:
    fhir.get(f"{ehr.url}/Observation", params={"patient": "p1", "_count": "5"})
    method, path, query, headers = ehr.requests[-1]
    assert (method, path, query) == (
        "GET",
        "/fhir/Observation",
        {"patient": ["p1"], "_count": ["5"]},
    )
    assert headers["authorization"].startswith("Bearer ")
    ehr.clear_requests()
    assert ehr.requests == []
    assert ehr.token_requests == []


def test_load_synthea_serves_real_bundles(ehr: EhrServer, fhir: httpx.Client) -> None:
    paths = synthea_bundles(3)
    if not paths:
        pytest.skip(f"no Synthea bundles under {' or '.join(map(str, SYNTHEA_DIRS))}")
    patients = ehr.load_synthea(paths)
    assert len(patients) == 3
    for patient in patients:
        assert fhir.get(f"{ehr.url}/Patient/{patient}").json()["id"] == patient
        held = [
            o for o in ehr.all("Observation") if o["subject"]["reference"] == f"Patient/{patient}"
        ]
        _, found = all_pages(
            fhir, f"{ehr.url}/Observation?patient={patient}&_sort=_lastUpdated&_count=7"
        )
        assert sorted(o["id"] for o in found) == sorted(o["id"] for o in held)
        assert held, "every Synthea patient has Observations"
        assert all(o["meta"]["lastUpdated"] for o in found)
    encounters = ehr.all("Encounter")
    assert encounters
    assert not any(e["subject"]["reference"].startswith("urn:uuid:") for e in encounters)
    # New data after the load is newer than all of it, so a watermark sees it.
    newest = max(o["meta"]["lastUpdated"] for o in ehr.all("Observation"))
    fresh = ehr.add(observation(patients[0], "8867-4", 120, "/min", datetime.now(UTC)))
    query = {"patient": patients[0], "_lastUpdated": f"gt{newest}"}
    assert [
        e["resource"]["id"]
        for e in fhir.get(f"{ehr.url}/Observation", params=query).json()["entry"]
    ] == [fresh["id"]]
