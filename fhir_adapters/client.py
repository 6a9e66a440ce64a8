"""A small async FHIR R4 client over one shared ``httpx.AsyncClient``: reads, searches, writes.

It is bound to one base URL and never sends its token anywhere else: a ``next`` link that points
outside the base URL ends paging instead of being followed (a Bundle is data from the network and
its links are not trusted), and redirects are never followed.

Transient failures (429, 5xx gateway/unavailable answers, connection errors, timeouts) are retried a
bounded number of times with exponential backoff and jitter, honouring ``Retry-After`` up to a cap.
Writes (create, update, conditional update) are retried only where the server cannot have applied
them: 429, 503 and failures to connect (see ``WRITE_RETRY_STATUSES``).
A client is cheap (it wraps the shared httpx client), so make one per hook call or per task: its
optional deadline counts from construction and bounds everything done through it.

Nothing here logs a URL, a query or a token: FHIR URLs carry patient ids. Log lines are fixed
messages with status codes and exception class names only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx
import orjson
from pydantic import SecretStr

from fhir_adapters.errors import FhirBadResponse, FhirNotFound, FhirUnavailable

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"

# 429 (RFC 6585 §4) and 503 (RFC 9110 §15.6.4) say "later"; 500/502/504 are usually a proxy or a
# restarting node. A read is idempotent, so retrying any of them is safe; other 5xx (501, 505) are
# answers about the request itself and are not retried.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# Network-level failures worth another try; other httpx errors (an unsupported scheme, a bad URL)
# would fail the same way again.
_RETRY_EXCEPTIONS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

# A write is not idempotent the way a read is: a create replayed makes a second resource, and even
# a PUT replayed bumps the version (and fails an If-Match it already satisfied). So a write is only
# retried when the server certainly did not apply it: 429 and 503 say it was not processed (RFC
# 6585 §4, RFC 9110 §15.6.4). A 500 or 502/504 may come after the write happened, and so may a
# read timeout or a dropped connection once the body was sent; those are reported, not retried.
WRITE_RETRY_STATUSES = frozenset({429, 503})

# Failures before a single byte of the request left: no connection (refused, DNS, TLS handshake),
# connect timeout, or no free connection in the pool.
_WRITE_RETRY_EXCEPTIONS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]+")
# FHIR R4 §2.24.0.1 id: [A-Za-z0-9\-\.]{1,64}
_RESOURCE_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True)
class _Retry:
    """What a request may be retried on."""

    statuses: frozenset[int]
    exceptions: tuple[type[Exception], ...]
    what: str  # "request" or "write", for messages


_READ = _Retry(RETRY_STATUSES, _RETRY_EXCEPTIONS, "request")
_WRITE = _Retry(WRITE_RETRY_STATUSES, _WRITE_RETRY_EXCEPTIONS, "write")


@dataclass(frozen=True)
class WriteResult:
    """The server's answer to a create or an update.

    ``resource`` is the resource as stored (the server honoured ``Prefer: return=representation``)
    or ``{}`` when the answer had no body; ``location`` is the ``Location`` header as sent (e.g.
    ``Observation/123/_history/1``, relative or absolute, not followed) and ``etag`` the ``ETag``
    (e.g. ``W/"1"``, usable as a later ``if_match``); either is None when absent. ``created`` is
    True for 201, False for 200 (an existing resource was updated).
    """

    status: int
    resource: dict[str, Any]
    location: str | None
    etag: str | None

    @property
    def created(self) -> bool:
        return self.status == 201


class FhirClient:
    """FHIR reads, searches and writes against one base URL, with the token sent only there."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        token: SecretStr | None,
        timeout_s: float,
        max_pages: int,
        *,
        retries: int = 2,
        backoff_s: float = 0.2,
        max_retry_after_s: float = 2.0,
        deadline_s: float | None = None,
    ) -> None:
        if timeout_s <= 0 or max_pages < 0 or retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be positive; max_pages, retries, backoff_s not < 0")
        if max_retry_after_s < 0 or (deadline_s is not None and deadline_s <= 0):
            raise ValueError("max_retry_after_s must not be negative and deadline_s positive")
        self._http = http
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout_s
        self._max_pages = max_pages
        self._retries = retries
        self._backoff = backoff_s
        self._max_retry_after = max_retry_after_s
        self._deadline = None if deadline_s is None else time.monotonic() + deadline_s

    def is_within(self, url: str) -> bool:
        """True when ``url`` lies under this client's base URL (same scheme, host, port, path)."""
        base, other = urlsplit(self._base), urlsplit(url)
        return (other.scheme, other.netloc.lower()) == (base.scheme, base.netloc.lower()) and (
            other.path == base.path or other.path.startswith(base.path.rstrip("/") + "/")
        )

    async def get(self, relative_or_absolute: str) -> dict[str, Any]:
        """GET one resource (a read or one page of a search) as a JSON object."""
        return await self._get_json(urljoin(self._base + "/", relative_or_absolute.lstrip("/")))

    async def complete_bundle(self, bundle: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Follow ``next`` links of a searchset, appending entries; True when it ended complete."""
        pages, complete = await self._follow(bundle)
        entries = [entry for page in pages for entry in page.get("entry") or []]
        return {**bundle, "entry": entries, "link": _without_next(bundle)}, complete

    async def search(self, query: str) -> tuple[dict[str, Any], bool]:
        """Run a search and follow its pages; True when every page was read."""
        first = await self.get(query)
        if first.get("resourceType") != "Bundle":
            raise FhirBadResponse("a search did not answer with a Bundle")
        return await self.complete_bundle(first)

    async def search_since(
        self, resource_type: str, params: dict[str, str], since: datetime | None
    ) -> tuple[list[dict[str, Any]], datetime | None, bool]:
        """Search ``resource_type`` for resources changed after the watermark ``since``.

        Returns the matching entries (deduplicated by id, oldest first), the watermark to store
        once they are merged, and whether every page was read. The watermark is None when nothing
        newer than ``since`` was seen, so the caller keeps its old one. When paging stopped early
        the watermark only covers what is certainly read (see ``_watermark``).
        """
        if not _RESOURCE_TYPE.fullmatch(resource_type):
            raise ValueError("resource_type must be a FHIR resource type name")
        if {"_lastUpdated", "_sort"} & params.keys():
            raise ValueError("search_since sets _lastUpdated and _sort itself")
        # Ascending _lastUpdated makes every prefix of the result a consistent "everything up to
        # T", which is what lets a partial read still advance the watermark safely.
        query = {**params, "_sort": "_lastUpdated"}
        if since is not None:
            if since.tzinfo is None:
                raise ValueError("since must be timezone-aware (a FHIR instant has a zone)")
            query["_lastUpdated"] = f"gt{since.isoformat()}"
        first = await self.get(f"{resource_type}?{urlencode(query)}")
        if first.get("resourceType") != "Bundle":
            raise FhirBadResponse("a search did not answer with a Bundle")
        pages, complete = await self._follow(first)
        found: dict[str, dict[str, Any]] = {}
        for page in pages:
            for i, entry in enumerate(page.get("entry") or []):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                # Only matches: search.mode "include" / "outcome" entries are other resource types.
                if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
                    continue
                key = resource.get("id") or entry.get("fullUrl") or f"#{len(found)}:{i}"
                # A resource updated while we paged can appear twice; the later copy is newer.
                found.pop(key, None)
                found[key] = entry
        entries = list(found.values())
        newest = _watermark([_last_updated(e["resource"]) for e in entries], complete)
        if newest is not None and since is not None and newest <= since:
            newest = None
        return entries, newest, complete

    async def create(
        self, resource: dict[str, Any], *, if_none_exist: dict[str, str] | None = None
    ) -> WriteResult:
        """POST ``resource`` to ``{base}/{resourceType}`` (FHIR create).

        ``if_none_exist`` makes it a conditional create (``If-None-Exist``, e.g. by identifier):
        the server creates nothing when a match exists, which makes a create safe to repeat.
        """
        resource_type = _resource_type(resource)
        headers: dict[str, str] = {}
        if if_none_exist is not None:
            if not if_none_exist:
                raise ValueError("if_none_exist needs at least one search parameter")
            headers["If-None-Exist"] = urlencode(if_none_exist)
        return await self._write("POST", resource_type, resource, headers)

    async def update(self, resource: dict[str, Any], *, if_match: str | None = None) -> WriteResult:
        """PUT ``resource`` to ``{base}/{resourceType}/{id}`` (FHIR update).

        ``if_match`` is an ETag (``W/"3"``) for a version-aware update: the server answers 412
        (``FhirBadResponse`` with status 412) when the stored version is no longer that one.
        """
        resource_type = _resource_type(resource)
        resource_id = resource.get("id")
        if not isinstance(resource_id, str) or not _RESOURCE_ID.fullmatch(resource_id):
            raise ValueError("update needs a resource id of 1-64 letters, digits, '-' or '.'")
        headers: dict[str, str] = {}
        if if_match is not None:
            if not if_match or any(c in if_match for c in "\r\n"):
                raise ValueError('if_match must be an ETag such as W/"3"')
            headers["If-Match"] = if_match
        return await self._write("PUT", f"{resource_type}/{resource_id}", resource, headers)

    async def conditional_update(
        self, resource: dict[str, Any], search: dict[str, str]
    ) -> WriteResult:
        """PUT ``resource`` to ``{base}/{resourceType}?{search}`` (FHIR conditional update).

        The server updates the one match, creates the resource when there is none (201), and
        answers 412 when there are several. Matching on a business identifier makes a write-back
        idempotent without knowing the server's id.
        """
        resource_type = _resource_type(resource)
        if not search:
            raise ValueError("a conditional update needs at least one search parameter")
        return await self._write("PUT", f"{resource_type}?{urlencode(search)}", resource, {})

    async def _write(
        self, method: str, relative: str, resource: dict[str, Any], extra: dict[str, str]
    ) -> WriteResult:
        url = urljoin(self._base + "/", relative)
        headers = {
            "Content-Type": FHIR_JSON,
            # FHIR R4 §3.1.0.8: without it the server may answer with no body at all.
            "Prefer": "return=representation",
            **extra,
        }
        response = await self._exchange(method, url, headers, orjson.dumps(resource), _WRITE)
        return _parse_write(response)

    async def _follow(self, first: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The pages of a searchset from ``first`` on; True when the last one had no next link."""
        pages = [first]
        seen: set[str] = set()
        for _ in range(self._max_pages):
            link = next_link(pages[-1])
            if link is None:
                return pages, True
            # Relative links are relative to the service base (FHIR R4 §3.1.0.1.1 / RFC 3986).
            url = urljoin(self._base + "/", link)
            if not self.is_within(url):
                log.warning("ignored a next link that points outside the FHIR server")
                return pages, False
            if url in seen:
                log.warning("ignored a next link that repeats an earlier page")
                return pages, False
            seen.add(url)
            page = await self._get_json(url)
            if page.get("resourceType") != "Bundle":
                raise FhirBadResponse("a next page was not a Bundle")
            pages.append(page)
        return pages, next_link(pages[-1]) is None

    async def _get_json(self, url: str) -> dict[str, Any]:
        """GET ``url`` (which must lie under the base URL) with retries; the body as JSON."""
        return _parse(await self._exchange("GET", url, {}, None, _READ))

    async def _exchange(
        self,
        method: str,
        url: str,
        extra_headers: dict[str, str],
        content: bytes | None,
        policy: _Retry,
    ) -> httpx.Response:
        """Send one request to ``url`` (under the base URL), retrying as ``policy`` allows.

        Returns the first answer that is not to be retried; raises ``FhirUnavailable`` when the
        retries or the deadline run out.
        """
        if not self.is_within(url):
            raise FhirBadResponse("refusing to send a request outside the FHIR server's base URL")
        headers = {"Accept": FHIR_JSON, **extra_headers}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        attempts = self._retries + 1
        for attempt in range(attempts):
            cause: Exception | None = None
            retry_after: float | None = None
            try:
                response = await self._send(method, url, headers, content)
            except policy.exceptions as exc:
                cause, what = exc, type(exc).__name__
                failure = FhirUnavailable(f"FHIR server did not answer: {what}")
            except httpx.HTTPError as exc:
                if policy is _WRITE:
                    raise FhirUnavailable(
                        f"FHIR write got no answer ({type(exc).__name__}); it may have been applied"
                    ) from exc
                raise FhirUnavailable(f"FHIR request failed: {type(exc).__name__}") from exc
            else:
                status = response.status_code
                if status not in policy.statuses:
                    return response
                what = str(status)
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                failure = FhirUnavailable(
                    f"FHIR server answered {status}", status=status, retry_after_s=retry_after
                )
                if retry_after is not None and retry_after > self._max_retry_after:
                    # Waiting that long would hold up a clinician's hook call; give up now and
                    # let the caller (or a worker's own schedule) decide when to come back.
                    log.warning(
                        "FHIR server answered %s asking for %.1f s, over the %.1f s cap",
                        status,
                        retry_after,
                        self._max_retry_after,
                    )
                    raise failure
            if attempt + 1 == attempts:
                raise failure from cause
            delay = retry_after if retry_after is not None else self._backoff_delay(attempt)
            if delay >= self._remaining():
                raise FhirUnavailable(
                    "the deadline for FHIR requests would pass before a retry",
                    status=failure.status,
                    retry_after_s=retry_after,
                ) from cause
            log.info(
                "FHIR %s failed (%s); retry %d of %d", policy.what, what, attempt + 1, self._retries
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    async def _send(
        self, method: str, url: str, headers: dict[str, str], content: bytes | None
    ) -> httpx.Response:
        """One request, bounded by the per-request timeout and by what is left of the deadline."""
        remaining = self._remaining()
        if remaining <= 0:
            raise FhirUnavailable("the deadline for FHIR requests has passed")
        # follow_redirects=False per request, whatever the shared client says: a redirect could
        # carry the Authorization header to another server.
        request = self._http.request(
            method,
            url,
            headers=headers,
            content=content,
            timeout=min(self._timeout, remaining),
            follow_redirects=False,
        )
        if self._deadline is None:
            return await request
        try:
            # httpx's timeout bounds each phase (connect, write, read) on its own; this bounds
            # the whole exchange, so a trickling answer cannot outlast the deadline.
            async with asyncio.timeout(remaining):
                return await request
        except TimeoutError as exc:
            raise FhirUnavailable("the deadline for FHIR requests passed during a request") from exc

    def _remaining(self) -> float:
        return math.inf if self._deadline is None else self._deadline - time.monotonic()

    def _backoff_delay(self, attempt: int) -> float:
        # "Equal jitter": half fixed, half random, so clients that failed together spread out
        # without any of them retrying at once.
        base = self._backoff * 2.0**attempt
        return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter needs no secrecy


def next_link(bundle: dict[str, Any]) -> str | None:
    """The ``next`` link of a Bundle, as written (maybe relative), or None when there is none."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    # RFC 9110 §10.2.3: Retry-After = HTTP-date / delay-seconds, delay-seconds = 1*DIGIT.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000" parses naive; HTTP-dates are all GMT anyway
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _parse(response: httpx.Response) -> dict[str, Any]:
    """Map a non-retried answer to a FHIR resource or to one of the adapter errors."""
    status = response.status_code
    if status in (404, 410):
        raise FhirNotFound(f"FHIR server answered {status}", status=status)
    if status >= 500:
        raise FhirUnavailable(f"FHIR server answered {status}", status=status)
    if status >= 400:
        raise FhirBadResponse(f"FHIR server answered {status}", status=status)
    if 300 <= status < 400:
        raise FhirBadResponse(
            f"FHIR server answered a redirect ({status}), not followed", status=status
        )
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise FhirBadResponse("FHIR server answered with something that is not JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise FhirBadResponse("FHIR server answered JSON that is not a FHIR resource")
    return body


def _parse_write(response: httpx.Response) -> WriteResult:
    """Map the answer to a write: 200/201 (a body or none) or 204 succeed, the rest raise."""
    status = response.status_code
    if status not in (200, 201, 204):
        if 200 <= status < 300:
            # 202 (accepted for later) and the like: the write is not known to have happened.
            raise FhirBadResponse(f"FHIR server answered a write with {status}", status=status)
        _parse(response)  # raises the error that status maps to
        raise FhirBadResponse(f"FHIR server answered {status}", status=status)  # pragma: no cover
    location = response.headers.get("Location")
    etag = response.headers.get("ETag")
    resource = _parse(response) if response.content.strip() else {}
    return WriteResult(status=status, resource=resource, location=location, etag=etag)


def _resource_type(resource: dict[str, Any]) -> str:
    """The ``resourceType`` of a resource about to be written, refused unless it is a type name."""
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(resource_type, str) or not _RESOURCE_TYPE.fullmatch(resource_type):
        raise ValueError("a resource to write needs a resourceType such as 'RiskAssessment'")
    return resource_type


def _last_updated(resource: dict[str, Any]) -> datetime | None:
    """``meta.lastUpdated`` as an aware datetime, or None when absent or not an instant."""
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else None


def _watermark(stamps: list[datetime | None], complete: bool) -> datetime | None:
    """The newest lastUpdated that is safe to store as the next ``gt`` watermark.

    After a complete read that is simply the newest seen. After a partial read, resources sharing
    the newest timestamp may continue on the unread page, and ``gt`` would then skip them; so the
    watermark stops just before that last group (re-reading it next time is harmless, merging is
    idempotent). If the server did not sort by _lastUpdated, a partial read says nothing about what
    is left, so the watermark does not move at all.
    """
    known = [s for s in stamps if s is not None]
    if not known:
        return None
    if complete:
        return max(known)
    if any(later < earlier for earlier, later in itertools.pairwise(known)):
        return None
    older = [s for s in known if s < known[-1]]
    return older[-1] if older else None


def _without_next(bundle: dict[str, Any]) -> list[Any]:
    return [
        link
        for link in bundle.get("link") or []
        if not (isinstance(link, dict) and link.get("relation") == "next")
    ]
