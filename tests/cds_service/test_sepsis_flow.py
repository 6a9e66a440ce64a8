"""The sepsis services end to end over HTTP: real PhysioNet ICU patients sent as FHIR, a real
redis-server, the real model; cards checked against the CDS Hooks validator."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from cds_service.lifecycle.follower import ModelHolder
from cds_service.metrics import Metrics
from cds_service.redis_server import free_port
from cds_service.scores import round_half_up

from cds_validator import validate_response
from sepsis_patients import (
    MODEL_ROOT,
    NO_PHYSIONET,
    SET_A,
    SepsisCase,
    find_cases,
    hook_request,
)
from support import Caller, EhrKey, FhirTestServer, LiveApi

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SET_A.is_file(), reason=NO_PHYSIONET),
]

PATIENT_VIEW = "/cds-services/sepsis-patient-view"
ORDER_SIGN = "/cds-services/sepsis-order-sign"
LOINC = "http://loinc.org"
ORDER_SETS = {
    "antibiotics": {
        "label": "Adult sepsis antibiotics (site order set)",
        "resource": {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "instantiatesCanonical": ["https://hospital.example/PlanDefinition/sepsis-abx"],
        },
    },
}


@pytest.fixture(scope="module")
def cases() -> tuple[SepsisCase, SepsisCase]:
    model = ModelHolder(MODEL_ROOT, "cpu", Metrics()).load_active()
    assert model is not None
    return find_cases(model)


@pytest.fixture(scope="module")
def high(cases: tuple[SepsisCase, SepsisCase]) -> SepsisCase:
    return cases[0]


@pytest.fixture(scope="module")
def low(cases: tuple[SepsisCase, SepsisCase]) -> SepsisCase:
    return cases[1]


@pytest.fixture(scope="module")
def no_repeat_api(start_api: Callable[..., LiveApi]) -> LiveApi:
    """Repeat suppression off, so that only the snooze can silence a card."""
    return start_api(sepsis={"repeat_window_min": 0, "order_sets": ORDER_SETS})


@pytest.fixture
def no_repeat(no_repeat_api: LiveApi, es_key: EhrKey, http: httpx.Client) -> Caller:
    return Caller(no_repeat_api, es_key, http)


@pytest.fixture
def redis_down(
    start_api: Callable[..., LiveApi], es_key: EhrKey, http: httpx.Client
) -> Iterator[Caller]:
    api = start_api(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.2)
    yield Caller(api, es_key, http)


def cards_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert validate_response(body) == []
    cards: list[dict[str, Any]] = body["cards"]
    return cards


def percent(risk: float) -> str:
    return f"{round_half_up(risk * 100, 1)} %"


def metric(http: httpx.Client, api: LiveApi, name: str, **labels: str) -> float:
    text = http.get(f"{api.url}/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_high_risk_patient_gets_a_card_with_the_training_path_risk(
    caller: Caller, api: LiveApi, http: httpx.Client, high: SepsisCase
) -> None:
    cards = cards_of(caller.post(PATIENT_VIEW, hook_request(high)))
    assert len(cards) == 1
    card = cards[0]
    assert card["indicator"] in ("warning", "critical")
    # House rule 6 through HTTP: FHIR → Redis → the service's features gives training's risk.
    assert percent(high.risk) in card["summary"]
    version = http.get(f"{api.url}/readyz").json()["model"]["version"]
    assert version in card["detail"]
    assert "NEWS2" not in card["summary"] + card["detail"]
    card_links = [link["url"] for link in card["links"] if link["type"] == "absolute"]
    assert f"{api.url}/model-cards/{version}" in card_links
    assert http.get(f"{api.url}/model-cards/{version}").status_code == 200
    labels = {s["label"] for s in card["suggestions"]}
    assert any("actate" in label for label in labels)
    assert any("ulture" in label for label in labels)
    assert card["selectionBehavior"] == "any"
    assert {r["code"] for r in card["overrideReasons"]} >= {"comfort-care", "not-septic"}


def test_low_risk_patient_gets_no_card(caller: Caller, low: SepsisCase) -> None:
    assert cards_of(caller.post(PATIENT_VIEW, hook_request(low))) == []


def test_the_same_card_is_not_repeated_within_the_window(
    caller: Caller, api: LiveApi, http: httpx.Client, high: SepsisCase
) -> None:
    before = metric(
        http, api, "cds_cards_suppressed_total", service="sepsis-patient-view", reason="repeat"
    )
    request = hook_request(high, patient_id="repeat-1")
    assert len(cards_of(caller.post(PATIENT_VIEW, request))) == 1
    assert cards_of(caller.post(PATIENT_VIEW, hook_request(high, patient_id="repeat-1"))) == []
    after = metric(
        http, api, "cds_cards_suppressed_total", service="sepsis-patient-view", reason="repeat"
    )
    assert after == before + 1
    # another patient is not affected
    assert len(cards_of(caller.post(PATIENT_VIEW, hook_request(high, patient_id="repeat-2")))) == 1


def _feedback(card: dict[str, Any], reason: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": datetime.now(UTC).isoformat(),
    }
    if reason is not None:
        entry["overrideReason"] = {
            "reason": {"code": reason, "system": card["overrideReasons"][0]["system"]}
        }
    return {"feedback": [entry]}


def test_an_override_with_a_reason_snoozes_the_patient(no_repeat: Caller, high: SepsisCase) -> None:
    first = cards_of(no_repeat.post(PATIENT_VIEW, hook_request(high, patient_id="snooze-1")))
    assert len(first) == 1
    again = cards_of(no_repeat.post(PATIENT_VIEW, hook_request(high, patient_id="snooze-1")))
    assert len(again) == 1  # no repeat window on this API
    sent = no_repeat.post(f"{PATIENT_VIEW}/feedback", _feedback(again[0], "already-treated"))
    assert sent.status_code == 200
    assert cards_of(no_repeat.post(PATIENT_VIEW, hook_request(high, patient_id="snooze-1"))) == []


def test_an_override_without_a_reason_does_not_snooze(no_repeat: Caller, high: SepsisCase) -> None:
    first = cards_of(no_repeat.post(PATIENT_VIEW, hook_request(high, patient_id="snooze-2")))
    assert no_repeat.post(f"{PATIENT_VIEW}/feedback", _feedback(first[0], None)).status_code == 200
    assert (
        len(cards_of(no_repeat.post(PATIENT_VIEW, hook_request(high, patient_id="snooze-2")))) == 1
    )


def test_site_order_sets_are_offered_and_filled_in_for_the_patient(
    no_repeat: Caller, high: SepsisCase
) -> None:
    cards = cards_of(no_repeat.post(PATIENT_VIEW, hook_request(high, patient_id="orders-1")))
    resources = [
        action["resource"]
        for suggestion in cards[0]["suggestions"]
        for action in suggestion["actions"]
    ]
    site = [r for r in resources if r.get("instantiatesCanonical")]
    assert len(site) == 1
    assert site[0]["subject"] == {"reference": "Patient/orders-1"}
    codes = {c["code"] for r in resources for c in r.get("code", {}).get("coding", [])}
    assert {"2524-7", "600-7"} <= codes


def _service_request(code: str, display: str) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "order",
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "subject": {"reference": "Patient/x"},
        }
    }


def _draft_orders(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": list(entries)}


def test_order_sign_without_the_bundle_suggests_it_and_with_it_says_nothing(
    caller: Caller, high: SepsisCase
) -> None:
    other = _service_request("24323-8", "Comprehensive metabolic panel")
    missing = hook_request(
        high, hook="order-sign", patient_id="sign-1", context={"draftOrders": _draft_orders(other)}
    )
    cards = cards_of(caller.post(ORDER_SIGN, missing))
    assert len(cards) == 1
    codes = {
        c["code"]
        for s in cards[0]["suggestions"]
        for a in s["actions"]
        for c in a["resource"]["code"]["coding"]
    }
    assert {"2524-7", "600-7"} <= codes
    complete = _draft_orders(
        other,
        _service_request("2524-7", "Lactate [Moles/volume] in Serum or Plasma"),
        _service_request("600-7", "Bacteria identified in Blood by Culture"),
    )
    bundled = hook_request(
        high, hook="order-sign", patient_id="sign-2", context={"draftOrders": complete}
    )
    assert cards_of(caller.post(ORDER_SIGN, bundled)) == []


def test_redis_down_scores_from_prefetch_and_says_so(redis_down: Caller, high: SepsisCase) -> None:
    cards = cards_of(redis_down.post(PATIENT_VIEW, hook_request(high)))
    assert len(cards) == 1
    assert "partial history" in cards[0]["detail"].lower()


def test_vitals_older_than_the_stale_limit_are_not_scored(
    caller: Caller, api: LiveApi, http: httpx.Client, high: SepsisCase
) -> None:
    """The high-risk patient's record ending 8.5 h ago (limit 6 h): no risk from old data."""
    old = hook_request(high, now=datetime.now(UTC) - timedelta(hours=8))
    before = metric(http, api, "cds_score_not_shown_total", score="sepsis", reason="stale-vitals")
    assert cards_of(caller.post(PATIENT_VIEW, old)) == []
    after = metric(http, api, "cds_score_not_shown_total", score="sepsis", reason="stale-vitals")
    assert after == before + 1
    assert len(cards_of(caller.post(PATIENT_VIEW, hook_request(high)))) == 1


