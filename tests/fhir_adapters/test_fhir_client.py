"""FhirClient against a real FHIR server over TCP: paging, watermarks, retries, deadlines, tokens."""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from functools import cache
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from fhir_adapters.client import FhirClient, retry_after_seconds
from fhir_adapters.errors import FhirBadResponse, FhirNotFound, FhirUnavailable

from fhir_test_server import SYNTHEA_DIR, Fault, SyntheaFhirServer, SyntheaIndex, bundle_paths

TOKEN = "fhir-client-test-token-5d1c"
T = TypeVar("T")

# A handful of bundles keeps the session fixture well under a second; the first four hold 12 to
# 62 Observations a patient, enough for several pages and for lastUpdated ties.
BUNDLES = 4


@pytest.fixture(scope="session")
def synthea() -> SyntheaIndex:
    paths = bundle_paths(BUNDLES)
    if not paths:
        pytest.skip(f"Synthea bundles are not present at {SYNTHEA_DIR} (../shared/data is absent)")
    return SyntheaIndex(paths)


@pytest.fixture(scope="session")
def servers(synthea: SyntheaIndex) -> Iterator[tuple[SyntheaFhirServer, SyntheaFhirServer]]:
    ehr, elsewhere = SyntheaFhirServer(synthea), SyntheaFhirServer(synthea)
    yield ehr, elsewhere
    ehr.close()
    elsewhere.close()


@pytest.fixture
def ehr(servers: tuple[SyntheaFhirServer, SyntheaFhirServer]) -> SyntheaFhirServer:
    """The EHR's FHIR server, requiring the test token, with no faults or requests left over."""
    for server in servers:
        server.reset()
    servers[0].token = TOKEN
    return servers[0]


@pytest.fixture
def elsewhere(
    servers: tuple[SyntheaFhirServer, SyntheaFhirServer], ehr: SyntheaFhirServer
) -> SyntheaFhirServer:
    """Another server (another port, so another origin) that must never be contacted."""
    return servers[1]


@pytest.fixture
def patient(synthea: SyntheaIndex) -> str:
    """The loaded patient with the most Observations."""
    return max(synthea.patient_ids(), key=lambda p: len(synthea.of_patient("Observation", p)))


@cache
def tls() -> ssl.SSLContext:
    """One default TLS context for every test client: building one per client costs ~0.1 s."""
    return ssl.create_default_context()


def call(
    server: SyntheaFhirServer,
    scenario: Callable[[FhirClient], Awaitable[T]],
    token: str | None = TOKEN,
    **options: Any,
) -> T:
    """Run ``scenario`` with a FhirClient on a fresh httpx.AsyncClient over TCP."""
    settings: dict[str, Any] = {"timeout_s": 5.0, "max_pages": 20, "backoff_s": 0.01} | options

    async def main() -> T:
        async with httpx.AsyncClient(verify=tls()) as http:
            secret = SecretStr(token) if token is not None else None
            return await scenario(FhirClient(http, server.base_url, secret, **settings))

    return asyncio.run(main())


def ids(entries: list[dict[str, Any]]) -> list[str]:
    return [e["resource"]["id"] for e in entries]


def stamp(resource: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(resource["meta"]["lastUpdated"])


@pytest.mark.integration
@pytest.mark.parametrize("link_style", ["absolute", "relative"])
def test_paging_collects_every_observation_once(
    ehr: SyntheaFhirServer, synthea: SyntheaIndex, patient: str, link_style: Any
) -> None:
    ehr.link_style = link_style
    expected = {r["id"] for r in synthea.of_patient("Observation", patient)}
    bundle, complete = call(ehr, lambda c: c.search(f"Observation?patient={patient}&_count=7"))
    got = ids(bundle["entry"])
    assert complete
    assert len(got) == len(set(got)) == len(expected)
    assert set(got) == expected
    assert len(ehr.requests) == math.ceil(len(expected) / 7)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in ehr.requests)
    assert not any(link["relation"] == "next" for link in bundle["link"])


