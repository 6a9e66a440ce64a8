"""A hospital EHR stand-in for the worker tests: FHIR R4 over real HTTP, and a SMART token endpoint.

A helper module, not a test. ``EhrServer`` listens on 127.0.0.1 (a free port) in a background
thread and holds resources in memory, by type and id:

- **Data**: ``load_synthea`` reads Synthea transaction bundles in place (``urn:uuid:`` references
  rewritten to ``Type/id``; a resource without ``meta.lastUpdated`` gets its clinical time, as in
  ``tests/fhir_adapters/fhir_test_server.py``). ``add``/``update`` stamp ``meta.lastUpdated`` with the
  server clock, which only moves forward (never to or before a stamp already held), and bump
  ``meta.versionId``. ``admit`` makes the in-progress inpatient Encounter at a location that the
  census looks for (Synthea's encounters are all finished).
- **Search** (searchset Bundles with ``total``, ``fullUrl``, ``search.mode``, ``self``/``next``
  links): the parameters in ``SEARCH_PARAMS``, plus ``_id``, ``_lastUpdated`` (``gt``/``ge``/``lt``/
  ``le``/``eq``, with FHIR's precision ranges, R4 §3.1.1.4.2), ``_sort=[-]_lastUpdated`` and
  ``_count``. As in FHIR, commas OR values and a repeated parameter ANDs. Anything else is a 400, so
  a client sending something unexpected is noticed. Paging follows an opaque ``_page`` token on the
  same base URL; the match list is fixed at the first page, so a resource updated while a client
  pages appears once, at its old place, with its new content.
- **Writes**: create (``POST``, also conditional with ``If-None-Exist``), update (``PUT Type/id``,
  ``If-Match`` honoured) and conditional update (``PUT Type?search``: 0 matches create, 1 updates,
  more are a 412), answering with ``Location``, ``ETag`` and the body ``Prefer`` asks for.
- **SMART Backend Services** token endpoint (``token_url``) checking the ``client_assertion``
  against the JWKS of a registered client, and bearer tokens required on FHIR requests
  (``require_auth``).
- **Failure injection** (``fail_next``, ``slow_next``, ``delay_s``) and a record of every request.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import jwt

_REPO = Path(__file__).resolve().parents[2]
_SYNTHEA = Path("data/synthea/exafluence-qicore-synthea-2025")
#: Where the Synthea bundles are looked for: ``shared/`` inside the checkout, else beside it.
SYNTHEA_DIRS = (_REPO / "shared" / _SYNTHEA, _REPO.parent / "shared" / _SYNTHEA)

FHIR_JSON = "application/fhir+json"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
UCUM = "http://unitsofmeasure.org"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS384", "ES384")  # SMART Backend Services: the server SHALL support these
MAX_ASSERTION_LIFETIME_S = 300  # ... and refuse an exp more than five minutes ahead
FALLBACK_LAST_UPDATED = "2025-01-01T00:00:00Z"
MAX_COUNT = 1000

_COMMON = frozenset({"_id", "_lastUpdated", "_sort", "_count"})
#: Search parameters per resource type, beside ``_COMMON``.
SEARCH_PARAMS: dict[str, frozenset[str]] = {
    "Observation": frozenset({"patient", "subject", "category", "code", "encounter"}),
    "Encounter": frozenset({"patient", "subject", "status", "location", "class"}),
    "RiskAssessment": frozenset({"patient", "subject", "identifier", "encounter"}),
    "Patient": frozenset({"identifier"}),
}
_DATE_FIELDS = ("issued", "effectiveDateTime", "recordedDate", "authoredOn", "date")
_TYPE = re.compile(r"[A-Z][A-Za-z]+")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 §2.24.0.1


class Request(NamedTuple):
    """One request as the server saw it; ``query`` as ``parse_qs`` gives it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lowercased


@dataclass
class TokenRequest:
    """One call of the token endpoint: the form, the assertion's header and claims (as sent, also
    when refused), and the answer: 200, or the status with the OAuth ``error`` and a ``reason``."""

    form: dict[str, str]
    header: dict[str, Any] | None = None
    claims: dict[str, Any] | None = None
    status: int = 0
    error: str | None = None
    reason: str | None = None


@dataclass
class _Fault:
    remaining: int
    status: int | None  # None: answer normally, after the delay
    retry_after: int | str | None
    delay_s: float
    prefix: str | None


