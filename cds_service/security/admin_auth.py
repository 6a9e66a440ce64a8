"""The admin API's authentication: named bearer tokens, configured as sha256 hashes only.

Separate from the EHR's JWTs on purpose: the EHR may call hooks, never change which model is
shown. ``Authorization: Bearer <token>`` for the CLI; ``Basic <name:token>`` so that a browser
can open the monitoring page (the name must then match the token's). The matched name is the
``actor`` of every audit event the request causes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from cds_service.errors import AdminUnauthorized, NotFound
from cds_service.settings import AdminSettings


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AdminAuth:
    def __init__(self, settings: AdminSettings) -> None:
        self._hashes = {
            name: secret.get_secret_value().strip().lower()
            for name, secret in settings.tokens.items()
        }

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def _match(self, token: str) -> str | None:
        presented = token_hash(token)
        found = None
        for name, expected in self._hashes.items():
            # compare against every entry: the time taken says nothing about which one matched
            if hmac.compare_digest(presented, expected):
                found = name
        return found

    def actor(self, authorization: str | None, method: str = "GET") -> str:
        """The admin's name, or raises (404 when the admin API is off, 401 otherwise).

        Basic is accepted for reading only: a browser replays cached Basic credentials on any
        request to the origin, so a page elsewhere could POST a change (CSRF); a Bearer header
        cannot be added cross-site without a preflight the API never grants."""
        if not self.enabled:
            raise NotFound("the admin API is not enabled (set CDS_ADMIN__TOKENS)")
        if not authorization:
            raise AdminUnauthorized("admin credentials required", reason="admin-missing")
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and value:
            name = self._match(value)
        elif scheme.lower() == "basic" and value and method not in ("GET", "HEAD"):
            raise AdminUnauthorized("changes need a Bearer token", reason="admin-basic-write")
        elif scheme.lower() == "basic" and value:
            try:
                user, _, token = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise AdminUnauthorized(
                    "malformed Basic credentials", reason="admin-malformed"
                ) from None
            name = self._match(token)
            if name is not None and not hmac.compare_digest(name.encode(), user.encode()):
                name = None
        else:
            raise AdminUnauthorized("use Bearer or Basic credentials", reason="admin-scheme")
        if name is None:
            raise AdminUnauthorized("admin credentials not recognised", reason="admin-invalid")
        return name
