"""BackendAuth against a real token endpoint over TCP that verifies the assertion as an EHR would."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr, ValidationError

from fhir_adapters.errors import FhirBadResponse, FhirUnavailable
from fhir_adapters.smart_backend import (
    ASSERTION_LIFETIME_S,
    CLIENT_ASSERTION_TYPE,
    DEFAULT_EXPIRES_IN_S,
    BackendAuth,
    TokenRefused,
    TokenResponse,
    TokenUnavailable,
)

T = TypeVar("T")
CLIENT_ID = "sepsis-cds-worker"
SCOPE = "system/Observation.rs system/Encounter.rs system/RiskAssessment.cu"
KID = "worker-key-1"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@cache
def tls() -> ssl.SSLContext:
    """One TLS context for every test client: building one per client costs ~0.1 s."""
    return ssl.create_default_context()


def pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {
        "RS384": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
    }


@dataclass(frozen=True)
class Answer:
    """A canned answer for the next token request (instead of a token), after ``delay_s``."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    form: dict[str, str]
    headers: dict[str, str]
    claims: dict[str, Any] | None = None
    jwt_header: dict[str, Any] | None = None
    refused: str | None = None  # why the endpoint refused the assertion, if it did


class TokenEndpoint:
    """An authorisation server's token endpoint for one registered client and its public key.

    It checks what SMART Backend Services says a server must check, refusing with
    ``invalid_client`` otherwise (the description echoes the assertion, as careless servers do, so
    tests can prove it never reaches a message). It hands out ``token-1``, ``token-2``, …
    """

    def __init__(self, public_key: Any, alg: str) -> None:
        self.public_key, self.alg = public_key, alg
        self.expires_in: int | None = 300
        self.delay_s = 0.0
        self.seen: list[Seen] = []
        self.answers: deque[Answer] = deque()
        self._jtis: set[str] = set()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                owner._handle(self, self.rfile.read(length))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/auth/token"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _handle(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        form = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        seen = Seen(form, headers)
        with self._lock:
            self.seen.append(seen)
            canned = self.answers.popleft() if self.answers else None
            number = len(self.seen)
        time.sleep(canned.delay_s if canned else self.delay_s)
        if canned is not None:
            self._send(handler, canned.status, canned.body, canned.headers)
            return
        seen.refused = self._check(seen)
        if seen.refused is not None:
            echo = f"bad assertion {form.get('client_assertion')}"
            self._send(handler, 400, {"error": "invalid_client", "error_description": echo}, {})
            return
        answer: dict[str, Any] = {
            "access_token": f"token-{number}",
            "token_type": "bearer",
            "scope": form["scope"],
        }
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        self._send(handler, 200, answer, {"Cache-Control": "no-store"})

    def _check(self, seen: Seen) -> str | None:  # noqa: PLR0911 - one return per check, in order
        form = seen.form
        if not seen.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return "content-type"
        if form.get("grant_type") != "client_credentials":
            return "grant_type"
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            return "client_assertion_type"
        if not form.get("scope"):
            return "scope"
        assertion = form.get("client_assertion", "")
        try:
            seen.jwt_header = jwt.get_unverified_header(assertion)
            seen.claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=[self.alg],
                audience=self.url,
                issuer=CLIENT_ID,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.PyJWTError as exc:
            return type(exc).__name__
        if seen.jwt_header.get("kid") != KID or seen.jwt_header.get("typ") != "JWT":
            return "header"
        if seen.claims["sub"] != CLIENT_ID:
            return "sub"
        if seen.claims["exp"] > time.time() + 300:
            return "exp too far ahead"
        with self._lock:
            if seen.claims["jti"] in self._jtis:
                return "jti replayed"
            self._jtis.add(seen.claims["jti"])
        return None

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str]
    ) -> None:
        content = b"" if body is None else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(content)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(content)