@pytest.mark.integration
def test_paging_stops_at_max_pages_and_says_incomplete(
    ehr: SyntheaFhirServer, patient: str
) -> None:
    bundle, complete = call(
        ehr, lambda c: c.search(f"Observation?patient={patient}&_count=5"), max_pages=2
    )
    assert not complete
    assert len(bundle["entry"]) == 15
    assert len(ehr.requests) == 3


@pytest.mark.integration
def test_search_filters_by_category(
    ehr: SyntheaFhirServer, synthea: SyntheaIndex, patient: str
) -> None:
    query = f"Observation?patient=Patient/{patient}&category=vital-signs"
    bundle, complete = call(ehr, lambda c: c.search(query))
    vitals = [
        r
        for r in synthea.of_patient("Observation", patient)
        if any(c["code"] == "vital-signs" for cat in r["category"] for c in cat["coding"])
    ]
    assert complete
    assert sorted(ids(bundle["entry"])) == sorted(r["id"] for r in vitals)


@pytest.mark.integration
def test_watermark_returns_only_newer_resources(
    ehr: SyntheaFhirServer, synthea: SyntheaIndex, patient: str
) -> None:
    observations = synthea.of_patient("Observation", patient)
    stamps = sorted({stamp(r) for r in observations})
    newest = stamps[-1]
    middle = stamps[len(stamps) // 2]
    params = {"patient": patient, "_count": "10"}

    async def scenario(client: FhirClient) -> list[Any]:
        return [
            await client.search_since("Observation", params, None),
            await client.search_since("Observation", params, middle),
            await client.search_since("Observation", params, newest),
        ]

    (everything, top, done), (newer, top_newer, done_newer), (none, top_none, done_none) = call(
        ehr, scenario
    )
    assert done and done_newer and done_none
    assert sorted(ids(everything)) == sorted(r["id"] for r in observations)
    assert top == newest
    assert sorted(ids(newer)) == sorted(r["id"] for r in observations if stamp(r) > middle)
    assert newer and all(stamp(e["resource"]) > middle for e in newer)
    assert top_newer == newest
    assert none == [] and top_none is None
    # Oldest first, as _sort=_lastUpdated asks.
    assert [stamp(e["resource"]) for e in newer] == sorted(stamp(e["resource"]) for e in newer)
    first = parse_qs(urlsplit(ehr.requests[0].path).query)
    assert first["_sort"] == ["_lastUpdated"] and "_lastUpdated" not in first
    with_since = parse_qs(urlsplit(next(r.path for r in ehr.requests if "gt" in r.path)).query)
    assert with_since["_lastUpdated"] == [f"gt{middle.isoformat()}"]


@pytest.mark.integration
def test_partial_reads_advance_the_watermark_without_skipping_ties(
    ehr: SyntheaFhirServer, synthea: SyntheaIndex, patient: str
) -> None:
    # One page a call (max_pages=0) cuts through groups of Observations sharing one lastUpdated;
    # a worker looping on the watermark must still end up with every one of them.
    expected = {r["id"] for r in synthea.of_patient("Observation", patient)}
    params = {"patient": patient, "_count": "25"}

    async def scenario(client: FhirClient) -> tuple[set[str], int]:
        seen: set[str] = set()
        since: datetime | None = None
        for calls in range(1, 20):
            entries, newest, complete = await client.search_since("Observation", params, since)
            seen.update(ids(entries))
            if complete:
                return seen, calls
            assert newest is not None and (since is None or newest > since)
            since = newest
        raise AssertionError("the watermark never reached the end")

    seen, calls = call(ehr, scenario, max_pages=0)
    assert seen == expected
    assert calls > 1


@pytest.mark.integration
def test_429_with_retry_after_is_retried_after_waiting(
    ehr: SyntheaFhirServer, patient: str
) -> None:
    ehr.fail_next(Fault(429, headers={"Retry-After": "1"}))
    resource = call(ehr, lambda c: c.get(f"Patient/{patient}"))
    assert resource["id"] == patient
    assert len(ehr.requests) == 2
    # Only a lower bound: the client may not come back before the server said it could.
    assert ehr.requests[1].at - ehr.requests[0].at >= 0.95


@pytest.mark.integration
@pytest.mark.parametrize(
    "retry_after",
    ["30", format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)],
    ids=["seconds", "http-date"],
)
def test_retry_after_beyond_the_cap_gives_up_at_once(
    ehr: SyntheaFhirServer, patient: str, retry_after: str
) -> None:
    ehr.fail_next(Fault(503, headers={"Retry-After": retry_after}), count=3)
    with pytest.raises(FhirUnavailable) as caught:
        call(ehr, lambda c: c.get(f"Patient/{patient}"), max_retry_after_s=2.0)
    assert len(ehr.requests) == 1
    assert caught.value.status == 503
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 2.0


