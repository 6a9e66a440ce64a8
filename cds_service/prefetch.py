"""What a hook call's prefetch holds, and fetching what it lacks (CDS Hooks 2.0.1 §Prefetch).

The spec gives each shape of a prefetch value its own meaning, and they must not be confused:

* key **missing**: the client did not or could not fetch it; the service fetches it itself;
* value **null** (or a searchset with no entries): the client ran the query and found nothing;
* an **OperationOutcome**: the client's own fetch failed, so this is the same as missing;
* a searchset with a ``next`` link: more pages exist; follow them when the FHIR server is usable.

412 is answered only when a key the service needs is neither prefetched nor fetchable.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

from cds_service.catalogue import CdsService, PrefetchTemplate
from cds_service.errors import BadRequest, PreconditionFailed
from cds_service.metrics import Metrics
from cds_service.security.fhir_allowlist import FhirAccess
from cds_service.settings import FhirSettings
from fhir_adapters.client import FhirClient, next_link
from fhir_adapters.errors import FhirError, FhirNotFound

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"\{\{\s*context\.([A-Za-z][A-Za-z0-9]*)\s*\}\}")
_READ = re.compile(r"^([A-Z][A-Za-z]+)/\{\{\s*context\.([A-Za-z][A-Za-z0-9]*)\s*\}\}$")


class Source(StrEnum):
    PREFETCH = "prefetch"  # complete data from the client
    PARTIAL = "partial"  # the client's searchset had more pages that could not be read
    EMPTY = "empty"  # the query ran and found nothing
    FETCHED = "fetched"  # read by the service from fhirServer
    UNAVAILABLE = "unavailable"  # neither prefetched nor fetchable
    CACHED = "cached"  # not prefetched, and not fetched: the workers' cache is fresh


@dataclass(frozen=True)
class PrefetchResult:
    """Per key: the resource (a Bundle for searches) or None for no data, and where it came from."""

    resources: dict[str, dict[str, Any] | None]
    sources: dict[str, Source]


def _is_outcome(value: dict[str, Any] | None) -> bool:
    return value is not None and value.get("resourceType") == "OperationOutcome"


def render(query: str, context: dict[str, Any]) -> str | None:
    """Fill ``{{context.x}}`` tokens from the context; None when a token has no primitive value."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        found = context.get(match.group(1))
        if not isinstance(found, str) or not found:
            missing = True
            return ""
        return found

    rendered = _TOKEN.sub(value, query)
    return None if missing else rendered


def _is_empty(resource: dict[str, Any]) -> bool:
    return resource.get("resourceType") == "Bundle" and not resource.get("entry")


def check_shape(
    key: str, template: PrefetchTemplate, value: dict[str, Any], context: dict[str, Any]
) -> None:
    """Refuse prefetch that cannot be what the template asked for: it may be another patient's."""
    where = f"prefetch.{key}"
    resource_type = value.get("resourceType")
    if not isinstance(resource_type, str):
        raise BadRequest(f"{where} is not a FHIR resource (no resourceType)", expression=where)
    if resource_type == "OperationOutcome":
        return
    if resource_type != template.resource_type:
        raise BadRequest(
            f"{where} must be a {template.resource_type}, not a {resource_type}", expression=where
        )
    if resource_type == "Bundle":
        if not isinstance(value.get("entry", []), list):
            raise BadRequest(f"{where}.entry must be an array", expression=f"{where}.entry")
        return
    read = _READ.match(template.query)
    expected_id = context.get(read.group(2)) if read else None
    if expected_id is not None and value.get("id") != expected_id:
        raise BadRequest(
            f"{where}.id does not match the context the template names", expression=f"{where}.id"
        )


