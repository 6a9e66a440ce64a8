"""FhirClient writes against a real FHIR server over TCP: methods, headers, retries, confinement."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from fhir_adapters.client import FhirClient, WriteResult
from fhir_adapters.errors import FhirBadResponse, FhirNotFound, FhirUnavailable

TOKEN = "fhir-write-test-token-93ab"
T = TypeVar("T")
SYSTEM = "urn:sepsis-cds:risk"


@dataclass(frozen=True)
class Fault:
    """How to answer one request instead of normally: a status (None: normally) after a delay."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay_s: float = 0.0


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class WriteServer:
    """A FHIR server that stores what is POSTed or PUT and answers as FHIR R4 §3.1.0 says.

    It requires ``token`` when set (401 otherwise), numbers created resources ``new-1``, … and
    answers with the stored resource, a ``Location`` and an ``ETag``, unless ``empty`` is set
    (a server that ignores ``Prefer: return=representation``).
    """

    def __init__(self) -> None:
        self.token: str | None = TOKEN
        self.empty = False
        self.seen: list[Seen] = []
        self.faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                owner._handle(self)

            def do_POST(self) -> None:
                owner._handle(self)

            def do_PUT(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/fhir"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.seen.append(Seen(handler.command, handler.path, headers, body))
            fault = self.faults.popleft() if self.faults else None
            number = sum(1 for s in self.seen if s.method != "GET")
        if fault is not None:
            time.sleep(fault.delay_s)
            if fault.status is not None:
                self._send(handler, fault.status, fault.body, fault.headers)
                return
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            self._send(handler, 401, _outcome("login"), {"WWW-Authenticate": "Bearer"})
            return
        parts = urlsplit(handler.path)
        segments = parts.path.removeprefix("/fhir/").split("/")
        if handler.command == "GET":
            self._send(handler, 200, {"resourceType": segments[0], "id": segments[-1]}, {})
            return
        resource = json.loads(body)
        if handler.command == "POST" or (handler.command == "PUT" and parts.query):
            status, resource_id = 201, f"new-{number}"
        else:
            status, resource_id = 200, segments[1]
        stored = {**resource, "id": resource_id, "meta": {"versionId": str(number)}}
        answer_headers = {
            "Location": f"{self.base_url}/{segments[0]}/{resource_id}/_history/{number}",
            "ETag": f'W/"{number}"',
        }
        self._send(handler, status, None if self.empty else stored, answer_headers)

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str]
    ) -> None:
        content = b"" if body is None else json.dumps(body).encode()
        handler.send_response(status)
        if content:
            handler.send_header("Content-Type", "application/fhir+json")
        handler.send_header("Content-Length", str(len(content)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(content)


def _outcome(code: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code}]}


@pytest.fixture
def ehr() -> Iterator[WriteServer]:
    server = WriteServer()
    yield server
    server.close()


@pytest.fixture
def elsewhere() -> Iterator[WriteServer]:
    """Another server (another port, so another origin) that must never be contacted."""
    server = WriteServer()
    yield server
    server.close()


@cache
def tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def call(
    server: WriteServer,
    scenario: Callable[[FhirClient], Awaitable[T]],
    token: str | None = TOKEN,
    base_url: str | None = None,
    **options: Any,
) -> T:
    """Run ``scenario`` with a FhirClient on a fresh httpx.AsyncClient over TCP."""
    settings: dict[str, Any] = {"timeout_s": 5.0, "max_pages": 5, "backoff_s": 0.01} | options

    async def main() -> T:
        async with httpx.AsyncClient(verify=tls()) as http:
            secret = SecretStr(token) if token is not None else None
            client = FhirClient(http, base_url or server.base_url, secret, **settings)
            return await scenario(client)

    return asyncio.run(main())


def assessment(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "RiskAssessment",
        "status": "final",
        "identifier": [{"system": SYSTEM, "value": "p-7f3a"}],
        "subject": {"reference": "Patient/p1"},
        "prediction": [{"probabilityDecimal": 0.31}],
        **extra,
    }


def assert_write_headers(seen: Seen) -> None:
    assert seen.headers["content-type"] == "application/fhir+json"
    assert seen.headers["accept"] == "application/fhir+json"
    assert seen.headers["prefer"] == "return=representation"
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.integration
def test_create_posts_to_the_type_and_returns_the_stored_resource(ehr: WriteServer) -> None:
    result = call(ehr, lambda c: c.create(assessment()))
    [seen] = ehr.seen
    assert (seen.method, seen.path) == ("POST", "/fhir/RiskAssessment")
    assert_write_headers(seen)
    assert "if-none-exist" not in seen.headers
    assert json.loads(seen.body) == assessment()
    assert result.created and result.status == 201
    assert result.resource["id"] == "new-1" and result.resource["status"] == "final"
    assert result.location == f"{ehr.base_url}/RiskAssessment/new-1/_history/1"
    assert result.etag == 'W/"1"'