@pytest.fixture(params=["RS384", "ES384"])
def alg(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def endpoint(keys: dict[str, PrivateKey], alg: str) -> Iterator[TokenEndpoint]:
    server = TokenEndpoint(keys[alg].public_key(), alg)
    yield server
    server.close()


def run(
    endpoint: TokenEndpoint,
    keys: dict[str, PrivateKey],
    alg: str,
    scenario: Callable[[BackendAuth], Awaitable[T]],
    **options: Any,
) -> T:
    """Run ``scenario`` with a BackendAuth for ``endpoint`` on a fresh httpx.AsyncClient."""

    async def main() -> T:
        async with httpx.AsyncClient(verify=tls()) as http:
            auth = BackendAuth(
                http,
                token_url=options.pop("token_url", endpoint.url),
                client_id=CLIENT_ID,
                private_key_pem=options.pop("private_key_pem", SecretStr(pem(keys[alg]).decode())),
                alg=alg,  # type: ignore[arg-type]
                kid=KID,
                scope=SCOPE,
                **options,
            )
            return await scenario(auth)

    return asyncio.run(main())


@pytest.mark.integration
def test_token_request_is_a_verified_client_credentials_grant(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str
) -> None:
    token = run(endpoint, keys, alg, lambda auth: auth.token())
    assert token.get_secret_value() == "token-1"
    [seen] = endpoint.seen
    assert seen.refused is None
    assert seen.form["scope"] == SCOPE
    assert "authorization" not in seen.headers  # the assertion is the only credential
    assert seen.jwt_header == {"alg": alg, "kid": KID, "typ": "JWT"}
    assert seen.claims is not None and seen.claims["aud"] == endpoint.url


@pytest.mark.integration
def test_the_private_key_may_be_given_as_bytes(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str
) -> None:
    token = run(endpoint, keys, alg, lambda auth: auth.token(), private_key_pem=pem(keys[alg]))
    assert token.get_secret_value() == "token-1"


@pytest.mark.integration
def test_the_token_is_cached_until_renewal_is_due(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str
) -> None:
    async def twice(auth: BackendAuth) -> list[str]:
        return [(await auth.token()).get_secret_value() for _ in range(2)]

    assert run(endpoint, keys, alg, twice) == ["token-1", "token-1"]
    assert len(endpoint.seen) == 1


@pytest.mark.integration
@pytest.mark.parametrize("expires_in", [2, None], ids=["short", "absent"])
def test_the_token_is_renewed_once_expiry_minus_the_margin_has_passed(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str, expires_in: int | None
) -> None:
    endpoint.expires_in = expires_in
    # An absent expires_in counts as DEFAULT_EXPIRES_IN_S: a margin just under it renews soon.
    margin = 1.5 if expires_in is not None else DEFAULT_EXPIRES_IN_S - 0.5

    async def scenario(auth: BackendAuth) -> list[str]:
        first, again = await auth.token(), await auth.token()
        await asyncio.sleep(0.7)
        return [t.get_secret_value() for t in (first, again, await auth.token())]

    got = run(endpoint, keys, alg, scenario, renew_margin_s=margin)
    assert got == ["token-1", "token-1", "token-2"]
    assert all(seen.refused is None for seen in endpoint.seen)


@pytest.mark.integration
def test_invalidate_drops_only_the_token_still_cached(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str
) -> None:
    async def scenario(auth: BackendAuth) -> list[str]:
        first = await auth.token()
        auth.invalidate(first)  # the FHIR server answered 401 to it
        second = await auth.token()
        auth.invalidate(first)  # a late 401 for the old token: the new one stays
        auth.invalidate(SecretStr("never-issued"))
        return [t.get_secret_value() for t in (first, second, await auth.token())]

    assert run(endpoint, keys, alg, scenario) == ["token-1", "token-2", "token-2"]
    assert len(endpoint.seen) == 2


@pytest.mark.integration
def test_concurrent_callers_share_one_token_request(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str
) -> None:
    endpoint.delay_s = 0.2  # long enough for all ten to be waiting at once

    async def scenario(auth: BackendAuth) -> set[str]:
        tokens = await asyncio.gather(*(auth.token() for _ in range(10)))
        return {t.get_secret_value() for t in tokens}

    assert run(endpoint, keys, alg, scenario) == {"token-1"}
    assert len(endpoint.seen) == 1


@pytest.mark.integration
def test_concurrent_callers_share_one_failure_too(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str
) -> None:
    endpoint.answers.append(Answer(503, {"error": "temporarily_unavailable"}, delay_s=0.2))

    async def scenario(auth: BackendAuth) -> list[BaseException | SecretStr]:
        failed = await asyncio.gather(*(auth.token() for _ in range(10)), return_exceptions=True)
        return [*failed, await auth.token()]  # the next call, after the failure, asks again

    *failed, later = run(endpoint, keys, alg, scenario)
    assert all(isinstance(f, TokenUnavailable) and f.status == 503 for f in failed)
    assert isinstance(later, SecretStr) and later.get_secret_value() == "token-2"
    assert len(endpoint.seen) == 2


@pytest.mark.integration
def test_invalid_client_is_refused_without_secrets_in_message_or_log(
    keys: dict[str, PrivateKey], alg: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fhir_adapters")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES384":
        other = ec.generate_private_key(ec.SECP384R1())  # type: ignore[assignment]
    # The endpoint knows another public key, so the signature does not verify.
    server = TokenEndpoint(other.public_key(), alg)
    try:
        with pytest.raises(TokenRefused) as caught:
            run(server, keys, alg, lambda auth: auth.token())
    finally:
        server.close()
    [seen] = server.seen
    assert seen.refused == "InvalidSignatureError"
    assert caught.value.status == 400 and caught.value.error == "invalid_client"
    assert not isinstance(caught.value, FhirUnavailable)  # retrying will not help
    assertion = seen.form["client_assertion"]
    key_text = pem(keys[alg]).decode()
    texts = [str(caught.value), *(r.getMessage() for r in caplog.records)]
    assert any("invalid_client" in text for text in texts)
    for text in texts:
        assert assertion not in text and "bad assertion" not in text
        assert assertion.split(".")[1] not in text and key_text[40:80] not in text


@pytest.mark.integration
@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Answer(401, {"error": "invalid_client"}), "invalid_client"),
        (Answer(400, {"error": "invalid_scope"}), "invalid_scope"),
        (Answer(403, "<html>forbidden</html>"), None),
        (Answer(400, {"error": "x\n<script> secret"}), None),
    ],
    ids=["401", "invalid_scope", "not-json", "odd-code"],
)
def test_other_refusals_carry_only_a_well_formed_error_code(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str, answer: Answer, error: str
) -> None:
    endpoint.answers.append(answer)
    with pytest.raises(TokenRefused) as caught:
        run(endpoint, keys, alg, lambda auth: auth.token())
    assert caught.value.status == answer.status and caught.value.error == error
    assert "secret" not in str(caught.value) and "html" not in str(caught.value)