@dataclass
class _Client:
    jwks: dict[str, Any]
    scopes: frozenset[str] | None


@dataclass
class _Token:
    client_id: str
    scope: str
    expires_at: float  # time.monotonic()


@dataclass
class _Answer:
    status: int
    body: Any = None  # JSON, or None for no body
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = FHIR_JSON


class _Refused(Exception):
    """Ends handling a request with an error answer."""

    def __init__(self, status: int, code: str, text: str, headers: dict[str, str] | None = None):
        super().__init__(text)
        self.answer = _Answer(status, outcome(code, text), headers or {})


class _OAuthRefused(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def outcome(code: str, text: str = "") -> dict[str, Any]:
    """An OperationOutcome with one error issue."""
    issue: dict[str, Any] = {"severity": "error", "code": code}
    if text:
        issue["diagnostics"] = text
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def synthea_bundles(limit: int | None = None) -> list[Path]:
    """Patient bundles (not the hospital/practitioner ones), in a stable order; [] when absent."""
    for folder in SYNTHEA_DIRS:
        paths = [
            p
            for p in sorted(folder.glob("*/fhir/*.json.gz"))
            if not p.name.startswith(("hospitalInformation", "practitionerInformation"))
        ]
        if paths:
            return paths[:limit]
    return []


def iso(moment: datetime | str) -> str:
    """A FHIR instant for an aware datetime (UTC, ``Z``); a string is taken as written."""
    if isinstance(moment, str):
        return moment
    if moment.tzinfo is None:
        raise ValueError("a FHIR instant needs a time zone")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def observation(
    patient_id: str,
    code: str,
    value: float,
    unit: str,
    effective: datetime | str,
    *,
    category: str = "vital-signs",
    display: str | None = None,
) -> dict[str, Any]:
    """A final LOINC-coded Observation with a UCUM quantity, ready for ``EhrServer.add``."""
    coding = {"system": "http://loinc.org", "code": code} | (
        {"display": display} if display else {}
    )
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": category}]}],
        "code": {"coding": [coding]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": iso(effective),
        "issued": iso(effective),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _parse_instant(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _date_range(value: str) -> tuple[datetime, datetime]:
    """The range ``[lo, hi)`` a search date stands for, by its precision (R4 §3.1.1.4.2)."""
    text = value.replace(" ", "+")  # an unencoded "+" of a zone offset arrives as a space
    if "T" not in text:
        parts = [int(p) for p in text.split("-")]
        if len(parts) == 1:
            return datetime(parts[0], 1, 1, tzinfo=UTC), datetime(parts[0] + 1, 1, 1, tzinfo=UTC)
        year, month = parts[0], parts[1]
        lo = datetime(year, month, 1, tzinfo=UTC)
        if len(parts) == 2:
            return lo, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        lo = lo.replace(day=parts[2])
        return lo, lo + timedelta(days=1)
    lo = _parse_instant(text)
    clock = re.split(r"[Z+-]", text.split("T", 1)[1])[0]
    if "." in clock:
        step = timedelta(microseconds=10 ** max(0, 6 - len(clock.split(".", 1)[1])))
    else:
        step = timedelta(seconds=1) if clock.count(":") == 2 else timedelta(minutes=1)
    return lo, lo + step


def _date_matches(stamp: datetime, condition: str) -> bool:
    prefix, rest = (condition[:2], condition[2:]) if condition[:2].isalpha() else ("eq", condition)
    lo, hi = _date_range(rest)
    tests = {
        "gt": stamp >= hi,
        "ge": stamp >= lo,
        "lt": stamp < lo,
        "le": stamp < hi,
        "eq": lo <= stamp < hi,
    }
    if prefix not in tests:
        raise ValueError(f"unsupported date prefix {prefix}")
    return tests[prefix]


def _last_updated(resource: dict[str, Any]) -> datetime:
    return _parse_instant(resource["meta"]["lastUpdated"])


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _token_matches(concepts: Any, token: str) -> bool:
    """``code``, ``system|code`` or ``|code`` against Codings or CodeableConcepts."""
    system, bar, code = token.rpartition("|")
    for concept in _as_list(concepts):
        codings = concept.get("coding") if "coding" in concept else [concept]
        for coding in _as_list(codings):
            if coding.get("code") != code:
                continue
            if not bar or coding.get("system") == (system or None):
                return True
    return False


def _identifier_matches(identifiers: Any, token: str) -> bool:
    system, bar, value = token.rpartition("|")
    for ident in _as_list(identifiers):
        if bar and system and ident.get("system") != system:
            continue
        if bar and not system and ident.get("system"):
            continue
        if not value or ident.get("value") == value:
            return True
    return False


def _reference_matches(reference: Any, wanted: str, target_type: str, base: str) -> bool:
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str):
        return False
    ref = ref.removeprefix(base + "/")
    return ref == (wanted if "/" in wanted else f"{target_type}/{wanted}")


def _matches(resource: dict[str, Any], name: str, token: str, base: str) -> bool:
    """One search value against one resource; ``category``, ``code`` and ``class`` are tokens."""
    if name in ("patient", "subject", "encounter"):
        element, target = (
            ("encounter", "Encounter") if name == "encounter" else ("subject", "Patient")
        )
        return _reference_matches(resource.get(element), token, target, base)
    if name == "location":
        return any(
            _reference_matches(entry.get("location"), token, "Location", base)
            for entry in _as_list(resource.get("location"))
        )
    if name in ("_id", "status"):
        return resource.get(name.lstrip("_")) == token
    if name == "identifier":
        return _identifier_matches(resource.get("identifier"), token)
    return _token_matches(resource.get(name), token)


def _rewrite_references(value: Any, targets: dict[str, str]) -> None:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref in targets:
            value["reference"] = targets[ref]
        for child in value.values():
            _rewrite_references(child, targets)
    elif isinstance(value, list):
        for child in value:
            _rewrite_references(child, targets)


def _clinical_time(resource: dict[str, Any]) -> str:
    for name in _DATE_FIELDS:
        if isinstance(resource.get(name), str) and "T" in resource[name]:
            return str(resource[name])
    period = resource.get("effectivePeriod") or resource.get("period") or {}
    if isinstance(period.get("start"), str) and "T" in period["start"]:
        return str(period["start"])
    return FALLBACK_LAST_UPDATED


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up on a slow answer has closed its socket before the answer is
        # written; that is the point of the delay, not an error of the server.
        pass


class EhrServer:
    """The EHR: FHIR base ``url``, token endpoint ``token_url``; ``close()`` or use ``with``."""

    def __init__(
        self, *, require_auth: bool = True, token_lifetime_s: int = 300, page_size: int = 50
    ) -> None:
        #: FHIR requests need a bearer token issued here and not expired.
        self.require_auth = require_auth
        #: ``expires_in`` of the tokens issued from now on.
        self.token_lifetime_s = token_lifetime_s
        #: ``_count`` when the client sends none.
        self.page_size = page_size
        #: Every request answers this many seconds late (under ``delay_path`` only, when set).
        self.delay_s = 0.0
        self.delay_path: str | None = None
        self.requests: list[Request] = []
        self.token_requests: list[TokenRequest] = []
        self._store: dict[str, dict[str, dict[str, Any]]] = {}
        self._written: dict[str, dict[str, None]] = {}  # ids written over HTTP, in order
        self._pages: dict[str, tuple[str, list[str], int, int]] = {}  # type, ids, offset, count
        self._clients: dict[str, _Client] = {}
        self._tokens: dict[str, _Token] = {}
        self._seen_jti: set[tuple[str, str]] = set()
        self._faults: list[_Fault] = []
        self._clock = datetime(1970, 1, 1, tzinfo=UTC)
        self._lock = threading.RLock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx's pool expects
            # Headers and body go out in two writes; with Nagle on, the second waits for a
            # delayed ACK, 40 ms a request.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                owner._handle(self, "GET")

            def do_POST(self) -> None:
                owner._handle(self, "POST")

            def do_PUT(self) -> None:
                owner._handle(self, "PUT")

            def do_DELETE(self) -> None:
                owner._handle(self, "DELETE")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet test output; the requests are in owner.requests

        self._httpd = _HttpServer(("127.0.0.1", 0), Handler)
        # A short poll interval keeps close() (shutdown waits for the next poll) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # -- addresses and lifetime ------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def url(self) -> str:
        """The FHIR base URL, ``http://127.0.0.1:{port}/fhir``."""
        return f"{self.origin}/fhir"

    @property
    def token_url(self) -> str:
        """The token endpoint, ``http://127.0.0.1:{port}/auth/token`` (the assertion's ``aud``)."""
        return f"{self.origin}/auth/token"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> EhrServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- data ------------------------------------------------------------------------------------

    def load_synthea(
        self, paths: Iterable[Path] | None = None, limit: int | None = None
    ) -> list[str]:
        """Load Synthea bundles (default: ``synthea_bundles()``); the ids of the patients loaded."""
        chosen = list(synthea_bundles() if paths is None else paths)[:limit]
        patients: list[str] = []
        for path in chosen:
            with gzip.open(path, "rb") as raw:
                bundle = json.loads(raw.read())
            entries = [e for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict)]
            targets: dict[str, str] = {}
            for entry in entries:
                resource = entry["resource"]
                full_url = str(entry.get("fullUrl", ""))
                resource.setdefault("id", full_url.removeprefix("urn:uuid:") or str(uuid.uuid4()))
                targets[full_url] = f"{resource['resourceType']}/{resource['id']}"
            with self._lock:
                for entry in entries:
                    resource = entry["resource"]
                    _rewrite_references(resource, targets)
                    meta = resource.setdefault("meta", {})
                    meta.setdefault("lastUpdated", _clinical_time(resource))
                    meta.setdefault("versionId", "1")
                    self._clock = max(self._clock, _last_updated(resource))
                    self._store.setdefault(resource["resourceType"], {})[resource["id"]] = resource
                    if resource["resourceType"] == "Patient":
                        patients.append(resource["id"])
        return patients

    def add(
        self, resource: dict[str, Any], *, last_updated: datetime | None = None
    ) -> dict[str, Any]:
        """Store a resource (an id is made when it has none; an existing id is updated).

        ``meta.lastUpdated`` is the server clock, or ``last_updated`` when given (to make ties);
        the copy stored is returned.
        """
        resource = copy.deepcopy(resource)
        resource.setdefault("id", str(uuid.uuid4()))
        with self._lock:
            return copy.deepcopy(self._put(resource, last_updated))

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Change a stored resource (by ``resourceType`` and ``id``); KeyError when there is none."""
        with self._lock:
            if resource.get("id") not in self._store.get(resource["resourceType"], {}):
                raise KeyError(f"{resource['resourceType']}/{resource.get('id')} is not stored")
            return copy.deepcopy(self._put(copy.deepcopy(resource), None))

    def get(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """A copy of the stored resource, or None."""
        with self._lock:
            return copy.deepcopy(self._store.get(resource_type, {}).get(resource_id))

    def all(self, resource_type: str) -> list[dict[str, Any]]:
        """Copies of every stored resource of a type."""
        with self._lock:
            return copy.deepcopy(list(self._store.get(resource_type, {}).values()))

    def written(self, resource_type: str) -> list[dict[str, Any]]:
        """The resources of a type created or updated over HTTP, as now stored, first write first."""
        with self._lock:
            ids = self._written.get(resource_type, {})
            return [copy.deepcopy(self._store[resource_type][i]) for i in ids]

    def admit(
        self,
        patient_id: str,
        location_ref: str,
        location_display: str,
        start: datetime | str,
        *,
        hospital_start: datetime | str | None = None,
        encounter_id: str | None = None,
    ) -> dict[str, Any]:
        """An in-progress inpatient (IMP) Encounter, at the location since ``start``.

        ``period.start`` (the hospital admission) is ``hospital_start``, else ``start``.
        """
        reference = location_ref if "/" in location_ref else f"Location/{location_ref}"
        encounter = {
            "resourceType": "Encounter",
            "id": encounter_id or str(uuid.uuid4()),
            "status": "in-progress",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "IMP",
                "display": "inpatient encounter",
            },
            "subject": {"reference": f"Patient/{patient_id}"},
            "period": {"start": iso(hospital_start or start)},
            "location": [
                {
                    "location": {"reference": reference, "display": location_display},
                    "status": "active",
                    "period": {"start": iso(start)},
                }
            ],
        }
        return self.add(encounter)

    def discharge(self, encounter_id: str, end: datetime | str | None = None) -> dict[str, Any]:
        """Finish an Encounter (and its open locations) at ``end`` (default: now)."""
        stay = self.get("Encounter", encounter_id)
        if stay is None:
            raise KeyError(f"Encounter/{encounter_id} is not stored")
        when = iso(end or datetime.now(UTC))
        stay["status"] = "finished"
        stay.setdefault("period", {})["end"] = when
        for entry in stay.get("location") or []:
            if entry.get("status") != "completed":
                entry["status"] = "completed"
                entry.setdefault("period", {})["end"] = when
        return self.update(stay)

    def _put(self, resource: dict[str, Any], last_updated: datetime | None) -> dict[str, Any]:
        """Store (lock held): a new version, stamped by the clock (which never goes back)."""
        by_id = self._store.setdefault(resource["resourceType"], {})
        old = by_id.get(resource["id"])
        version = int(old["meta"].get("versionId", "0")) + 1 if old else 1
        if last_updated is None:
            last_updated = max(datetime.now(UTC), self._clock + timedelta(microseconds=1))
        self._clock = max(self._clock, last_updated)
        meta = dict(resource.get("meta") or {})
        meta.update(versionId=str(version), lastUpdated=iso(last_updated))
        resource["meta"] = meta
        by_id[resource["id"]] = resource
        return resource

    # -- auth ------------------------------------------------------------------------------------

    def register_client(
        self, client_id: str, jwks: dict[str, Any], *, scopes: Iterable[str] | None = None
    ) -> None:
        """A backend client and its public JWK Set; ``scopes`` limits what it may ask for."""
        with self._lock:
            self._clients[client_id] = _Client(
                copy.deepcopy(jwks), None if scopes is None else frozenset(scopes)
            )

    def issue_token(self, scope: str = "system/*.read", lifetime_s: int | None = None) -> str:
        """A bearer token without the OAuth exchange, for tests of something else."""
        token = secrets.token_urlsafe(32)
        lifetime = self.token_lifetime_s if lifetime_s is None else lifetime_s
        with self._lock:
            self._tokens[token] = _Token("(test)", scope, time.monotonic() + lifetime)
        return token

    def expire_tokens(self) -> None:
        """Every token issued so far is refused from now on (a 401), as after a server restart."""
        with self._lock:
            self._tokens.clear()

    # -- failures and records --------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        retry_after: int | str | None = None,
        delay_s: float = 0.0,
        path: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests (under ``path``, when given) with ``status``.

        ``path`` is a prefix of the request path: ``"Observation"`` (under the FHIR base) or
        ``"/auth/token"``. Faults queue in order; each then goes away.
        """
        with self._lock:
            self._faults.append(_Fault(n, status, retry_after, delay_s, self._prefix(path)))

    def slow_next(self, n: int, delay_s: float, *, path: str | None = None) -> None:
        """Answer the next ``n`` requests (under ``path``) normally, ``delay_s`` late."""
        with self._lock:
            self._faults.append(_Fault(n, None, None, delay_s, self._prefix(path)))

    def clear_requests(self) -> None:
        """Forget the recorded requests and token requests."""
        with self._lock:
            self.requests.clear()
            self.token_requests.clear()

    def _prefix(self, path: str | None) -> str | None:
        if path is None or path.startswith("/"):
            return path
        return f"/fhir/{path}"

    # -- HTTP ------------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        length = int(headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self.requests.append(Request(method, parts.path, query, headers))
            fault = next(
                (f for f in self._faults if f.prefix is None or parts.path.startswith(f.prefix)),
                None,
            )
            if fault is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
            slow = self.delay_path is None or parts.path.startswith(self._prefix(self.delay_path))
            delay = (fault.delay_s if fault else 0.0) + (self.delay_s if slow else 0.0)
        if delay:
            time.sleep(delay)
        if fault is not None and fault.status is not None:
            extra = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            answer = _Answer(fault.status, outcome("transient", "injected failure"), extra)
        else:
            try:
                answer = self._route(method, parts.path, parts.query, query, headers, body)
            except _Refused as refusal:
                answer = refusal.answer
        self._send(handler, answer)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, answer: _Answer) -> None:
        content = b"" if answer.body is None else json.dumps(answer.body).encode()
        handler.send_response(answer.status)
        handler.send_header("Content-Type", answer.content_type)
        handler.send_header("Content-Length", str(len(content)))
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(content)

    def _route(
        self,
        method: str,
        path: str,
        raw_query: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
    ) -> _Answer:
        if path == "/auth/token":
            if method != "POST":
                raise _Refused(405, "not-supported", "the token endpoint takes POST")
            return self._token_endpoint(headers, body)
        if path == "/fhir/.well-known/smart-configuration":
            return _Answer(200, self._smart_configuration(), content_type="application/json")
        if not path.startswith("/fhir/"):
            raise _Refused(404, "not-found", "no such endpoint")
        segments = path.removeprefix("/fhir/").strip("/").split("/")
        if not _TYPE.fullmatch(segments[0]) or len(segments) > 2:
            raise _Refused(404, "not-found", "no such endpoint")
        if len(segments) == 2 and not _ID.fullmatch(segments[1]):
            raise _Refused(400, "invalid", "not a resource id")
        self._check_token(headers)
        resource_type = segments[0]
        resource_id = segments[1] if len(segments) == 2 else None
        with self._lock:
            if method == "GET" and resource_id is not None:
                found = self._store.get(resource_type, {}).get(resource_id)
                if found is None:
                    raise _Refused(404, "not-found", f"{resource_type}/{resource_id} is not known")
                return _Answer(200, found, {"ETag": f'W/"{found["meta"]["versionId"]}"'})
            if method == "GET":
                return _Answer(200, self._search_bundle(resource_type, raw_query, query))
            if method in ("POST", "PUT"):
                return self._write(method, resource_type, resource_id, query, headers, body)
        raise _Refused(405, "not-supported", f"{method} is not supported here")

    def _check_token(self, headers: dict[str, str]) -> None:
        if not self.require_auth:
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._lock:
            issued = self._tokens.get(token) if scheme.lower() == "bearer" else None
            if issued is not None and issued.expires_at <= time.monotonic():
                del self._tokens[token]
                issued = None
        if issued is None:
            # RFC 6750 §3.1: no error code when no token was sent at all.
            challenge = 'Bearer realm="ehr"' + (', error="invalid_token"' if token else "")
            raise _Refused(
                401, "login", "a valid bearer token is needed", {"WWW-Authenticate": challenge}
            )

    def _smart_configuration(self) -> dict[str, Any]:
        return {
            "token_endpoint": self.token_url,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
            "capabilities": ["client-confidential-asymmetric"],
        }

    # -- search ----------------------------------------------------------------------------------

    def _search(self, resource_type: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Matches of a search (lock held), in ``_sort`` order; a 400 for what is not supported."""
        allowed = _COMMON | SEARCH_PARAMS.get(resource_type, frozenset())
        unknown = sorted(set(query) - allowed - {"_page"})
        if unknown:
            raise _Refused(400, "not-supported", f"unsupported search parameters: {unknown}")
        found = list(self._store.get(resource_type, {}).values())
        for name, values in query.items():
            if name.startswith("_") and name != "_id":
                continue
            for value in values:  # repeated: AND; comma-separated: OR
                tokens = value.split(",")
                found = [r for r in found if any(_matches(r, name, t, self.url) for t in tokens)]
        try:
            for value in query.get("_lastUpdated", []):
                found = [r for r in found if _date_matches(_last_updated(r), value)]
        except ValueError as exc:
            raise _Refused(400, "invalid", f"_lastUpdated: {exc}") from exc
        sort = query.get("_sort", ["_id"])[-1]
        if sort.lstrip("-") == "_lastUpdated":
            found.sort(key=lambda r: (_last_updated(r), r["id"]), reverse=sort.startswith("-"))
        elif sort == "_id":
            found.sort(key=lambda r: str(r["id"]))
        else:
            raise _Refused(400, "not-supported", f"unsupported _sort {sort}")
        return found

    def _search_bundle(
        self, resource_type: str, raw_query: str, query: dict[str, list[str]]
    ) -> dict[str, Any]:
        if "_page" in query:
            page = self._pages.get(query["_page"][-1])
            if page is None or page[0] != resource_type:
                raise _Refused(410, "not-found", "the page token is not known (or expired)")
            _, ids, offset, count = page
        else:
            try:
                count = min(int(query.get("_count", [str(self.page_size)])[-1]), MAX_COUNT)
            except ValueError as exc:
                raise _Refused(400, "invalid", "_count must be a number") from exc
            ids, offset = [r["id"] for r in self._search(resource_type, query)], 0
        store = self._store.get(resource_type, {})
        page_ids = [i for i in ids[offset : offset + count] if i in store]
        links = [{"relation": "self", "url": f"{self.url}/{resource_type}?{raw_query}"}]
        if count > 0 and offset + count < len(ids):
            token = secrets.token_urlsafe(12)
            self._pages[token] = (resource_type, ids, offset + count, count)
            links.append({"relation": "next", "url": f"{self.url}/{resource_type}?_page={token}"})
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(ids),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{self.url}/{resource_type}/{i}",
                    "resource": store[i],
                    "search": {"mode": "match"},
                }
                for i in page_ids
            ],
        }

    # -- writes ----------------------------------------------------------------------------------

    def _write(
        self,
        method: str,
        resource_type: str,
        resource_id: str | None,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: bytes,
    ) -> _Answer:
        """Create, update or conditional update (lock held), FHIR R4 §3.1.0.4 to §3.1.0.8."""
        try:
            resource = json.loads(body)
        except ValueError as exc:
            raise _Refused(400, "structure", "the body is not JSON") from exc
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            raise _Refused(400, "invalid", f"the body is not a {resource_type}")
        if method == "POST":
            if resource_id is not None:
                raise _Refused(405, "not-supported", "POST goes to the type, not an id")
            status, stored = self._create(resource, headers.get("if-none-exist"))
        elif resource_id is None:
            status, stored = self._conditional_update(resource, query)
        else:
            status, stored = self._update(resource, resource_id, headers.get("if-match"))
        self._written.setdefault(resource_type, {})[stored["id"]] = None
        version = stored["meta"]["versionId"]
        out = {
            "Location": f"{self.url}/{resource_type}/{stored['id']}/_history/{version}",
            "ETag": f'W/"{version}"',
        }
        # R4 §3.1.0.8.1: return=minimal asks for no body; the default here is the resource.
        body_out = None if "return=minimal" in headers.get("prefer", "") else stored
        return _Answer(status, body_out, out)

    def _create(
        self, resource: dict[str, Any], if_none_exist: str | None
    ) -> tuple[int, dict[str, Any]]:
        if if_none_exist is not None:
            matches = self._search(resource["resourceType"], parse_qs(if_none_exist))
            if len(matches) > 1:
                raise _Refused(412, "duplicate", "If-None-Exist matches several resources")
            if matches:
                return 200, matches[0]
        resource["id"] = str(uuid.uuid4())  # a create ignores the id sent (§3.1.0.7)
        return 201, self._put(resource, None)

    def _conditional_update(
        self, resource: dict[str, Any], query: dict[str, list[str]]
    ) -> tuple[int, dict[str, Any]]:
        if not query:
            raise _Refused(400, "invalid", "PUT to a type needs search parameters")
        matches = self._search(resource["resourceType"], query)
        if len(matches) > 1:
            raise _Refused(412, "duplicate", "the condition matches several resources")
        body_id = resource.get("id")
        if matches:
            if body_id not in (None, matches[0]["id"]):
                raise _Refused(400, "invalid", "the id differs from the one matched")
            resource["id"] = matches[0]["id"]
            return 200, self._put(resource, None)
        if body_id is not None and body_id in self._store.get(resource["resourceType"], {}):
            raise _Refused(409, "conflict", "no match, but the id sent is taken")
        resource["id"] = body_id or str(uuid.uuid4())
        return 201, self._put(resource, None)

    def _update(
        self, resource: dict[str, Any], resource_id: str, if_match: str | None
    ) -> tuple[int, dict[str, Any]]:
        if resource.get("id") != resource_id:
            raise _Refused(400, "invalid", "the body's id must be the id in the URL")
        old = self._store.get(resource["resourceType"], {}).get(resource_id)
        if if_match is not None:
            wanted = if_match.removeprefix("W/").strip('"')
            if old is None or old["meta"].get("versionId") != wanted:
                raise _Refused(412, "conflict", "If-Match does not name the current version")
        return (201 if old is None else 200), self._put(resource, None)

    # -- token endpoint --------------------------------------------------------------------------

    def _token_endpoint(self, headers: dict[str, str], body: bytes) -> _Answer:
        record = TokenRequest(form={})
        with self._lock:
            self.token_requests.append(record)
        try:
            if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                raise _OAuthRefused(400, "invalid_request", "the body must be form-encoded")
            form = {k: v[-1] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
            record.form = form
            if form.get("grant_type") != "client_credentials":
                raise _OAuthRefused(
                    400, "unsupported_grant_type", "grant_type is not client_credentials"
                )
            if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
                raise _OAuthRefused(
                    400, "invalid_request", "client_assertion_type is not jwt-bearer"
                )
            scope = form.get("scope", "").strip()
            if not scope:
                raise _OAuthRefused(400, "invalid_request", "scope is missing")
            client_id = self._verify_assertion(form, record)
            client = self._clients[client_id]
            if client.scopes is not None and not set(scope.split()) <= client.scopes:
                raise _OAuthRefused(400, "invalid_scope", "a scope asked for is not allowed")
        except _OAuthRefused as refusal:
            record.status, record.error, record.reason = (
                refusal.status,
                refusal.error,
                refusal.reason,
            )
            error = {"error": refusal.error, "error_description": refusal.reason}
            return _Answer(refusal.status, error, {"Cache-Control": "no-store"}, "application/json")
        token = secrets.token_urlsafe(32)
        lifetime = self.token_lifetime_s
        with self._lock:
            self._tokens[token] = _Token(client_id, scope, time.monotonic() + lifetime)
        record.status = 200
        answer = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime,
            "scope": scope,
        }
        return _Answer(
            200, answer, {"Cache-Control": "no-store", "Pragma": "no-cache"}, "application/json"
        )

    def _verify_assertion(self, form: dict[str, str], record: TokenRequest) -> str:
        """The client id of a valid ``client_assertion`` (SMART Backend Services, "Signature")."""
        assertion = form.get("client_assertion", "")
        try:
            record.header = jwt.get_unverified_header(assertion)
            record.claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _invalid_client("client_assertion is not a JWT") from exc
        alg = record.header.get("alg")
        if alg not in ASSERTION_ALGS:
            raise _invalid_client(f"alg {alg} is not RS384 or ES384")
        client_id, jwk = self._assertion_key(form, record.header, record.claims)
        try:
            claims = jwt.decode(
                assertion,
                jwt.PyJWK(jwk, algorithm=alg).key,
                algorithms=[alg],
                audience=self.token_url,
                options={"require": ["iss", "sub", "aud", "exp", "jti"], "strict_aud": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _invalid_client("the assertion has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid_client("aud is not the token endpoint") from exc
        except jwt.PyJWTError as exc:
            raise _invalid_client(f"the assertion is not valid ({type(exc).__name__})") from exc
        if claims["sub"] != client_id:
            raise _invalid_client("sub is not the client id")
        if claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME_S:
            raise _invalid_client("exp is more than five minutes ahead")
        with self._lock:
            if (client_id, str(claims["jti"])) in self._seen_jti:
                raise _invalid_client("jti was used before (replay)")
            self._seen_jti.add((client_id, str(claims["jti"])))
        return client_id

    def _assertion_key(
        self, form: dict[str, str], header: dict[str, Any], claims: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The registered client the assertion names (``iss``) and its JWK with the ``kid``."""
        client_id = claims.get("iss")
        if "client_id" in form and form["client_id"] != client_id:
            raise _invalid_client("client_id differs from the assertion's iss")
        with self._lock:
            client = self._clients.get(client_id) if isinstance(client_id, str) else None
        if client is None or not isinstance(client_id, str):
            raise _invalid_client("iss is not a registered client")
        kid = header.get("kid")
        if not kid:
            raise _invalid_client("the assertion has no kid")
        jwk = next((k for k in client.jwks.get("keys", []) if k.get("kid") == kid), None)
        if jwk is None:
            raise _invalid_client("kid is not in the client's JWKS")
        alg = header["alg"]
        if jwk.get("alg") not in (None, alg) or (alg == "ES384" and jwk.get("crv") != "P-384"):
            raise _invalid_client("the key does not fit alg")
        return client_id, jwk


def _invalid_client(reason: str) -> _OAuthRefused:
    # RFC 6749 §5.2: a failed client authentication is invalid_client, and may be a 401.
    return _OAuthRefused(401, "invalid_client", reason)