@pytest.mark.integration
def test_conditional_create_sends_if_none_exist(ehr: WriteServer) -> None:
    call(ehr, lambda c: c.create(assessment(), if_none_exist={"identifier": f"{SYSTEM}|p-7f3a"}))
    [seen] = ehr.seen
    assert parse_qs(seen.headers["if-none-exist"]) == {"identifier": [f"{SYSTEM}|p-7f3a"]}


@pytest.mark.integration
def test_update_puts_to_the_instance_with_if_match(ehr: WriteServer) -> None:
    result = call(ehr, lambda c: c.update(assessment(id="ra-1"), if_match='W/"4"'))
    [seen] = ehr.seen
    assert (seen.method, seen.path) == ("PUT", "/fhir/RiskAssessment/ra-1")
    assert_write_headers(seen)
    assert seen.headers["if-match"] == 'W/"4"'
    assert json.loads(seen.body) == assessment(id="ra-1")
    assert result == WriteResult(
        status=200,
        resource={**assessment(id="ra-1"), "meta": {"versionId": "1"}},
        location=f"{ehr.base_url}/RiskAssessment/ra-1/_history/1",
        etag='W/"1"',
    )
    assert not result.created


@pytest.mark.integration
def test_conditional_update_puts_to_the_type_with_the_search(ehr: WriteServer) -> None:
    search = {"identifier": f"{SYSTEM}|p-7f3a"}
    result = call(ehr, lambda c: c.conditional_update(assessment(), search))
    [seen] = ehr.seen
    parts = urlsplit(seen.path)
    assert (seen.method, parts.path) == ("PUT", "/fhir/RiskAssessment")
    assert parse_qs(parts.query) == {"identifier": [f"{SYSTEM}|p-7f3a"]}
    assert_write_headers(seen)
    assert "if-match" not in seen.headers
    assert result.created and result.resource["id"] == "new-1"


@pytest.mark.integration
def test_an_answer_without_a_body_gives_the_location(ehr: WriteServer) -> None:
    ehr.empty = True
    result = call(ehr, lambda c: c.create(assessment()))
    assert result.resource == {} and result.created
    assert result.location == f"{ehr.base_url}/RiskAssessment/new-1/_history/1"


@pytest.mark.integration
@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_are_retried_for_writes(ehr: WriteServer, status: int) -> None:
    ehr.faults.append(Fault(status, {"Retry-After": "0"}, _outcome("throttled")))
    result = call(ehr, lambda c: c.conditional_update(assessment(), {"identifier": "x|y"}))
    assert result.created
    assert [s.method for s in ehr.seen] == ["PUT", "PUT"]
    assert ehr.seen[0].body == ehr.seen[1].body and ehr.seen[0].path == ehr.seen[1].path


@pytest.mark.integration
@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_5xx_that_may_follow_a_write_is_not_retried(ehr: WriteServer, status: int) -> None:
    ehr.faults.extend([Fault(status, body=_outcome("exception"))] * 3)
    with pytest.raises(FhirUnavailable) as caught:
        call(ehr, lambda c: c.create(assessment()), retries=3)
    assert caught.value.status == status
    assert len(ehr.seen) == 1


@pytest.mark.integration
def test_a_read_still_retries_a_500(ehr: WriteServer) -> None:
    ehr.faults.append(Fault(500, body=_outcome("exception")))
    assert call(ehr, lambda c: c.get("Patient/p1"))["id"] == "p1"
    assert len(ehr.seen) == 2


@pytest.mark.integration
def test_a_write_that_timed_out_is_not_retried(ehr: WriteServer) -> None:
    ehr.faults.extend([Fault(delay_s=1.0)] * 3)
    with pytest.raises(FhirUnavailable, match=r"ReadTimeout.*may have been applied"):
        call(ehr, lambda c: c.update(assessment(id="ra-1")), timeout_s=0.2, retries=2)
    assert len(ehr.seen) == 1