def test_children_and_ward_patients_are_not_scored(
    caller: Caller, api: LiveApi, http: httpx.Client, high: SepsisCase
) -> None:
    child = hook_request(high)
    child["prefetch"]["patient"]["birthDate"] = f"{datetime.now(UTC).year - 12}-01-01"
    ward = hook_request(high)
    location = ward["prefetch"]["encounter"]["entry"][0]["resource"]["location"][0]
    location["location"]["display"] = "Ward 5 (general medicine)"
    counts = {
        reason: metric(http, api, "cds_score_not_shown_total", score="sepsis", reason=reason)
        for reason in ("under-age", "not-icu")
    }
    assert cards_of(caller.post(PATIENT_VIEW, child)) == []
    assert cards_of(caller.post(PATIENT_VIEW, ward)) == []
    for reason, before in counts.items():
        now = metric(http, api, "cds_score_not_shown_total", score="sepsis", reason=reason)
        assert now == before + 1, reason


def test_the_news2_card_does_not_restate_the_sepsis_risk(caller: Caller, high: SepsisCase) -> None:
    request = hook_request(high)
    cards = cards_of(caller.post("/cds-services/deterioration-patient-view", request))
    for card in cards:
        text = card["summary"] + card.get("detail", "")
        assert "sepsis risk" not in text.lower()
        assert percent(high.risk) not in text


