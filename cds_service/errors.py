"""Every error the service raises on purpose, each carrying its HTTP status.

    CdsError                     500  exception
    ├── BadRequest               400  invalid      malformed JSON, a field missing or wrong
    │   └── HookMismatch         400  invalid      the body's hook is not the service's hook
    ├── Unauthorized             401  security     the EHR's JWT is absent or fails a check
    ├── NotFound                 404  not-found    no such CDS service
    ├── PayloadTooLarge          413  too-long     the body is over the configured limit
    ├── PreconditionFailed       412  incomplete   needed FHIR data neither prefetched nor fetched
    ├── DependencyUnavailable    503  transient    Redis (or another part) does not answer
    └── Overloaded               503  throttled    more hook calls in flight than the limit

One handler in ``app.py`` renders each as a FHIR OperationOutcome (recommended for errors by the
CDS Hooks 3.0 ballot; 2.0.1 defines no error body). Third-party exceptions are re-raised as one of
these by the adapter that met them, with ``raise ... from exc``.
"""

from __future__ import annotations


class CdsError(Exception):
    """Base of the tree; ``status`` is the HTTP status, ``code`` the FHIR IssueType code."""

    status: int = 500
    code: str = "exception"

    def __init__(
        self,
        message: str,
        *,
        expression: str | None = None,
        more: list[tuple[str | None, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: (FHIRPath-like location, message) of every problem, the first being ``message``
        self.issues: list[tuple[str | None, str]] = [(expression, message), *(more or [])]

    @property
    def expression(self) -> str | None:
        return self.issues[0][0]

    def operation_outcome(self) -> dict[str, object]:
        issues: list[dict[str, object]] = []
        for expression, message in self.issues:
            issue: dict[str, object] = {
                "severity": "error",
                "code": self.code,
                "diagnostics": message,
            }
            if expression:
                issue["expression"] = [expression]
            issues.append(issue)
        return {"resourceType": "OperationOutcome", "issue": issues}


class BadRequest(CdsError):
    status = 400
    code = "invalid"


class HookMismatch(BadRequest):
    pass


class Unauthorized(CdsError):
    status = 401
    code = "security"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        #: a short, fixed label for metrics (never the token or a claim value)
        self.reason = reason


class AdminUnauthorized(Unauthorized):
    """The admin API's own refusal: challenges for HTTP Basic so a browser can open the page."""

    challenge = 'Basic realm="cds-admin", charset="UTF-8"'


class Conflict(CdsError):
    """A lifecycle change the deployment state or the policy does not allow now."""

    status = 409
    code = "conflict"


class NotFound(CdsError):
    status = 404
    code = "not-found"


class PreconditionFailed(CdsError):
    status = 412
    code = "incomplete"


class PayloadTooLarge(CdsError):
    status = 413
    code = "too-long"


class DependencyUnavailable(CdsError):
    status = 503
    code = "transient"


class Overloaded(CdsError):
    """Answered at once instead of queueing: a call that waits behind dozens of others would
    reach the clinician seconds late, and the EHR treats a 503 as "no cards" and moves on."""

    status = 503
    code = "throttled"