@pytest.mark.integration
def test_a_write_that_could_not_connect_is_retried(
    ehr: WriteServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fhir_adapters")
    closed = WriteServer()
    closed.close()  # its port now refuses connections
    with pytest.raises(FhirUnavailable, match="ConnectError"):
        call(closed, lambda c: c.create(assessment()), retries=2)
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert retries == [
        "FHIR write failed (ConnectError); retry 1 of 2",
        "FHIR write failed (ConnectError); retry 2 of 2",
    ]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("write", "method"),
    [
        (lambda c: c.create(assessment()), "POST"),
        (lambda c: c.update(assessment(id="ra-1")), "PUT"),
        (lambda c: c.get("RiskAssessment/ra-1"), "GET"),
    ],
    ids=["create", "update", "read"],
)
def test_a_401_is_a_bad_response_with_status_401_not_retried(
    ehr: WriteServer, write: Callable[[FhirClient], Awaitable[Any]], method: str
) -> None:
    with pytest.raises(FhirBadResponse) as caught:
        call(ehr, write, token="expired-token")
    assert caught.value.status == 401
    assert [s.method for s in ehr.seen] == [method]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("status", "error"),
    [(400, FhirBadResponse), (412, FhirBadResponse), (422, FhirBadResponse), (404, FhirNotFound)],
)
def test_refused_writes_carry_their_status(
    ehr: WriteServer, status: int, error: type[Exception]
) -> None:
    ehr.faults.append(Fault(status, body=_outcome("invalid")))
    with pytest.raises(error) as caught:
        call(ehr, lambda c: c.update(assessment(id="ra-1"), if_match='W/"1"'))
    assert getattr(caught.value, "status", None) == status
    assert len(ehr.seen) == 1


@pytest.mark.integration
def test_a_redirect_to_another_server_is_not_followed_with_the_write(
    ehr: WriteServer, elsewhere: WriteServer
) -> None:
    # 307 and 308 keep the method and the body: following one would replay the write (and the
    # token) to whatever server the Location names.
    ehr.faults.append(Fault(307, {"Location": f"{elsewhere.base_url}/RiskAssessment"}))
    with pytest.raises(FhirBadResponse, match="redirect") as caught:
        call(ehr, lambda c: c.create(assessment()))
    assert caught.value.status == 307
    assert len(ehr.seen) == 1 and elsewhere.seen == []


@pytest.mark.integration
def test_writes_stay_under_the_base_url(ehr: WriteServer, elsewhere: WriteServer) -> None:
    async def scenario(client: FhirClient) -> list[str]:
        refused = []
        attempts: list[Callable[[], Awaitable[WriteResult]]] = [
            lambda: client.create({"resourceType": f"{elsewhere.base_url}/Patient"}),
            lambda: client.create({"resourceType": "../Patient"}),
            lambda: client.create({"id": "x"}),
            lambda: client.update(assessment(id="../../other/Patient/x")),
            lambda: client.update(assessment(id="a/b")),
            lambda: client.update(assessment(id="x" * 65)),
            lambda: client.update(assessment()),
            lambda: client.update(assessment(id="ra-1"), if_match='W/"1"\r\nX-Evil: 1'),
            lambda: client.conditional_update(assessment(), {}),
            lambda: client.create(assessment(), if_none_exist={}),
        ]
        for attempt in attempts:
            try:
                await attempt()
            except ValueError as exc:
                refused.append(str(exc))
        # A search value full of URL syntax is encoded into the query, never into the path.
        await client.conditional_update(assessment(), {"identifier": "/../Patient?x=#y"})
        return refused

    refused = call(ehr, scenario)
    assert len(refused) == 10
    [seen] = ehr.seen
    assert urlsplit(seen.path).path == "/fhir/RiskAssessment"
    assert parse_qs(urlsplit(seen.path).query) == {"identifier": ["/../Patient?x=#y"]}
    assert elsewhere.seen == []


@pytest.mark.integration
def test_a_base_url_on_another_server_gets_the_token_only_there(
    ehr: WriteServer, elsewhere: WriteServer
) -> None:
    elsewhere.token = None
    call(ehr, lambda c: c.create(assessment()), token=TOKEN, base_url=elsewhere.base_url)
    assert ehr.seen == []
    [seen] = elsewhere.seen
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.integration
def test_without_a_token_no_authorization_is_sent(ehr: WriteServer) -> None:
    ehr.token = None
    call(ehr, lambda c: c.create(assessment()), token=None)
    assert "authorization" not in ehr.seen[0].headers


@pytest.mark.integration
def test_write_logs_carry_no_token_or_id(
    ehr: WriteServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fhir_adapters")
    ehr.faults.append(Fault(429, {"Retry-After": "0"}))
    call(ehr, lambda c: c.conditional_update(assessment(), {"identifier": f"{SYSTEM}|p-7f3a"}))
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("fhir_adapters")]
    assert messages
    for message in messages:
        assert TOKEN not in message and "p-7f3a" not in message and "?" not in message