def test_data_not_prefetched_is_fetched_from_the_allow_listed_server(
    start_api: Callable[..., LiveApi],
    fhir_server: FhirTestServer,
    es_key: EhrKey,
    http: httpx.Client,
    high: SepsisCase,
) -> None:
    api = start_api(fhir={"allowed_servers": [fhir_server.url]})
    request = hook_request(high, patient_id="fetched-1")
    prefetch = request.pop("prefetch")
    fhir_server.routes.clear()
    fhir_server.requests.clear()
    fhir_server.routes.update(
        {
            "Patient/fetched-1": prefetch["patient"],
            "Encounter?": prefetch["encounter"],
            "Observation?patient=fetched-1&category=vital-signs": prefetch["vitals"],
            "Observation?patient=fetched-1&category=laboratory": prefetch["labs"],
        }
    )
    request["fhirServer"] = fhir_server.url
    request["fhirAuthorization"] = {
        "access_token": "token-for-this-server",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds-service",
    }
    cards = cards_of(Caller(api, es_key, http).post(PATIENT_VIEW, request))
    assert len(cards) == 1
    assert percent(high.risk) in cards[0]["summary"]
    assert len(fhir_server.requests) == 4
    assert {r.headers["authorization"] for r in fhir_server.requests} == {
        "Bearer token-for-this-server"
    }
    fhir_server.routes.clear()


def test_inference_latency_is_observed(
    caller: Caller, api: LiveApi, http: httpx.Client, high: SepsisCase
) -> None:
    provider = "CPUExecutionProvider"
    before = metric(http, api, "cds_inference_latency_seconds_count", provider=provider)
    rows = metric(http, api, "cds_inference_rows_total", provider=provider)
    cards_of(caller.post(PATIENT_VIEW, hook_request(high)))
    # One ORT batch per call: the trend hours and every occlusion variant together.
    assert metric(http, api, "cds_inference_latency_seconds_count", provider=provider) == before + 1
    assert metric(http, api, "cds_inference_rows_total", provider=provider) - rows > 24
