"""Settings refuse what must never run in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cds_service.settings import PLACEHOLDER_PSEUDONYM_KEY, Settings

GOOD_KEY = "k" * 40


def test_production_refuses_the_placeholder_key() -> None:
    with pytest.raises(ValidationError, match="PSEUDONYM_KEY"):
        Settings(environment="production")
    assert Settings(environment="development").pseudonym_key.get_secret_value() == (
        PLACEHOLDER_PSEUDONYM_KEY
    )


def test_production_refuses_a_short_key() -> None:
    with pytest.raises(ValidationError, match="32"):
        Settings(environment="production", pseudonym_key="short")


def test_production_refuses_the_sandbox_key() -> None:
    with pytest.raises(ValidationError, match="SANDBOX"):
        Settings(environment="production", pseudonym_key=GOOD_KEY, jwt={"dev_trust_sandbox": True})


def test_production_refuses_plain_http_fhir_servers() -> None:
    with pytest.raises(ValidationError, match="https"):
        Settings(
            environment="production",
            pseudonym_key=GOOD_KEY,
            fhir={"allowed_servers": ["http://ehr.example.org/fhir"]},
        )
    loopback = Settings(
        environment="production",
        pseudonym_key=GOOD_KEY,
        fhir={"allowed_servers": ["http://127.0.0.1:9000/fhir/"]},
    )
    assert loopback.fhir.allowed_servers == ["http://127.0.0.1:9000/fhir"]


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_ENVIRONMENT", "development")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1234/0")
    monkeypatch.setenv("CDS_JWT__CLOCK_SKEW_S", "15")
    monkeypatch.setenv("CDS_FHIR__ALLOWED_SERVERS", '["https://ehr.example.org/fhir/"]')
    monkeypatch.setenv("CDS_PUBLIC_BASE_URL", "https://cds.example.org/sepsis/")
    settings = Settings()
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:1234/0"
    assert settings.jwt.clock_skew_s == 15
    assert settings.fhir.allowed_servers == ["https://ehr.example.org/fhir"]
    assert settings.base_url == "https://cds.example.org/sepsis"


def test_an_issuer_needs_a_key_source() -> None:
    with pytest.raises(ValidationError, match="jwks_path, jwks or jku"):
        Settings(environment="development", jwt={"issuers": [{"iss": "https://ehr"}]})