@pytest.mark.integration
@pytest.mark.parametrize("status", [503, 500, 429])
def test_5xx_and_429_are_unavailable_with_retry_after(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str, status: int
) -> None:
    endpoint.answers.append(Answer(status, {"error": "later"}, {"Retry-After": "7"}))
    with pytest.raises(TokenUnavailable) as caught:
        run(endpoint, keys, alg, lambda auth: auth.token())
    assert isinstance(caught.value, FhirUnavailable)
    assert caught.value.status == status and caught.value.retry_after_s == 7.0


@pytest.mark.integration
def test_a_slow_endpoint_times_out_as_unavailable(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str
) -> None:
    endpoint.delay_s = 1.0
    with pytest.raises(TokenUnavailable, match="ReadTimeout"):
        run(endpoint, keys, alg, lambda auth: auth.token(), timeout_s=0.2)


@pytest.mark.integration
def test_an_unreachable_endpoint_is_unavailable(keys: dict[str, PrivateKey]) -> None:
    closed = TokenEndpoint(keys["ES384"].public_key(), "ES384")
    closed.close()  # its port now refuses connections
    with pytest.raises(TokenUnavailable, match="ConnectError"):
        run(closed, keys, "ES384", lambda auth: auth.token())


@pytest.mark.integration
@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, {"access_token": "leaky-token-value", "token_type": "DPoP"}),
        Answer(200, {"access_token": "leaky-token-value", "token_type": "bearer", "expires_in": 0}),
        Answer(200, {"token_type": "bearer"}),
        Answer(302, None, {"Location": "http://127.0.0.1:9/steal"}),
    ],
    ids=["dpop", "expires-0", "no-token", "redirect"],
)
def test_an_unusable_answer_is_a_bad_response_without_the_token(
    endpoint: TokenEndpoint, keys: dict[str, PrivateKey], alg: str, answer: Answer
) -> None:
    endpoint.answers.append(answer)
    with pytest.raises(FhirBadResponse) as caught:
        run(endpoint, keys, alg, lambda auth: auth.token())
    assert "leaky" not in str(caught.value) and caught.value.__cause__ is None
    assert len(endpoint.seen) == 1  # the redirect was not followed


