"""A real FHIR R4 test server on 127.0.0.1, serving Synthea patients (a helper module, not a test).

The data are the Synthea transaction bundles in ``../shared/data/synthea`` (gzipped, read in
place, never copied). Loading one turns it into what a FHIR server would hold after processing
the transaction:

- each resource gets the id it has, or else the uuid of its ``urn:uuid:`` fullUrl;
- ``urn:uuid:`` references are rewritten to ``Type/id``;
- every resource gets a deterministic ``meta.lastUpdated`` where it has none (Synthea writes
  none): ``issued``, else ``effectiveDateTime`` / ``effectivePeriod.start`` / ``recordedDate`` /
  ``authoredOn`` / ``date``, else a fixed instant. Observations always have ``issued``, so their
  lastUpdated is a real clinical time and watermark tests are meaningful. Many Observations of
  one encounter share an ``issued`` instant, so lastUpdated has ties, as it can on real servers.

The server answers reads (``GET /fhir/Patient/{id}``) and searches
(``GET /fhir/Observation?patient=...&category=...&code=...&_lastUpdated=gt...&_sort=_lastUpdated
&_count=N``) with searchset Bundles paged through ``next`` links, absolute or relative
(``link_style``), optionally pointing at another server (``next_base``). An unsupported search
parameter is a 400, so a client that sends something unexpected is noticed. It records every
request (path with query, headers, arrival time), can require a bearer token (401 without it), and
can be told to answer the next K requests with a ``Fault``: a status (500, 429 with Retry-After,
503, a redirect) and/or a delay before answering.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

SYNTHEA_DIR = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "synthea"
    / "exafluence-qicore-synthea-2025"
)

FALLBACK_LAST_UPDATED = "2025-01-01T00:00:00Z"
_DATE_FIELDS = ("issued", "effectiveDateTime", "recordedDate", "authoredOn", "date")
_SEARCH_PARAMS = {"patient", "subject", "category", "code", "_lastUpdated", "_sort", "_count"}
_OFFSET = "_offset"  # the server's own paging cursor, only ever sent back in its next links


def bundle_paths(limit: int) -> list[Path]:
    """The first ``limit`` Synthea bundles, in a stable order; empty when the data are absent."""
    return sorted(SYNTHEA_DIR.glob("*/fhir/*.json.gz"))[:limit]


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _assigned_last_updated(resource: dict[str, Any]) -> str:
    for name in _DATE_FIELDS:
        if isinstance(resource.get(name), str) and "T" in resource[name]:
            return str(resource[name])
    period = resource.get("effectivePeriod") or resource.get("period") or {}
    if isinstance(period.get("start"), str) and "T" in period["start"]:
        return str(period["start"])
    return FALLBACK_LAST_UPDATED


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


def _codings_match(concepts: Any, wanted: list[str]) -> bool:
    """FHIR token search: ``code`` or ``system|code``, comma-separated values OR'ed."""
    concepts = concepts if isinstance(concepts, list) else [concepts]
    for concept in concepts:
        for coding in (concept or {}).get("coding") or []:
            for token in wanted:
                system, _, code = token.rpartition("|")
                if coding.get("code") == code and (not system or coding.get("system") == system):
                    return True
    return False


def _date_matches(stamp: datetime, condition: str) -> bool:
    prefix, rest = (condition[:2], condition[2:]) if condition[:2].isalpha() else ("eq", condition)
    other = _instant(rest)
    return {
        "gt": stamp > other,
        "ge": stamp >= other,
        "lt": stamp < other,
        "le": stamp <= other,
        "eq": stamp == other,
    }[prefix]