@pytest.mark.integration
def test_503_then_success(ehr: SyntheaFhirServer, patient: str) -> None:
    ehr.fail_next(Fault(503), count=2)
    bundle, complete = call(ehr, lambda c: c.search(f"Observation?patient={patient}"), retries=2)
    assert complete and bundle["entry"]
    assert len(ehr.requests) == 2 + math.ceil(bundle["total"] / ehr.page_size)


@pytest.mark.integration
def test_a_failed_next_page_is_retried_too(ehr: SyntheaFhirServer, patient: str) -> None:
    async def scenario(client: FhirClient) -> tuple[dict[str, Any], bool]:
        first = await client.get(f"Observation?patient={patient}&_count=10")
        ehr.fail_next(Fault(429, headers={"Retry-After": "0"}))
        return await client.complete_bundle(first)

    bundle, complete = call(ehr, scenario)
    assert complete and len(bundle["entry"]) == bundle["total"]
    assert ehr.requests[1].path == ehr.requests[2].path


@pytest.mark.integration
def test_persistent_500_gives_up_after_the_configured_attempts(
    ehr: SyntheaFhirServer, patient: str
) -> None:
    ehr.fail_next(Fault(500), count=10)
    with pytest.raises(FhirUnavailable) as caught:
        call(ehr, lambda c: c.get(f"Patient/{patient}"), retries=3)
    assert caught.value.status == 500
    assert len(ehr.requests) == 4


@pytest.mark.integration
def test_slow_server_times_out(ehr: SyntheaFhirServer, patient: str) -> None:
    ehr.fail_next(Fault(delay_s=1.0), count=2)
    with pytest.raises(FhirUnavailable, match="ReadTimeout"):
        call(ehr, lambda c: c.get(f"Patient/{patient}"), timeout_s=0.2, retries=1)
    assert len(ehr.requests) == 2


@pytest.mark.integration
def test_deadline_bounds_a_slow_request(ehr: SyntheaFhirServer, patient: str) -> None:
    ehr.fail_next(Fault(delay_s=1.5))
    with pytest.raises(FhirUnavailable, match="deadline"):
        call(ehr, lambda c: c.get(f"Patient/{patient}"), timeout_s=5.0, deadline_s=0.3)
    assert len(ehr.requests) == 1


@pytest.mark.integration
def test_deadline_refuses_a_retry_that_would_outlast_it(
    ehr: SyntheaFhirServer, patient: str
) -> None:
    ehr.fail_next(Fault(429, headers={"Retry-After": "1"}), count=3)
    with pytest.raises(FhirUnavailable, match="deadline") as caught:
        call(ehr, lambda c: c.get(f"Patient/{patient}"), deadline_s=0.5)
    assert caught.value.status == 429
    assert len(ehr.requests) == 1


@pytest.mark.integration
def test_connection_errors_are_retried_then_unavailable(ehr: SyntheaFhirServer) -> None:
    closed = SyntheaFhirServer(ehr.index)
    closed.close()  # its port now refuses connections
    with pytest.raises(FhirUnavailable, match="ConnectError"):
        call(closed, lambda c: c.get("Patient/x"), retries=2)


@pytest.mark.integration
def test_404_is_not_found(ehr: SyntheaFhirServer) -> None:
    with pytest.raises(FhirNotFound) as caught:
        call(ehr, lambda c: c.get("Patient/no-such-patient"))
    assert caught.value.status == 404
    assert len(ehr.requests) == 1


