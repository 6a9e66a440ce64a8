"""Errors of the FHIR adapters.

    FhirError
    ├── FhirUnavailable      the server did not answer, timed out, or answered 5xx / 429
    ├── FhirNotFound         404 / 410 for a read
    └── FhirBadResponse      an answer that is not the FHIR JSON asked for (or 4xx other than 404)

Callers in ``cds_service`` turn these into their own errors; httpx exceptions never leave here.
"""

from __future__ import annotations


class FhirError(Exception):
    """Base of the FHIR adapter errors. Messages never carry a URL query (it may hold ids)."""


class FhirUnavailable(FhirError):
    pass


class FhirNotFound(FhirError):
    pass


class FhirBadResponse(FhirError):
    pass