class SyntheaIndex:
    """Synthea resources by type and id, as a FHIR server holds them after the transactions."""

    def __init__(self, paths: list[Path]) -> None:
        self.resources: dict[str, dict[str, dict[str, Any]]] = {}
        for path in paths:
            with gzip.open(path, "rb") as raw:
                bundle = orjson.loads(raw.read())
            entries = [e for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict)]
            targets: dict[str, str] = {}
            for entry in entries:
                resource = entry["resource"]
                full_url = str(entry.get("fullUrl", ""))
                resource.setdefault("id", full_url.removeprefix("urn:uuid:"))
                targets[full_url] = f"{resource['resourceType']}/{resource['id']}"
            for entry in entries:
                resource = entry["resource"]
                _rewrite_references(resource, targets)
                meta = resource.setdefault("meta", {})
                meta.setdefault("lastUpdated", _assigned_last_updated(resource))
                by_id = self.resources.setdefault(resource["resourceType"], {})
                by_id[resource["id"]] = resource

    def patient_ids(self) -> list[str]:
        """Ids of the loaded patients, sorted."""
        return sorted(self.resources.get("Patient", {}))

    def of_patient(self, resource_type: str, patient_id: str) -> list[dict[str, Any]]:
        """Every resource of a type whose subject is the patient."""
        ref = f"Patient/{patient_id}"
        return [
            r
            for r in self.resources.get(resource_type, {}).values()
            if (r.get("subject") or {}).get("reference") == ref
        ]

    def search(self, resource_type: str, params: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Resources matching the search parameters, in the order asked for by ``_sort``."""
        found = list(self.resources.get(resource_type, {}).values())
        for name in ("patient", "subject"):
            for value in params.get(name, []):
                ref = value if "/" in value else f"Patient/{value}"
                found = [r for r in found if (r.get("subject") or {}).get("reference") == ref]
        for name in ("category", "code"):
            for value in params.get(name, []):
                found = [r for r in found if _codings_match(r.get(name), value.split(","))]
        for value in params.get("_lastUpdated", []):
            found = [r for r in found if _date_matches(_last_updated(r), value)]
        sort = params.get("_sort", ["_id"])[-1]
        if sort.lstrip("-") == "_lastUpdated":
            found.sort(key=lambda r: (_last_updated(r), r["id"]), reverse=sort.startswith("-"))
        else:
            found.sort(key=lambda r: str(r["id"]))
        return found


def _last_updated(resource: dict[str, Any]) -> datetime:
    return _instant(resource["meta"]["lastUpdated"])


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival


@dataclass(frozen=True)
class Fault:
    """How to answer one request: a status (None: answer normally), after ``delay_s``."""

    status: int | None = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out has closed its socket before a slow answer is written; that is
        # the point of the slow fault, not an error of the server.
        pass


class SyntheaFhirServer:
    """The FHIR server: start it, point a client at ``base_url``, ``close()`` it at the end."""

    def __init__(self, index: SyntheaIndex, *, page_size: int = 10) -> None:
        self.index = index
        self.page_size = page_size
        self.requests: list[Recorded] = []
        self.token: str | None = None
        self.link_style: Literal["absolute", "relative"] = "absolute"
        self.next_base: str | None = None
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx's pool expects
            # Headers and body go out in two writes; with Nagle on, the second waits for a
            # delayed ACK, 40 ms a request.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test output stays quiet; requests are in owner.requests

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        # A short poll interval keeps close() (shutdown waits for the next poll) quick.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        """The FHIR base URL, ``http://127.0.0.1:{port}/fhir``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/fhir"

    def fail_next(self, fault: Fault, count: int = 1) -> None:
        """Answer the next ``count`` requests with ``fault`` (after any faults already queued)."""
        with self._lock:
            self._faults.extend([fault] * count)

    def reset(self) -> None:
        """Forget requests and faults; back to absolute links on this server, no token needed."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
        self.token, self.link_style, self.next_base = None, "absolute", None

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append(Recorded(handler.path, headers, time.monotonic()))
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            time.sleep(fault.delay_s)
            if fault.status is not None:
                outcome = {"resourceType": "OperationOutcome", "issue": [{"code": "transient"}]}
                self._send(handler, fault.status, outcome, fault.headers)
                return
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            self._send(handler, 401, _outcome("login"), {"WWW-Authenticate": "Bearer"})
            return
        status, body = self._answer(handler.path)
        self._send(handler, status, body, {})

    def _answer(self, raw_path: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        path = parts.path.removeprefix("/fhir/").strip("/").split("/")
        if not parts.path.startswith("/fhir/") or len(path) > 2:
            return 404, _outcome("not-found")
        if len(path) == 2:
            resource = self.index.resources.get(path[0], {}).get(path[1])
            return (200, resource) if resource is not None else (404, _outcome("not-found"))
        params = parse_qs(parts.query, keep_blank_values=True)
        if set(params) - _SEARCH_PARAMS - {_OFFSET}:
            return 400, _outcome("not-supported")
        try:
            found = self.index.search(path[0], params)
            count = int(params.get("_count", [str(self.page_size)])[-1])
            offset = int(params.get(_OFFSET, ["0"])[-1])
        except (ValueError, KeyError):
            return 400, _outcome("invalid")
        page = found[offset : offset + count]
        base = self.base_url
        links = [{"relation": "self", "url": f"{base}/{path[0]}?{parts.query}"}]
        if offset + count < len(found):
            query = {k: v for k, v in params.items() if k != _OFFSET}
            query[_OFFSET] = [str(offset + count)]
            target = f"{path[0]}?{urlencode(query, doseq=True)}"
            if self.next_base is not None:
                target = f"{self.next_base}/{target}"
            elif self.link_style == "absolute":
                target = f"{base}/{target}"
            links.append({"relation": "next", "url": target})
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in page
            ],
        }
        return 200, bundle

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str]
    ) -> None:
        content = orjson.dumps(body)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/fhir+json")
        handler.send_header("Content-Length", str(len(content)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(content)


def _outcome(code: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code}]}