@pytest.mark.integration
def test_missing_token_is_a_bad_response_not_retried(ehr: SyntheaFhirServer, patient: str) -> None:
    with pytest.raises(FhirBadResponse) as caught:
        call(ehr, lambda c: c.get(f"Patient/{patient}"), token=None)
    assert caught.value.status == 401
    assert len(ehr.requests) == 1
    assert "authorization" not in ehr.requests[0].headers


@pytest.mark.integration
def test_next_link_to_another_host_is_not_followed(
    ehr: SyntheaFhirServer, elsewhere: SyntheaFhirServer, patient: str
) -> None:
    ehr.next_base = elsewhere.base_url

    async def scenario(client: FhirClient) -> list[Any]:
        return [
            await client.search(f"Observation?patient={patient}&_count=5"),
            await client.search_since("Observation", {"patient": patient, "_count": "5"}, None),
        ]

    (bundle, complete), (entries, newest, since_complete) = call(ehr, scenario)
    assert not complete and len(bundle["entry"]) == 5
    assert not since_complete and len(entries) == 5
    assert newest is None or newest <= max(stamp(e["resource"]) for e in entries)
    assert elsewhere.requests == []


@pytest.mark.integration
def test_token_never_reaches_another_server(
    ehr: SyntheaFhirServer, elsewhere: SyntheaFhirServer, patient: str
) -> None:
    ehr.fail_next(Fault(302, headers={"Location": f"{elsewhere.base_url}/Patient/{patient}"}))

    async def scenario(client: FhirClient) -> list[str]:
        refused = []
        for attempt in (
            lambda: client.get(f"Patient/{patient}"),  # answered with a redirect to elsewhere
            lambda: client.get(f"{elsewhere.base_url}/Patient/{patient}"),
            lambda: client.get(f"http://127.0.0.1:{urlsplit(elsewhere.base_url).port}/x"),
            lambda: client.complete_bundle(
                {
                    "resourceType": "Bundle",
                    "link": [{"relation": "next", "url": f"{elsewhere.base_url}/Observation"}],
                }
            ),
        ):
            try:
                await attempt()
            except FhirBadResponse as exc:
                refused.append(str(exc))
        return refused

    refused = call(ehr, scenario)
    assert len(refused) == 3  # the next link is not an error: paging just ends there
    assert elsewhere.requests == []
    assert len(ehr.requests) == 1


@pytest.mark.integration
def test_logs_carry_no_query_id_or_token(
    ehr: SyntheaFhirServer, elsewhere: SyntheaFhirServer, patient: str, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG, logger="fhir_adapters")
    ehr.next_base = elsewhere.base_url
    ehr.fail_next(Fault(503, headers={"Retry-After": "0"}))
    call(ehr, lambda c: c.search(f"Observation?patient={patient}&_count=5"))
    ehr.fail_next(Fault(429, headers={"Retry-After": "60"}))
    with pytest.raises(FhirUnavailable):
        call(ehr, lambda c: c.get(f"Patient/{patient}"))
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("fhir_adapters")]
    assert len(messages) >= 3  # a retry, the ignored next link, the over-the-cap give-up
    for message in messages:
        assert patient not in message and TOKEN not in message and "?" not in message


def test_retry_after_parsing() -> None:
    now = datetime(2025, 7, 28, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds(" 0 ", now) == 0.0
    assert retry_after_seconds("Mon, 28 Jul 2025 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Mon, 28 Jul 2025 11:00:00 GMT", now) == 0.0  # already past
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds("-5", now) is None
    assert retry_after_seconds("\u00b2", now) is None  # a digit to str.isdigit, not to HTTP


def test_search_since_refuses_bad_arguments() -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            client = FhirClient(http, "http://127.0.0.1:9/fhir", None, timeout_s=1, max_pages=1)
            with pytest.raises(ValueError, match="timezone"):
                await client.search_since("Observation", {}, datetime(2025, 1, 1))
            with pytest.raises(ValueError, match="_lastUpdated"):
                await client.search_since("Observation", {"_sort": "-date"}, None)
            with pytest.raises(ValueError, match="resource type"):
                await client.search_since("Observation?x=1", {}, None)

    asyncio.run(scenario())
