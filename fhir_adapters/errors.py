"""Errors of the FHIR adapters.

    FhirError                (status: the HTTP status that caused it, when there was one)
    ├── FhirUnavailable      the server did not answer, timed out, answered 5xx / 429 after the
    │                        retries allowed, or asked to be left alone for longer than the client
    │                        may wait (retry_after_s says how long it asked for)
    ├── FhirNotFound         404 / 410 for a read
    └── FhirBadResponse      an answer that is not the FHIR JSON asked for (a redirect, or 4xx other
                             than 404 / 410)

Callers in ``cds_service`` turn these into their own errors; httpx exceptions never leave here.
"""

from __future__ import annotations


class FhirError(Exception):
    """Base of the FHIR adapter errors. Messages never carry a URL query (it may hold ids)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class FhirUnavailable(FhirError):
    """The data could not be had now; trying again later may work.

    ``retry_after_s`` is the wait the server asked for (``Retry-After``) when the client gave up
    because it was longer than it may wait; a worker can use it to reschedule.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


class FhirNotFound(FhirError):
    """The resource read does not exist (or no longer does)."""


class FhirBadResponse(FhirError):
    """The server answered, but not with the FHIR JSON asked for; retrying will not help."""
