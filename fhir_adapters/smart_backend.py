"""SMART Backend Services: the workers' own access token, by client credentials and a signed JWT.

HL7 SMART App Launch 2.x, "Backend Services" with "Client Authentication: Asymmetric (public
key)": the client POSTs ``grant_type=client_credentials`` with a ``client_assertion`` (a JWT it
signs with RS384 or ES384; ``iss`` = ``sub`` = client_id, ``aud`` = the token endpoint URL, an
``exp`` at most five minutes ahead, a unique ``jti``) and gets back a bearer token with an
``expires_in``. The token is cached until ``renew_margin_s`` before it expires; concurrent callers
share one request.

Errors, beside ``fhir_adapters.errors``::

    FhirError
    ├── TokenRefused         the token endpoint answered 4xx (other than 408 / 429): the client
    │                        registration, key or scope is wrong; ``error`` is the OAuth code only
    ├── FhirUnavailable
    │   └── TokenUnavailable the endpoint could not be reached, timed out, or answered 5xx / 408 /
    │                        429: transient, so callers' retry logic treats it like the FHIR server
    └── FhirBadResponse      (reused) a redirect, or a 2xx that is not a usable token response

Nothing here logs or puts into a message the access token, the assertion, the key or a response
body: log lines and messages carry status codes, OAuth error codes and class names only.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from fhir_adapters.client import retry_after_seconds
from fhir_adapters.errors import FhirBadResponse, FhirError, FhirUnavailable

log = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: The spec caps ``exp`` at five minutes after "now"; staying a minute under it leaves room for an
#: authorisation server whose clock runs behind ours, which would otherwise refuse the assertion.
ASSERTION_LIFETIME_S = 240

#: ``expires_in`` is only RECOMMENDED (RFC 6749 §5.1). Without it, the token is assumed to last
#: five minutes, the shortest lifetime SMART servers commonly issue: renewing early costs one
#: request, while assuming too long would send an expired token (a 401, then a renewal).
DEFAULT_EXPIRES_IN_S = 300

# RFC 6749 §5.2: error = 1*( %x20-21 / %x23-5B / %x5D-7E ). Stricter here, so that whatever the
# server put there cannot smuggle text from the request into a message or a log line.
_ERROR_CODE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")

# 408 and 429 are 4xx but say "not now", not "not you".
_TRANSIENT_4XX = frozenset({408, 429})


class TokenRefused(FhirError):
    """The token endpoint refused the request (4xx); asking again the same way will not help.

    ``error`` is the OAuth error code (``invalid_client``, ``invalid_scope``, …) when the answer
    carried a well-formed one, else None.
    """

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None):
        super().__init__(message, status=status)
        self.error = error


class TokenUnavailable(FhirUnavailable):
    """No token could be had now (no answer, a timeout, 5xx, 408 or 429); later may work."""


class TokenResponse(BaseModel):
    """The token endpoint's JSON answer (SMART Backend Services, "Response"); extra keys ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    access_token: SecretStr = Field(min_length=1)
    token_type: str
    #: Seconds the token lasts; absent → ``DEFAULT_EXPIRES_IN_S`` (see there for why).
    expires_in: int = Field(default=DEFAULT_EXPIRES_IN_S, gt=0)
    scope: str | None = None

    @field_validator("token_type")
    @classmethod
    def _bearer(cls, value: str) -> str:
        # RFC 6749 §7.1: the token type is case-insensitive; SMART servers send "bearer" or
        # "Bearer". Any other type (e.g. DPoP) needs a different way of sending it.
        if value.lower() != "bearer":
            raise ValueError("token_type must be bearer")
        return value


@dataclass(frozen=True)
class _Cached:
    token: SecretStr
    renew_at: float  # time.monotonic()


