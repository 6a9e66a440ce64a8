"""Session fixtures: a real redis-server, real uvicorn, a FHIR test server, EHR keys made here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from cds_service.app import create_app
from cds_service.redis_server import EmbeddedRedis, free_port
from cds_service.settings import Settings, TrustedIssuer

from support import TEST_PSEUDONYM_KEY, Caller, EhrKey, FhirTestServer, LiveApi

ES_ISSUER = "https://ehr.test/es384"
RS_ISSUER = "https://ehr.test/rs384"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def es_key() -> EhrKey:
    return EhrKey.generate(ES_ISSUER, "ES384")


@pytest.fixture(scope="session")
def rs_key() -> EhrKey:
    return EhrKey.generate(RS_ISSUER, "RS384")


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    server = FhirTestServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def make_settings(
    redis_server: EmbeddedRedis, es_key: EhrKey, rs_key: EhrKey
) -> Callable[..., Settings]:
    """Production-mode settings pointing at the test Redis and trusting the test keys."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "production",
            "redis_url": redis_server.url,
            "pseudonym_key": TEST_PSEUDONYM_KEY,
            "log_json": False,
            "jwt": {
                "issuers": [
                    TrustedIssuer(iss=es_key.iss, jwks=es_key.jwks),
                    TrustedIssuer(iss=rs_key.iss, jwks=rs_key.jwks),
                ]
            },
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        return Settings(**values)

    return build


@pytest.fixture(scope="session")
def start_api(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., LiveApi]]:
    """Start an extra API with its own settings; stopped at the end of the session."""
    started: list[LiveApi] = []

    def start(**overrides: Any) -> LiveApi:
        port = free_port()
        overrides.setdefault("public_base_url", f"http://127.0.0.1:{port}")
        api = LiveApi(create_app(make_settings(**overrides)), port=port).__enter__()
        started.append(api)
        return api

    yield start
    for api in started:
        api.__exit__(None, None, None)


@pytest.fixture(scope="session")
def api(start_api: Callable[..., LiveApi]) -> LiveApi:
    """The default API: production settings, JWT required, no FHIR server allow-listed."""
    return start_api()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def caller(api: LiveApi, es_key: EhrKey, http: httpx.Client) -> Caller:
    return Caller(api, es_key, http)
