"""One idempotent logging set-up: JSON lines in production, and no probes in the access log.

Log lines never carry a FHIR payload, a token, a name or an identifier (house rule 5): modules log
fixed messages with counts and labels, and the access log shows only method, route and status.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from cds_service.request_id import request_id

_QUIET_PATHS = ('"GET /healthz', '"GET /readyz', '"GET /metrics')
_configured = False


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry)


class _DropProbes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(path in message for path in _QUIET_PATHS)


class _NoQueryString(logging.Filter):
    """uvicorn's access line includes the query string, which may hold identifiers: cut it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3:
            args = list(record.args)
            if isinstance(args[2], str):
                args[2] = args[2].split("?", 1)[0]
            record.args = tuple(args)
        return True


#: Libraries that log request URLs at INFO/DEBUG: a FHIR search URL names the patient.
_IDENTIFYING_LOGGERS = ("httpx", "httpcore", "hpack", "urllib3")


def quiet_identifying_loggers() -> None:
    """Cap the loggers that would write FHIR URLs (``?patient=...``) at WARNING, whatever the
    logging configuration says; idempotent and done by ``create_app`` itself."""
    for name in _IDENTIFYING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(level: str = "INFO", json_lines: bool = True) -> None:
    global _configured  # noqa: PLW0603 - logging is process-wide by nature; this keeps it idempotent
    if _configured:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access = logging.getLogger("uvicorn.access")
    access.addFilter(_DropProbes())
    access.addFilter(_NoQueryString())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    _configured = True
