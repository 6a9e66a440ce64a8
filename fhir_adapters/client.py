"""A small async FHIR R4 client over one shared ``httpx.AsyncClient``: read, search, paging.

It is bound to one base URL and never sends its token anywhere else: a ``next`` link that points
outside the base URL ends paging instead of being followed (a Bundle is data from the network and
its links are not trusted).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
from pydantic import SecretStr

from fhir_adapters.errors import FhirBadResponse, FhirNotFound, FhirUnavailable

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


class FhirClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        token: SecretStr | None,
        timeout_s: float,
        max_pages: int,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout_s
        self._max_pages = max_pages

    def is_within(self, url: str) -> bool:
        """True when ``url`` lies under this client's base URL (same scheme, host, port, path)."""
        base, other = urlsplit(self._base), urlsplit(url)
        return (other.scheme, other.netloc.lower()) == (base.scheme, base.netloc.lower()) and (
            other.path == base.path or other.path.startswith(base.path.rstrip("/") + "/")
        )

    async def get(self, relative_or_absolute: str) -> dict[str, Any]:
        """GET one resource (a read or one page of a search) as a JSON object."""
        url = urljoin(self._base + "/", relative_or_absolute.lstrip("/"))
        if not self.is_within(url):
            raise FhirBadResponse("refusing to send a request outside the FHIR server's base URL")
        headers = {"Accept": FHIR_JSON}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        try:
            response = await self._http.get(url, headers=headers, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise FhirUnavailable(f"FHIR server did not answer: {type(exc).__name__}") from exc
        if response.status_code in (404, 410):
            raise FhirNotFound(f"FHIR server answered {response.status_code}")
        if response.status_code == 429 or response.status_code >= 500:
            raise FhirUnavailable(f"FHIR server answered {response.status_code}")
        if response.status_code >= 400:
            raise FhirBadResponse(f"FHIR server answered {response.status_code}")
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise FhirBadResponse("FHIR server answered with something that is not JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirBadResponse("FHIR server answered JSON that is not a FHIR resource")
        return body

    async def complete_bundle(self, bundle: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Follow ``next`` links of a searchset, appending entries; True when it ended complete."""
        entries = list(bundle.get("entry") or [])
        page = bundle
        for _ in range(self._max_pages):
            next_url = next_link(page)
            if next_url is None:
                return {**bundle, "entry": entries, "link": _without_next(bundle)}, True
            if not self.is_within(next_url):
                log.warning("ignored a next link that points outside the FHIR server")
                break
            page = await self.get(next_url)
            if page.get("resourceType") != "Bundle":
                raise FhirBadResponse("a next page was not a Bundle")
            entries.extend(page.get("entry") or [])
        complete = next_link(page) is None
        return {**bundle, "entry": entries, "link": _without_next(bundle)}, complete

    async def search(self, query: str) -> tuple[dict[str, Any], bool]:
        """Run a search and follow its pages; True when every page was read."""
        first = await self.get(query)
        if first.get("resourceType") != "Bundle":
            raise FhirBadResponse("a search did not answer with a Bundle")
        return await self.complete_bundle(first)


def next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


def _without_next(bundle: dict[str, Any]) -> list[Any]:
    return [
        link
        for link in bundle.get("link") or []
        if not (isinstance(link, dict) and link.get("relation") == "next")
    ]