class PrefetchResolver:
    """Resolves every prefetch key of a service for one call."""

    def __init__(self, http: httpx.AsyncClient, settings: FhirSettings, metrics: Metrics) -> None:
        self._http = http
        self._settings = settings
        self._metrics = metrics

    def _client(self, access: FhirAccess | None) -> FhirClient | None:
        if access is None:
            return None
        return FhirClient(
            self._http,
            access.base_url,
            access.token,
            timeout_s=self._settings.timeout_s,
            max_pages=self._settings.max_pages,
            retries=self._settings.hook_retries,
            deadline_s=self._settings.hook_deadline_s,
        )

    async def resolve(
        self,
        service: CdsService,
        context: dict[str, Any],
        prefetch: dict[str, dict[str, Any] | None] | None,
        access: FhirAccess | None,
        *,
        cached: bool = False,
    ) -> PrefetchResult:
        """Each key's data. With ``cached`` (the workers refreshed this patient recently) a key
        that was not prefetched is not fetched either: the timeline and the cached stay hold it."""
        given = prefetch or {}
        for key, template in service.prefetch.items():
            value = given.get(key)
            if value is not None:
                check_shape(key, template, value, context)
        client = self._client(access)
        resources: dict[str, dict[str, Any] | None] = {}
        sources: dict[str, Source] = {}
        for key, template in service.prefetch.items():
            if cached and (key not in given or _is_outcome(given[key])):
                resource, source = None, Source.CACHED
            else:
                resource, source = await self._one(key, template, given, context, client)
            resources[key], sources[key] = resource, source
            self._metrics.prefetch.labels(service=service.id, key=key, source=source).inc()
        unmet = [
            k
            for k, t in service.prefetch.items()
            if t.required and sources[k] is Source.UNAVAILABLE
        ]
        if unmet:
            why = (
                "no usable fhirServer" if client is None else "the FHIR server could not supply it"
            )
            first, *rest = unmet
            raise PreconditionFailed(
                f"prefetch.{first} is needed, was not prefetched, and {why}",
                expression=f"prefetch.{first}",
                more=[
                    (f"prefetch.{k}", f"prefetch.{k} is needed and could not be had") for k in rest
                ],
            )
        return PrefetchResult(resources=resources, sources=sources)

    async def _one(  # noqa: PLR0911 - one return per prefetch case of the spec reads clearest
        self,
        key: str,
        template: PrefetchTemplate,
        given: dict[str, dict[str, Any] | None],
        context: dict[str, Any],
        client: FhirClient | None,
    ) -> tuple[dict[str, Any] | None, Source]:
        if key in given:
            value = given[key]
            if value is None:
                return None, Source.EMPTY
            if value.get("resourceType") != "OperationOutcome":
                return await self._given(value, client)
        if client is None:
            return None, Source.UNAVAILABLE
        query = render(template.query, context)
        if query is None:
            return None, Source.UNAVAILABLE
        try:
            if template.resource_type == "Bundle":
                bundle, complete = await client.search(query)
                self._metrics.fhir_requests.labels(outcome="ok").inc()
                if _is_empty(bundle):
                    return None, Source.EMPTY
                return bundle, Source.FETCHED if complete else Source.PARTIAL
            resource = await client.get(query)
        except FhirNotFound:
            self._metrics.fhir_requests.labels(outcome="not-found").inc()
            return None, Source.EMPTY
        except FhirError as exc:
            self._metrics.fhir_requests.labels(outcome="error").inc()
            log.warning("prefetch key %s could not be fetched: %s", key, exc)
            return None, Source.UNAVAILABLE
        self._metrics.fhir_requests.labels(outcome="ok").inc()
        if resource.get("resourceType") != template.resource_type:
            return None, Source.UNAVAILABLE
        return resource, Source.FETCHED

    async def _given(
        self, value: dict[str, Any], client: FhirClient | None
    ) -> tuple[dict[str, Any] | None, Source]:
        if _is_empty(value):
            return None, Source.EMPTY
        if value.get("resourceType") != "Bundle" or next_link(value) is None:
            return value, Source.PREFETCH
        if client is None:
            return value, Source.PARTIAL
        try:
            bundle, complete = await client.complete_bundle(value)
        except FhirError as exc:
            log.warning("further prefetch pages could not be read: %s", exc)
            return value, Source.PARTIAL
        return bundle, Source.PREFETCH if complete else Source.PARTIAL