class BackendAuth:
    """A cached SMART Backend Services access token for one client at one token endpoint.

    Make one per event loop, next to the ``httpx.AsyncClient`` it uses: its lock, like that
    client, belongs to the loop that first uses it.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str,
        client_id: str,
        private_key_pem: SecretStr | bytes,
        alg: Literal["RS384", "ES384"],
        kid: str,
        scope: str,
        renew_margin_s: float = 30,
        timeout_s: float = 10,
        jku: str | None = None,
    ) -> None:
        if renew_margin_s < 0 or timeout_s <= 0:
            raise ValueError("renew_margin_s must not be negative and timeout_s must be positive")
        if not client_id or not kid or not scope.strip():
            raise ValueError("client_id, kid and scope must not be empty")
        _require_secure_url(token_url, "token_url")
        if jku is not None:
            _require_secure_url(jku, "jku")
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._key = _signing_key(private_key_pem, alg)
        self._alg = alg
        self._header = {"kid": kid, "typ": "JWT"} | ({"jku": jku} if jku is not None else {})
        self._scope = scope
        self._margin = renew_margin_s
        self._timeout = timeout_s
        self._cached: _Cached | None = None
        self._lock = asyncio.Lock()
        self._requests = 0  # token requests finished, either way
        self._last_failure: FhirError | None = None

    def client_assertion(self, now: float | None = None) -> str:
        """A freshly signed ``client_assertion`` JWT; ``now`` (Unix seconds) is for tests."""
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._token_url,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME_S,
            # The server must refuse a jti it has seen (replay); 256 random bits never repeat.
            "jti": secrets.token_urlsafe(32),
        }
        return jwt.encode(claims, self._key, algorithm=self._alg, headers=self._header)

    async def token(self) -> SecretStr:
        """The current access token, from the cache or, when due for renewal, newly requested."""
        cached = self._fresh()
        if cached is not None:
            return cached
        seen = self._requests
        async with self._lock:
            cached = self._fresh()
            if cached is not None:
                return cached
            if self._requests != seen and self._last_failure is not None:
                # The request another caller made while this one waited has just failed: share
                # its outcome rather than sending the endpoint one more request per waiter.
                raise _again(self._last_failure) from self._last_failure
            # Cleared first: a request cut short by cancellation leaves no failure to share.
            self._last_failure = None
            try:
                self._cached = await self._request()
            except FhirError as failure:
                self._last_failure = failure
                raise
            finally:
                self._requests += 1
            return self._cached.token

    def invalidate(self, token: SecretStr) -> None:
        """The FHIR server answered 401 to ``token``: forget it if it is still the cached one.

        A token renewed meanwhile by another caller is kept, so a burst of 401s for an old token
        causes one renewal, not one each.
        """
        cached = self._cached
        if cached is not None and hmac.compare_digest(
            cached.token.get_secret_value().encode(), token.get_secret_value().encode()
        ):
            self._cached = None

    def _fresh(self) -> SecretStr | None:
        cached = self._cached
        if cached is not None and time.monotonic() < cached.renew_at:
            return cached.token
        return None

    async def _request(self) -> _Cached:
        # The lifetime counts from before the request, so time spent waiting for the answer
        # shortens our idea of the token's life rather than lengthening it.
        started = time.monotonic()
        form = {
            "grant_type": "client_credentials",
            "scope": self._scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        try:
            response = await self._http.post(
                self._token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                # A redirect would carry the assertion to wherever it points.
                follow_redirects=False,
            )
        except httpx.HTTPError as exc:
            what = type(exc).__name__
            log.warning("token endpoint did not answer (%s)", what)
            raise TokenUnavailable(f"the token endpoint did not answer: {what}") from exc
        answer = _token_response(response)
        renew_at = started + max(0.0, answer.expires_in - self._margin)
        log.info("got an access token lasting %d s", answer.expires_in)
        return _Cached(answer.access_token, renew_at)


def _token_response(response: httpx.Response) -> TokenResponse:
    """Map the token endpoint's answer to a token response or to one of the errors."""
    status = response.status_code
    if status >= 500 or status in _TRANSIENT_4XX:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        log.warning("token endpoint answered %s", status)
        raise TokenUnavailable(
            f"the token endpoint answered {status}", status=status, retry_after_s=retry_after
        )
    if status >= 400:
        error = _oauth_error(response.content)
        log.warning("token endpoint refused the request: %s %s", status, error or "(no code)")
        raise TokenRefused(
            f"the token endpoint refused the request ({status} {error or 'no error code'})",
            status=status,
            error=error,
        )
    if status != 200:
        raise FhirBadResponse(f"the token endpoint answered {status}, not 200", status=status)
    try:
        return TokenResponse.model_validate_json(response.content)
    except ValidationError:
        # Not chained: a ValidationError quotes its input, which may include the access token.
        raise FhirBadResponse("the token endpoint's answer is not a bearer token") from None


def _oauth_error(body: bytes) -> str | None:
    """The ``error`` code of an OAuth error answer (RFC 6749 §5.2), if it carried a sane one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    code = document.get("error") if isinstance(document, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None


def _again(failure: FhirError) -> FhirError:
    """A new error like ``failure``, for a caller that waited on the request that failed."""
    if isinstance(failure, TokenRefused):
        return TokenRefused(str(failure), status=failure.status, error=failure.error)
    if isinstance(failure, FhirUnavailable):
        return TokenUnavailable(
            str(failure), status=failure.status, retry_after_s=failure.retry_after_s
        )
    return FhirBadResponse(str(failure), status=failure.status)


def _signing_key(
    pem: SecretStr | bytes, alg: Literal["RS384", "ES384"]
) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """The private key from PEM, refused unless it fits ``alg`` (RFC 7518 §3.3, §3.4)."""
    raw = pem.get_secret_value().encode() if isinstance(pem, SecretStr) else pem
    try:
        key = load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        # cryptography's messages describe the format problem, never the key material.
        raise ValueError("private_key_pem is not an unencrypted PEM private key") from exc
    if alg == "RS384":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("RS384 needs an RSA private key")
        if key.key_size < 2048:
            raise ValueError("RS384 needs an RSA key of at least 2048 bits (RFC 7518 §3.3)")
        return key
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ValueError("ES384 needs an EC private key on the P-384 curve")
    return key


def _require_secure_url(url: str, name: str) -> None:
    """Refuse a URL that is not https, except http to a loopback host (local tests)."""
    try:
        parts = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{name} is not a valid URL") from exc
    if not parts.host:
        raise ValueError(f"{name} must be an absolute URL")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _is_loopback(parts.host):
        return
    raise ValueError(f"{name} must use https (http only to a loopback address)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