def test_the_assertion_lasts_at_most_five_minutes_and_never_repeats_a_jti(
    keys: dict[str, PrivateKey], alg: str
) -> None:
    async def scenario() -> list[str]:
        async with httpx.AsyncClient(verify=tls()) as http:
            url = "https://ehr.example/oauth2/token"
            auth = BackendAuth(
                http,
                token_url=url,
                client_id=CLIENT_ID,
                private_key_pem=pem(keys[alg]),
                alg=alg,  # type: ignore[arg-type]
                kid=KID,
                scope=SCOPE,
                jku="https://cds.example/.well-known/jwks.json",
            )
            return [auth.client_assertion(now=1_750_000_000.7) for _ in range(50)]

    assertions = asyncio.run(scenario())
    claims = [
        jwt.decode(
            a,
            keys[alg].public_key(),
            algorithms=[alg],
            audience="https://ehr.example/oauth2/token",
            options={"verify_exp": False, "verify_iat": False},
        )
        for a in assertions
    ]
    assert len({c["jti"] for c in claims}) == 50
    for c in claims:
        assert c["iss"] == c["sub"] == CLIENT_ID
        assert 0 < c["exp"] - 1_750_000_000.7 <= 300 and c["exp"] - c["iat"] <= 300
        assert c["exp"] - c["iat"] == ASSERTION_LIFETIME_S
    header = jwt.get_unverified_header(assertions[0])
    assert header == {
        "alg": alg,
        "kid": KID,
        "typ": "JWT",
        "jku": "https://cds.example/.well-known/jwks.json",
    }


def test_a_key_that_does_not_fit_the_algorithm_is_refused(keys: dict[str, PrivateKey]) -> None:
    small_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - must be refused
    p256 = ec.generate_private_key(ec.SECP256R1())
    cases: list[tuple[str, bytes, str]] = [
        ("RS384", pem(keys["ES384"]), "RSA"),
        ("ES384", pem(keys["RS384"]), "P-384"),
        ("ES384", pem(p256), "P-384"),
        ("RS384", pem(small_rsa), "2048"),
        ("RS384", b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n", "PEM"),
    ]

    async def scenario() -> None:
        async with httpx.AsyncClient(verify=tls()) as http:
            for alg, key, message in cases:
                with pytest.raises(ValueError, match=message) as caught:
                    BackendAuth(
                        http,
                        token_url="https://ehr.example/token",
                        client_id=CLIENT_ID,
                        private_key_pem=key,
                        alg=alg,  # type: ignore[arg-type]
                        kid=KID,
                        scope=SCOPE,
                    )
                assert "BEGIN" not in str(caught.value) and "c2VjcmV0" not in str(caught.value)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://ehr.example/oauth2/token", True),
        ("http://127.0.0.1:8080/token", True),
        ("http://localhost/token", True),
        ("http://[::1]:9000/token", True),
        ("http://ehr.example/oauth2/token", False),
        ("http://10.0.0.5/token", False),
        ("ftp://ehr.example/token", False),
        ("/oauth2/token", False),
    ],
)
def test_the_token_url_must_be_https_unless_loopback(
    keys: dict[str, PrivateKey], url: str, allowed: bool
) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(verify=tls()) as http:
            BackendAuth(
                http,
                token_url=url,
                client_id=CLIENT_ID,
                private_key_pem=pem(keys["ES384"]),
                alg="ES384",
                kid=KID,
                scope=SCOPE,
            )

    if allowed:
        asyncio.run(scenario())
    else:
        with pytest.raises(ValueError, match=r"https|absolute"):
            asyncio.run(scenario())


def test_token_response_model() -> None:
    answer = TokenResponse.model_validate({"access_token": "t", "token_type": "Bearer"})
    assert answer.expires_in == DEFAULT_EXPIRES_IN_S == 300 and answer.scope is None
    assert "t" not in repr(answer.access_token).replace("SecretStr", "")
    full = {"access_token": "t", "token_type": "BEARER", "expires_in": 3600, "scope": SCOPE}
    assert TokenResponse.model_validate(full).expires_in == 3600
    for bad in (
        {"access_token": "t", "token_type": "mac"},
        {"access_token": "t", "token_type": "bearer", "expires_in": -5},
        {"access_token": "", "token_type": "bearer"},
        {"token_type": "bearer"},
    ):
        with pytest.raises(ValidationError):
            TokenResponse.model_validate(bad)
