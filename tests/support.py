"""Real servers the tests start: the API under uvicorn, a FHIR test server, and EHR signing keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.redis_server import free_port

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CDS_EXAMPLES = SHARED / "cds-hooks"
SHARED_MISSING = f"the shared CDS Hooks examples are not at {CDS_EXAMPLES}"


#: the pseudonym key of every API the tests start (support, so that any test module can import it)
TEST_PSEUDONYM_KEY = "test-pseudonymisation-key-0123456789abcdef"


def patient_view_request() -> dict[str, Any]:
    """A minimal valid patient-view call: a Patient and an empty vitals search."""
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": "p1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "p1"},
            "vitals": {"resourceType": "Bundle", "type": "searchset", "total": 0},
        },
    }


def load_example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((CDS_EXAMPLES / name).read_text())
    return document


class LiveApi:
    """The API under a real uvicorn on a free loopback port, in a background thread."""

    def __init__(self, app: FastAPI, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveApi:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=20)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]


Route = Callable[[str], tuple[int, Any] | None]


@dataclass
class FhirTestServer:
    """A FHIR server stand-in (the one part outside the product), serving JSON by path prefix.

    ``routes`` maps a path prefix (after the base path) to a JSON body or a callable of the full
    path returning ``(status, body)``. Every request is recorded with its headers.
    """

    base_path: str = "/fhir"
    routes: dict[str, Any] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(
                    Recorded("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
                )
                status, body = outer.answer(self.path)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{self.base_path}"

    def answer(self, path: str) -> tuple[int, Any]:
        if path.startswith(self.base_path):
            relative = path[len(self.base_path) :].lstrip("/")
            # The longest matching prefix wins, e.g. "Observation?page=2" over "Observation?".
            for prefix, handler in sorted(self.routes.items(), key=lambda r: -len(r[0])):
                if relative.startswith(prefix):
                    if callable(handler):
                        result = handler(relative)
                        if result is not None:
                            return result
                        continue
                    return 200, handler
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "not-found"}],
        }
        return 404, outcome

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class EhrKey:
    """An EHR's signing key pair, made in the test, and its public JWK Set."""

    iss: str
    alg: str
    kid: str
    private: Any
    public_jwk: dict[str, Any]

    @classmethod
    def generate(cls, iss: str, alg: str) -> EhrKey:
        kid = f"{alg.lower()}-{uuid.uuid4()}"
        if alg == "ES384":
            private: Any = ec.generate_private_key(ec.SECP384R1())
            jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
        else:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
        jwk.update({"kid": kid, "use": "sig"})
        return cls(iss=iss, alg=alg, kid=kid, private=private, public_jwk=jwk)

    @property
    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def token(
        self,
        aud: str,
        *,
        lifetime_s: int = 300,
        iat_offset_s: int = 0,
        jti: str | None = None,
        drop: tuple[str, ...] = (),
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time()) + iat_offset_s
        payload: dict[str, Any] = {
            "iss": self.iss,
            "aud": aud,
            "iat": now,
            "exp": now + lifetime_s,
            "jti": jti or str(uuid.uuid4()),
            **claims,
        }
        for name in drop:
            payload.pop(name, None)
        header = {"kid": self.kid, "typ": "JWT", **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers=header)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _part(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def unsigned_token(payload: dict[str, Any], header: dict[str, Any]) -> str:
    """A JWT with ``alg: none``: header and payload, empty signature."""
    return f"{_part(header)}.{_part(payload)}."


def hmac_token(payload: dict[str, Any], header: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT signed by hand, e.g. with a public key as the secret (the key-confusion attack);
    PyJWT itself refuses to make one."""
    signing_input = f"{_part(header)}.{_part(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


class Caller:
    """Posts to an API with a fresh, valid JWT for the exact URL called."""

    def __init__(self, api: LiveApi, key: EhrKey, http: httpx.Client) -> None:
        self.api, self.key, self.http = api, key, http

    def post(self, path: str, body: Any = None, *, content: bytes | None = None) -> httpx.Response:
        url = f"{self.api.url}{path}"
        headers = {"Authorization": f"Bearer {self.key.token(url)}"}
        if content is not None:
            headers["Content-Type"] = "application/json"
            return self.http.post(url, content=content, headers=headers)
        return self.http.post(url, json=body, headers=headers)
