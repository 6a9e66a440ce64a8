"""deterioration-patient-view end to end: prefetch → timeline in Redis → NEWS2 → card, over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from cds_service.redis_server import free_port

from cds_validator import validate_response
from support import Caller, EhrKey, LiveApi

pytestmark = pytest.mark.integration

SERVICE = "/cds-services/deterioration-patient-view"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def quantity(code: str, value: float, unit: str, minutes_ago: float) -> dict[str, Any]:
    when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return {
        "resourceType": "Observation",
        "id": f"o-{uuid.uuid4()}",
        "status": "final",
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": when.isoformat(),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def blood_pressure(systolic: float, diastolic: float, minutes_ago: float) -> dict[str, Any]:
    panel = quantity("85354-9", 0, "mm[Hg]", minutes_ago)
    del panel["valueQuantity"]
    panel["component"] = [
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": systolic, "system": UCUM, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": {"value": diastolic, "system": UCUM, "code": "mm[Hg]"}},
    ]  # fmt: skip
    return panel


def sick(minutes_ago: float = 30) -> list[dict[str, Any]]:
    """RR 25, SpO2 91 % on FiO2 0.4, 39.2 °C, BP 95/60, HR 125: NEWS2 14 without consciousness."""
    return [
        quantity("9279-1", 25, "/min", minutes_ago),
        quantity("59408-5", 91, "%", minutes_ago),
        quantity("3150-0", 40, "%", minutes_ago),
        quantity("8310-5", 102.6, "[degF]", minutes_ago),
        blood_pressure(95, 60, minutes_ago),
        quantity("8867-4", 125, "/min", minutes_ago),
    ]


def well(minutes_ago: float = 30) -> list[dict[str, Any]]:
    return [
        quantity("9279-1", 16, "/min", minutes_ago),
        quantity("59408-5", 97, "%", minutes_ago),
        quantity("3150-0", 21, "%", minutes_ago),
        quantity("8310-5", 36.8, "Cel", minutes_ago),
        blood_pressure(125, 80, minutes_ago),
        quantity("8867-4", 72, "/min", minutes_ago),
    ]


def request(patient: str, observations: list[dict[str, Any]], **prefetch: Any) -> dict[str, Any]:
    born = date.today().replace(year=date.today().year - 60)
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": patient, "birthDate": born.isoformat()},
            "vitals": {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": o} for o in observations],
            },
            **prefetch,
        },
    }


def only_card(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert validate_response(body) == []
    (card,) = body["cards"]
    assert len(card["summary"]) < 140
    return card  # type: ignore[no-any-return]


def test_high_news2_gives_a_critical_card_listing_each_parameter(caller: Caller) -> None:
    card = only_card(caller.post(SERVICE, request(f"p-{uuid.uuid4()}", sick())))
    assert card["indicator"] == "critical"
    assert "partial" in card["summary"].lower()
    detail = card["detail"]
    for shown in ("Respiration rate", "25", "SpO2", "91", "39.2", "95", "125"):
        assert shown in detail, shown
    assert "Consciousness" in detail and "not recorded" in detail


def test_a_well_patient_gets_no_card(caller: Caller) -> None:
    response = caller.post(SERVICE, request(f"p-{uuid.uuid4()}", well()))
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_children_and_pregnancy_get_no_card_and_are_counted(
    caller: Caller, api: LiveApi, http: httpx.Client
) -> None:
    child = request(f"p-{uuid.uuid4()}", sick())
    child["prefetch"]["patient"]["birthDate"] = (
        date.today().replace(year=date.today().year - 10).isoformat()
    )
    assert caller.post(SERVICE, child).json() == {"cards": []}
    pregnant = request(
        f"p-{uuid.uuid4()}",
        sick(),
        conditions={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Condition", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "77386006"}]}}}],
        },
    )  # fmt: skip
    assert caller.post(SERVICE, pregnant).json() == {"cards": []}
    metrics = http.get(f"{api.url}/metrics").text
    assert 'cds_score_not_shown_total{reason="under-16",score="news2"}' in metrics
    assert 'cds_score_not_shown_total{reason="pregnant",score="news2"}' in metrics


def test_the_timeline_carries_values_between_calls(caller: Caller) -> None:
    patient = f"p-{uuid.uuid4()}"
    first = caller.post(SERVICE, request(patient, sick(minutes_ago=90)))
    assert only_card(first)["indicator"] == "critical"
    # The second call prefetches only a new heart rate; the rest comes from the timeline.
    second = caller.post(SERVICE, request(patient, [quantity("8867-4", 130, "/min", 5)]))
    card = only_card(second)
    assert card["indicator"] == "critical"
    assert "130" in card["detail"] and "39.2" in card["detail"]


def test_values_older_than_the_lookback_count_as_missing(caller: Caller) -> None:
    response = caller.post(SERVICE, request(f"p-{uuid.uuid4()}", sick(minutes_ago=13 * 60)))
    assert response.json() == {"cards": []}


@pytest.fixture(scope="module")
def api_without_redis(start_api: Callable[..., LiveApi]) -> LiveApi:
    return start_api(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.2)


def test_without_redis_the_card_says_it_rests_on_partial_history(
    api_without_redis: LiveApi, es_key: EhrKey, http: httpx.Client
) -> None:
    response = Caller(api_without_redis, es_key, http).post(SERVICE, request("p-nored", sick()))
    card = only_card(response)
    assert card["indicator"] == "critical"
    assert "Partial history" in card["detail"]


def test_implausible_values_are_rejected_and_counted(
    caller: Caller, api: LiveApi, http: httpx.Client
) -> None:
    observations = [*well(), quantity("8867-4", 900, "/min", 1)]
    assert caller.post(SERVICE, request(f"p-{uuid.uuid4()}", observations)).json() == {"cards": []}
    metrics = http.get(f"{api.url}/metrics").text
    line = next(
        row
        for row in metrics.splitlines()
        if row.startswith('cds_observations_total{outcome="implausible"}')
    )
    assert float(line.split()[-1]) >= 1


def test_a_configured_site_map_reads_local_codes(
    start_api: Callable[..., LiveApi],
    es_key: EhrKey,
    http: httpx.Client,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    site_map = tmp_path_factory.mktemp("site") / "hospital.toml"
    site_map.write_text(
        'name = "hospital"\n[[code]]\nsystem = "urn:oid:1.2.3.4.flowsheet"\ncode = "RR-9"\n'
        'variable = "resp_rate"\nunit = "/min"\n'
    )
    api = start_api(site_maps=[str(site_map)])
    observations = sick()
    local_rr = observations[0]
    local_rr["code"] = {"coding": [{"system": "urn:oid:1.2.3.4.flowsheet", "code": "RR-9"}]}
    del (
        local_rr["valueQuantity"]["unit"],
        local_rr["valueQuantity"]["code"],
        local_rr["valueQuantity"]["system"],
    )
    card = only_card(
        Caller(api, es_key, http).post(SERVICE, request(f"p-{uuid.uuid4()}", observations))
    )
    row = next(
        line for line in card["detail"].splitlines() if line.startswith("| Respiration rate")
    )
    assert "25" in row and row.rstrip(" |").endswith("3")
