"""Verification of the EHR's JWT, as CDS Hooks 2.0.1 §Trusting CDS Clients requires.

The order of checks matters for safety: the header is inspected *before* any key is chosen, so
``alg: none`` and HMAC tokens (the classic "sign with the public key" attack) are refused without
ever reaching a verifier, and a key is only ever taken from a source tied to the token's issuer.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from cds_service.errors import Unauthorized
from cds_service.metrics import Metrics
from cds_service.security.replay import ReplayGuard
from cds_service.settings import JwtSettings, TrustedIssuer

log = logging.getLogger(__name__)

#: §JWT Signing Algorithm: ES384 and RS384 are the RECOMMENDED asymmetric algorithms; `none` and
#: symmetric algorithms MUST NOT be used. We accept exactly the two recommended ones.
ALLOWED_ALGORITHMS = ("ES384", "RS384")
_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]


@dataclass(frozen=True)
class VerifiedClient:
    """What a verified token tells us about the caller."""

    iss: str
    jti: str
    tenant: str | None
    expires_at: int


JwkSet = list[dict[str, Any]]


def _jwk_list(document: object) -> JwkSet:
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ValueError("a JWK Set is an object with a list of keys")
    return keys


class KeySource:
    """Signing keys per trusted issuer: out-of-band JWK Sets, and allow-listed ``jku`` URLs."""

    def __init__(self, settings: JwtSettings, http: httpx.AsyncClient) -> None:
        self._http = http
        self._ttl = settings.jwks_cache_ttl_s
        self._issuers: dict[str, TrustedIssuer] = {i.iss: i for i in settings.issuers}
        self._static: dict[str, JwkSet] = {}
        for issuer in settings.issuers:
            if issuer.jwks is not None:
                self._static[issuer.iss] = _jwk_list(issuer.jwks)
            elif issuer.jwks_path is not None:
                self._static[issuer.iss] = _jwk_list(json.loads(issuer.jwks_path.read_text()))
        if settings.dev_trust_sandbox:
            sandbox = json.loads(settings.sandbox_jwks_path.read_text())
            self._issuers.setdefault(
                settings.sandbox_issuer,
                TrustedIssuer(iss=settings.sandbox_issuer, jwks=sandbox),
            )
            self._static[settings.sandbox_issuer] = _jwk_list(sandbox)
            log.warning("DEVELOPMENT: trusting the public CDS Hooks sandbox signing key")
        self._fetched: dict[str, tuple[float, JwkSet]] = {}

    def is_trusted(self, iss: str) -> bool:
        return iss in self._issuers

    async def key_for(self, iss: str, kid: str, jku: str | None, alg: str) -> PyJWK:
        """The issuer's key with this ``kid``, bound to one algorithm.

        A JWK without ``alg`` is bound to the token's (already allow-listed) algorithm; PyJWK then
        refuses a key whose type does not fit it, e.g. an EC key for RS384.
        """
        issuer = self._issuers[iss]
        candidates: list[JwkSet] = []
        if jku is not None and issuer.jku is not None and jku == issuer.jku:
            candidates.append(await self._fetch(jku))
        if iss in self._static:
            candidates.append(self._static[iss])
        for keyset in candidates:
            for jwk in keyset:
                if jwk.get("kid") == kid:
                    try:
                        return PyJWK(jwk, algorithm=jwk.get("alg") or alg)
                    except jwt.PyJWTError as exc:
                        raise Unauthorized(
                            "the key does not fit the JWT alg", reason="alg"
                        ) from exc
        if jku is not None and jku != issuer.jku and iss not in self._static:
            raise Unauthorized("jku is not allow-listed for this issuer", reason="jku")
        raise Unauthorized("no trusted key has this kid", reason="kid")

    async def _fetch(self, url: str) -> JwkSet:
        cached = self._fetched.get(url)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            keyset = _jwk_list(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise Unauthorized("the issuer's JWK Set could not be fetched", reason="jwks") from exc
        self._fetched[url] = (time.monotonic(), keyset)
        return keyset


class EhrJwtVerifier:
    """Checks one bearer token against the exact URL that was called."""

    def __init__(
        self, settings: JwtSettings, keys: KeySource, replay: ReplayGuard, metrics: Metrics
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._replay = replay
        self._metrics = metrics

    async def authenticate(
        self, authorization: str | None, audience: str, required: bool
    ) -> VerifiedClient | None:
        """The verified caller from an ``Authorization`` header value; None only when optional.

        A token that is presented is always verified, whether or not the route requires one.
        """
        try:
            if authorization is None:
                if required:
                    raise Unauthorized("a bearer JWT from the EHR is required", reason="missing")
                return None
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("Authorization must be 'Bearer <JWT>'", reason="malformed")
            return await self._verify(token.strip(), audience)
        except Unauthorized as exc:
            self._metrics.jwt_rejections.labels(reason=exc.reason).inc()
            raise

    async def _verify(self, token: str, audience: str) -> VerifiedClient:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized("the bearer token is not a JWT", reason="malformed") from exc
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise Unauthorized(
                f"JWT alg must be one of {', '.join(ALLOWED_ALGORITHMS)}", reason="alg"
            )
        if header.get("typ") != "JWT":
            raise Unauthorized("JWT header typ must be JWT", reason="typ")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("JWT header kid is required", reason="kid")
        jku = header.get("jku")
        if jku is not None and not isinstance(jku, str):
            raise Unauthorized("JWT header jku must be a URL", reason="jku")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not self._keys.is_trusted(iss):
            raise Unauthorized("the JWT issuer is not trusted", reason="issuer")
        key = await self._keys.key_for(iss, kid, jku, alg)
        claims = self._decode(token, key, alg, audience, iss)
        exp, iat = int(claims["exp"]), int(claims["iat"])
        if exp - iat > self._settings.max_lifetime_s:
            raise Unauthorized("the JWT lives longer than allowed", reason="lifetime")
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti:
            raise Unauthorized("the JWT jti must be a non-empty string", reason="claims")
        if not await self._replay.first_use(iss, jti, exp):
            raise Unauthorized("this JWT was already used (jti replay)", reason="replay")
        tenant = claims.get("tenant")
        return VerifiedClient(
            iss=iss, jti=jti, tenant=tenant if isinstance(tenant, str) else None, expires_at=exp
        )

    def _decode(self, token: str, key: PyJWK, alg: str, audience: str, iss: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audience,
                issuer=iss,
                leeway=self._settings.clock_skew_s,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the JWT has expired", reason="expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized(
                "the JWT is not valid yet (iat/nbf)", reason="not-yet-valid"
            ) from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("the JWT aud is not the URL called", reason="audience") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("the JWT signature does not verify", reason="signature") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the JWT lacks the {exc.claim} claim", reason="claims") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Unauthorized("the JWT is invalid", reason="invalid") from exc
        return claims
