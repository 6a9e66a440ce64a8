"""The EHR's JWT (CDS Hooks 2.0.1 §Trusting CDS Clients), with keys generated in the test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization

from cds_service.errors import Unauthorized
from cds_service.metrics import Metrics
from cds_service.redis_server import EmbeddedRedis
from cds_service.security.ehr_jwt import EhrJwtVerifier, KeySource
from cds_service.security.replay import ReplayGuard
from cds_service.settings import JwtSettings, TrustedIssuer

from support import (
    CDS_EXAMPLES,
    SHARED_MISSING,
    EhrKey,
    FhirTestServer,
    LiveApi,
    hmac_token,
    load_example,
    unsigned_token,
)
from support import (
    patient_view_request as hook_body,
)

pytestmark = pytest.mark.integration

SERVICE = "/cds-services/sepsis-patient-view"


def call(
    api: LiveApi, http: httpx.Client, token: str | None, path: str = SERVICE
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return http.post(f"{api.url}{path}", json=hook_body(), headers=headers)


def rejected(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "security"
    diagnostics: str = body["issue"][0]["diagnostics"]
    return diagnostics


def test_valid_es384_passes(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    assert call(api, http, es_key.token(f"{api.url}{SERVICE}")).status_code == 200


def test_valid_rs384_passes(api: LiveApi, http: httpx.Client, rs_key: EhrKey) -> None:
    assert call(api, http, rs_key.token(f"{api.url}{SERVICE}")).status_code == 200


def test_aud_as_array_passes(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    token = es_key.token([f"{api.url}{SERVICE}", "https://other.example"])  # type: ignore[arg-type]
    assert call(api, http, token).status_code == 200


def test_missing_token_is_401(api: LiveApi, http: httpx.Client) -> None:
    assert "required" in rejected(call(api, http, None))


def test_not_bearer_is_401(api: LiveApi, http: httpx.Client) -> None:
    response = http.post(
        f"{api.url}{SERVICE}", json=hook_body(), headers={"Authorization": "Basic eA=="}
    )
    rejected(response)


def test_garbage_token_is_401(api: LiveApi, http: httpx.Client) -> None:
    assert "not a JWT" in rejected(call(api, http, "abc.def"))


def test_expired_is_401(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    token = es_key.token(f"{api.url}{SERVICE}", iat_offset_s=-1000, lifetime_s=300)
    assert "expired" in rejected(call(api, http, token))


def test_issued_in_the_future_is_401(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    token = es_key.token(f"{api.url}{SERVICE}", iat_offset_s=600)
    assert "not valid yet" in rejected(call(api, http, token))


def test_small_clock_skew_is_tolerated(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    token = es_key.token(f"{api.url}{SERVICE}", iat_offset_s=-320, lifetime_s=300)  # 20 s late
    assert call(api, http, token).status_code == 200


def test_too_long_a_lifetime_is_401(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    token = es_key.token(f"{api.url}{SERVICE}", lifetime_s=7200)
    assert "longer" in rejected(call(api, http, token))


@pytest.mark.parametrize(
    "aud",
    [
        "https://cds.example.org/cds-services/sepsis-patient-view",
        "{base}/cds-services/deterioration-patient-view",
        "{base}/cds-services",
        "{base}/cds-services/sepsis-patient-view/",
    ],
)
def test_wrong_aud_is_401(api: LiveApi, http: httpx.Client, es_key: EhrKey, aud: str) -> None:
    token = es_key.token(aud.format(base=api.url))
    assert "aud" in rejected(call(api, http, token))


def test_unknown_kid_is_401(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    token = es_key.token(f"{api.url}{SERVICE}", headers={"kid": "not-a-known-kid"})
    assert "kid" in rejected(call(api, http, token))


def test_missing_kid_is_401(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    token = es_key.token(f"{api.url}{SERVICE}", headers={"kid": None})
    assert "kid" in rejected(call(api, http, token))


def test_wrong_typ_is_401(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    token = es_key.token(f"{api.url}{SERVICE}", headers={"typ": "at+jwt"})
    assert "typ" in rejected(call(api, http, token))


def test_untrusted_issuer_is_401(api: LiveApi, http: httpx.Client) -> None:
    stranger = EhrKey.generate("https://stranger.example", "ES384")
    assert "issuer" in rejected(call(api, http, stranger.token(f"{api.url}{SERVICE}")))


def test_trusted_issuer_signed_by_another_key_is_401(
    api: LiveApi, http: httpx.Client, es_key: EhrKey
) -> None:
    impostor = EhrKey.generate(es_key.iss, "ES384")
    impostor.kid = es_key.kid  # claims the real key's id
    assert "signature" in rejected(call(api, http, impostor.token(f"{api.url}{SERVICE}")))


@pytest.mark.parametrize("claim", ["iss", "exp", "iat", "jti", "aud"])
def test_missing_required_claim_is_401(
    api: LiveApi, http: httpx.Client, es_key: EhrKey, claim: str
) -> None:
    rejected(call(api, http, es_key.token(f"{api.url}{SERVICE}", drop=(claim,))))


def test_alg_none_is_401(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    now = int(time.time())
    payload = {
        "iss": es_key.iss,
        "aud": f"{api.url}{SERVICE}",
        "iat": now,
        "exp": now + 300,
        "jti": "n1",
    }
    token = unsigned_token(payload, {"alg": "none", "typ": "JWT", "kid": es_key.kid})
    assert "alg" in rejected(call(api, http, token))


@pytest.mark.parametrize("alg_key", ["es_key", "rs_key"])
def test_hs256_signed_with_the_public_key_is_401(
    api: LiveApi, http: httpx.Client, alg_key: str, request: pytest.FixtureRequest
) -> None:
    key: EhrKey = request.getfixturevalue(alg_key)
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    payload = {
        "iss": key.iss,
        "aud": f"{api.url}{SERVICE}",
        "iat": now,
        "exp": now + 300,
        "jti": "h1",
    }
    token = hmac_token(payload, {"alg": "HS256", "typ": "JWT", "kid": key.kid}, public_pem)
    assert "alg" in rejected(call(api, http, token))


def test_rs384_header_with_an_ec_key_is_401(
    api: LiveApi, http: httpx.Client, es_key: EhrKey, rs_key: EhrKey
) -> None:
    """Algorithm confusion between the two allowed algorithms: the kid names the EC key."""
    forged = EhrKey(
        iss=es_key.iss, alg="RS384", kid=es_key.kid, private=rs_key.private, public_jwk={}
    )
    rejected(call(api, http, forged.token(f"{api.url}{SERVICE}")))


def test_replayed_jti_is_401(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    token = es_key.token(f"{api.url}{SERVICE}")
    assert call(api, http, token).status_code == 200
    assert "replay" in rejected(call(api, http, token))


def test_same_jti_for_another_url_is_still_a_replay(
    api: LiveApi, http: httpx.Client, es_key: EhrKey
) -> None:
    first = es_key.token(f"{api.url}{SERVICE}", jti="shared-jti-1")
    assert call(api, http, first).status_code == 200
    other = "/cds-services/deterioration-patient-view"
    second = es_key.token(f"{api.url}{other}", jti="shared-jti-1")
    assert "replay" in rejected(call(api, http, second, path=other))


def test_discovery_without_a_token_is_allowed_but_a_bad_one_is_verified(
    api: LiveApi, http: httpx.Client, es_key: EhrKey
) -> None:
    assert http.get(f"{api.url}/cds-services").status_code == 200
    wrong_aud = es_key.token(f"{api.url}{SERVICE}")
    response = http.get(f"{api.url}/cds-services", headers={"Authorization": f"Bearer {wrong_aud}"})
    rejected(response)
    good = es_key.token(f"{api.url}/cds-services")
    response = http.get(f"{api.url}/cds-services", headers={"Authorization": f"Bearer {good}"})
    assert response.status_code == 200


def test_rejections_are_counted_by_reason(api: LiveApi, http: httpx.Client, es_key: EhrKey) -> None:
    call(api, http, es_key.token("https://elsewhere.example/x"))
    metrics = http.get(f"{api.url}/metrics").text
    assert 'cds_jwt_rejections_total{reason="audience"}' in metrics


# ------------------------------------------------------------------- jku and key sources


@pytest.fixture
def jwks_host(fhir_server: FhirTestServer) -> Iterator[FhirTestServer]:
    fhir_server.routes.clear()
    fhir_server.requests.clear()
    yield fhir_server
    fhir_server.routes.clear()


def test_keys_from_an_allow_listed_jku(
    start_api: Callable[..., LiveApi], jwks_host: FhirTestServer, http: httpx.Client
) -> None:
    key = EhrKey.generate("https://jku-ehr.example", "ES384")
    jku = f"{jwks_host.url}/jwks.json"
    jwks_host.routes["jwks.json"] = key.jwks
    api = start_api(jwt={"issuers": [TrustedIssuer(iss=key.iss, jku=jku)]})
    token = key.token(f"{api.url}{SERVICE}", headers={"jku": jku})
    assert call(api, http, token).status_code == 200
    assert len(jwks_host.requests) == 1
    # A second call is served from the cache.
    token = key.token(f"{api.url}{SERVICE}", headers={"jku": jku})
    assert call(api, http, token).status_code == 200
    assert len(jwks_host.requests) == 1
    # Another jku for the same issuer is never fetched.
    jwks_host.routes["evil.json"] = key.jwks
    token = key.token(f"{api.url}{SERVICE}", headers={"jku": f"{jwks_host.url}/evil.json"})
    assert "jku" in rejected(call(api, http, token))
    assert [r.path for r in jwks_host.requests] == ["/fhir/jwks.json"]


# ----------------------------------------------------------- the spec's and sandbox tokens


def _verifier(redis_url: str, settings: JwtSettings) -> tuple[EhrJwtVerifier, aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_url)
    metrics = Metrics()
    http = httpx.AsyncClient()
    replay = ReplayGuard(redis, metrics, settings.clock_skew_s)
    return EhrJwtVerifier(settings, KeySource(settings, http), replay, metrics), redis


async def _reason(verifier: EhrJwtVerifier, redis: aioredis.Redis, token: str, aud: str) -> str:
    try:
        with pytest.raises(Unauthorized) as caught:
            await verifier.authenticate(f"Bearer {token}", aud, required=True)
        return caught.value.reason
    finally:
        await redis.aclose()


@pytest.mark.skipif(not CDS_EXAMPLES.is_dir(), reason=SHARED_MISSING)
def test_spec_example_token_is_refused_as_expired(redis_server: EmbeddedRedis) -> None:
    example = load_example("jwt-spec-example-es384.json")
    iss = example["payload"]["iss"]
    settings = JwtSettings(issuers=[TrustedIssuer(iss=iss, jwks=example["jwks"])])
    verifier, redis = _verifier(redis_server.url, settings)
    reason = asyncio.run(_reason(verifier, redis, example["compact"], example["payload"]["aud"]))
    assert reason == "expired"


@pytest.mark.skipif(not CDS_EXAMPLES.is_dir(), reason=SHARED_MISSING)
def test_sandbox_token_verifies_with_the_dev_switch_then_is_expired(
    redis_server: EmbeddedRedis,
) -> None:
    example = load_example("jwt-sandbox-captured-es384.json")
    aud = example["request_url"]
    trusting = JwtSettings(
        dev_trust_sandbox=True, sandbox_jwks_path=CDS_EXAMPLES / "jwks-sandbox-public.json"
    )
    verifier, redis = _verifier(redis_server.url, trusting)
    assert asyncio.run(_reason(verifier, redis, example["compact"], aud)) == "expired"
    verifier, redis = _verifier(redis_server.url, JwtSettings())
    assert asyncio.run(_reason(verifier, redis, example["compact"], aud)) == "issuer"
