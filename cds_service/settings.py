"""The one place where everything configurable is declared.

Environment variables use the prefix ``CDS_`` and ``__`` for nested groups, e.g.
``CDS_JWT__CLOCK_SKEW_S=30``. ``REDIS_URL`` is also accepted unprefixed because that is the name
platform teams and managed Redis offerings hand out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Secrets shipped as defaults; they only exist so that a laptop can start without set-up.
PLACEHOLDER_PSEUDONYM_KEY = "development-only-pseudonymisation-key"


def normalise_base_url(url: str) -> str:
    """Lower-case scheme and host, drop a trailing slash: the form allow-lists are compared in."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"a base URL carries no query, fragment or credentials: {url!r}")
    host = parts.hostname.lower()
    netloc = f"{host}:{parts.port}" if parts.port else host
    if ":" in host:  # IPv6 literal
        netloc = f"[{host}]:{parts.port}" if parts.port else f"[{host}]"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def is_loopback_url(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


class TrustedIssuer(BaseModel):
    """An EHR allowed to call this service, and where its signing keys come from."""

    iss: str = Field(description="The `iss` claim the EHR puts in its JWTs, compared exactly.")
    jwks_path: Path | None = Field(
        default=None,
        description="A JWK Set file exchanged out of band (CDS Hooks §Trusting CDS Clients).",
    )
    jwks: dict[str, object] | None = Field(default=None, description="The same JWK Set, inline.")
    jku: str | None = Field(
        default=None,
        description="A JWK Set URL this issuer may name in `jku`; fetched only for this pair.",
    )

    @model_validator(mode="after")
    def _has_a_key_source(self) -> TrustedIssuer:
        if self.jwks_path is None and self.jwks is None and self.jku is None:
            raise ValueError(f"issuer {self.iss!r} needs jwks_path, jwks or jku")
        return self


class JwtSettings(BaseModel):
    """How the EHR's JWT (CDS Hooks 2.0.1 §Trusting CDS Clients) is checked."""

    required: bool = Field(
        default=True, description="Refuse hook and feedback calls that carry no JWT."
    )
    required_for_discovery: bool = Field(
        default=False,
        description="Refuse discovery without a JWT. A token presented is verified either way.",
    )
    issuers: list[TrustedIssuer] = Field(
        default_factory=list, description="The allow-list of EHRs and their key sources."
    )
    clock_skew_s: int = Field(
        default=60, ge=0, le=300, description="Leeway for `exp`, `iat` and `nbf` between clocks."
    )
    max_lifetime_s: int = Field(
        default=3600,
        ge=60,
        description="Longest accepted `exp` - `iat`; the spec's own example token lives 3.5 years.",
    )
    jwks_cache_ttl_s: int = Field(
        default=300, ge=0, description="How long a fetched JWK Set is kept."
    )
    dev_trust_sandbox: bool = Field(
        default=False,
        description=(
            "Trust the public CDS Hooks sandbox key. Its private key is public too, so this is "
            "refused outside development."
        ),
    )
    sandbox_jwks_path: Path = Field(
        default=Path("../shared/cds-hooks/jwks-sandbox-public.json"),
        description="Where the sandbox's public JWK Set lies when dev_trust_sandbox is on.",
    )
    sandbox_issuer: str = Field(
        default="https://sandbox.cds-hooks.org", description="The sandbox's `iss` claim."
    )


class FhirSettings(BaseModel):
    """Access to the EHR's FHIR server for data that was not prefetched."""

    allowed_servers: list[str] = Field(
        default_factory=list,
        description=(
            "Base URLs a `fhirAuthorization` token may be sent to, compared exactly after "
            "normalisation. Any other `fhirServer` is never contacted."
        ),
    )
    hook_retries: int = Field(
        default=1, ge=0, description="Retries of a failed FHIR read during a hook call."
    )
    hook_deadline_s: float = Field(
        default=2.0,
        gt=0,
        description="Most time a hook call spends on FHIR reads in all (the EHR waits for it).",
    )
    timeout_s: float = Field(
        default=4.0, gt=0, description="Per-request timeout to the FHIR server."
    )
    max_pages: int = Field(
        default=5, ge=1, description="Most `next` pages followed for one prefetch search."
    )

    @field_validator("allowed_servers")
    @classmethod
    def _normalise(cls, value: list[str]) -> list[str]:
        return [normalise_base_url(url) for url in value]


class OrderSet(BaseModel):
    """One of the site's own order sets, offered as a suggestion: we never choose a drug."""

    label: str = Field(description="What the clinician sees, e.g. 'Adult sepsis antibiotics'.")
    resource: dict[str, Any] = Field(
        description=(
            "The FHIR resource a suggestion creates (e.g. a RequestGroup or a ServiceRequest that "
            "instantiates the site's PlanDefinition). `subject` (and `encounter` when known) are "
            "filled in per patient."
        )
    )

    @field_validator("resource")
    @classmethod
    def _is_a_resource(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("resourceType"), str):
            raise ValueError("an order set's resource needs a resourceType")
        return value


class SepsisSettings(BaseModel):
    """The sepsis services: the model, who is scored, and how often a card may be shown."""

    model_root: Path = Field(
        default=Path(__file__).resolve().parents[1] / "model_artifacts",
        description="The model registry: manifest.json and one folder per version.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description=(
            "`auto`: the GEMM form on CUDA when a GPU session loads, else the tree-ensemble form "
            "on the CPU. `cuda` refuses to start scoring without a GPU."
        ),
    )
    min_age_years: float = Field(
        default=18,
        ge=0,
        description="The model was trained and validated on adults (PhysioNet 2019 ICU patients).",
    )
    require_icu: bool = Field(
        default=True,
        description="Score only patients in an ICU stay: the population the model knows.",
    )
    icu_location_ids: list[str] = Field(
        default_factory=list,
        description="Location ids (e.g. `Location/123`) of the site's ICUs, beside name matching.",
    )
    stale_vitals_h: float = Field(
        default=6,
        gt=0,
        description="No score when no vital sign is newer than this: it would describe the past.",
    )
    repeat_window_min: float = Field(
        default=240,
        ge=0,
        description="No repeat of a patient's card within this time unless its risk band rises.",
    )
    snooze_h: float = Field(
        default=12,
        ge=0,
        description="An override with a reason silences the service for that patient this long.",
    )
    smart_app_url: str | None = Field(
        default=None,
        description="A SMART app launch URL offered as a card link, if the site has one.",
    )
    order_sets: dict[Literal["antibiotics", "fluids", "vasopressors"], OrderSet] = Field(
        default_factory=dict,
        description="The site's own order sets; a kind not configured is named in text only.",
    )


class SmartBackendSettings(BaseModel):
    """The workers' own FHIR access: SMART Backend Services (client credentials, JWT assertion)."""

    token_url: str = Field(description="The EHR authorisation server's token endpoint.")
    client_id: str = Field(description="The client id the EHR registered for this service.")
    private_key_pem: SecretStr = Field(description="PEM private key that signs the assertion.")
    alg: Literal["RS384", "ES384"] = Field(default="ES384", description="Assertion algorithm.")
    kid: str = Field(description="`kid` of the public key in the JWK Set registered with the EHR.")
    scope: str = Field(
        default="system/Patient.rs system/Encounter.rs system/Observation.rs",
        description="Scopes asked for; add `system/RiskAssessment.cu` for write-back.",
    )


class WorkerSettings(BaseModel):
    """Celery workers: the census they keep fresh, their schedule and their own FHIR access."""

    fhir_base_url: str | None = Field(
        default=None, description="The EHR FHIR server the workers read (and write back to)."
    )
    smart: SmartBackendSettings | None = Field(
        default=None, description="How the workers get a token; none: unauthenticated (tests)."
    )
    census_locations: list[str] = Field(
        default_factory=list,
        description="Locations (`Location/icu-1`) whose in-progress stays form the census.",
    )
    census_interval_s: float = Field(default=300, gt=0, description="Census refresh period.")
    rescore_interval_s: float = Field(default=300, gt=0, description="Census rescoring period.")
    stale_after_s: float = Field(
        default=600,
        gt=0,
        description="A patient refreshed longer ago than this is refreshed again.",
    )
    fresh_for_hooks_s: float = Field(
        default=900,
        ge=0,
        description="A hook call for a patient refreshed this recently fetches nothing from FHIR.",
    )
    visibility_timeout_s: int = Field(
        default=3600,
        ge=10,
        description=(
            "Redis transport: an unacknowledged task is delivered again after this. No countdown "
            "or ETA may be longer (Celery would deliver it twice)."
        ),
    )
    task_time_limit_s: float = Field(default=120, gt=0, description="Hard time limit per task.")
    max_retries: int = Field(default=5, ge=0, description="Retries of a task after FHIR errors.")
    retry_backoff_max_s: int = Field(
        default=300, ge=1, description="Cap of the exponential retry backoff (below visibility)."
    )
    writeback: bool = Field(
        default=False,
        description="Create or update a RiskAssessment when a patient crosses the alert level.",
    )
    identifier_key: SecretStr | None = Field(
        default=None,
        description=(
            "Fernet key (urlsafe base64, 32 bytes) that encrypts FHIR ids kept in Redis for "
            "write-back. Required for the workers; from a Secret in Kubernetes."
        ),
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve worker metrics on this port."
    )


class AdminSettings(BaseModel):
    """The admin API's own authentication: not the EHR's JWT, so a compromised EHR key cannot
    promote a model or switch a service off."""

    tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description=(
            "Who may use the admin API: name -> sha256 (hex) of that person's bearer token. Only "
            "hashes are configured, so the setting never holds a usable credential; the name is "
            "the `actor` of every audit event the person causes. Empty: the admin API is off."
        ),
    )


class LifecycleSettings(BaseModel):
    """Model lifecycle: policy, polling, audit retention (``cds_service.lifecycle``)."""

    policy_file: Path = Field(
        default=Path(__file__).resolve().parent / "lifecycle" / "policy.toml",
        description="TOML file with the promotion gates and the drift thresholds and window.",
    )
    poll_interval_s: float = Field(
        default=5,
        gt=0,
        le=300,
        description=(
            "How often every API and worker process reads the deployment state (active, shadow, "
            "canary, stops): a promotion, rollback or kill switch takes effect within this."
        ),
    )
    audit_retention_days: int = Field(
        default=400,
        ge=1,
        description="How long lifecycle audit events (promotions, rollbacks, stops) are kept.",
    )
    call_audit_retention_days: int = Field(
        default=30,
        ge=1,
        description=(
            "How long scored-call and feedback audit events are kept. About 400 bytes each in "
            "Redis (measured with a shadow): 10,000 calls a day for 30 days is ~120 MB, so size "
            "Redis's memory before raising this (the audit data is never evicted)."
        ),
    )
    archive_dir: Path | None = Field(
        default=None,
        description=(
            "Where `python -m cds_service.audit_archive` appends the audit streams as daily JSONL "
            "files (a volume kept with the hospital's backups): the long-term audit trail."
        ),
    )
    archive_retention_days: int = Field(
        default=3650,
        ge=1,
        description="How long archived audit files are kept (ten years by default: our choice).",
    )


class Settings(BaseSettings):
    """Every setting of the API, the workers and the dev runner."""

    model_config = SettingsConfigDict(
        env_prefix="CDS_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        secrets_dir=None,
    )

    environment: Literal["development", "production"] = Field(
        default="production",
        description=(
            "`development` allows placeholder secrets, http allow-list entries, the sandbox key."
        ),
    )
    host: str = Field(default="127.0.0.1", description="Interface the API listens on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port the API listens on.")
    public_base_url: str | None = Field(
        default=None,
        description=(
            "The URL the EHR calls, as it sees it (behind an ingress it differs from host:port). "
            "JWT `aud` is checked against it. Defaults to http://host:port."
        ),
    )
    redis_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("CDS_REDIS_URL", "REDIS_URL"),
        description="Redis for timelines, replay protection, feedback and the Celery broker.",
    )
    redis_timeout_s: float = Field(default=0.5, gt=0, description="Socket timeout for Redis calls.")
    pseudonym_key: SecretStr = Field(
        default=SecretStr(PLACEHOLDER_PSEUDONYM_KEY),
        description="Key of the HMAC that pseudonymises identifiers before they are stored.",
    )
    max_request_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Bodies above this get 413; a 200-Observation prefetch is about 200 kB.",
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call (the CDS Hooks sandbox is a browser app).",
    )
    log_json: bool = Field(default=True, description="JSON log lines (production) or plain text.")
    log_level: str = Field(default="INFO", description="Root log level.")
    feedback_retention_days: int = Field(
        default=400, ge=1, description="How long feedback entries are kept in Redis."
    )
    timeline_retention_h: int = Field(
        default=72, ge=1, le=24 * 14, description="How long each patient's observations are kept."
    )
    news2_lookback_h: float = Field(
        default=12,
        gt=0,
        le=72,
        description=(
            "NEWS2 uses the newest value of each parameter no older than this; older ones count "
            "as missing. Our choice, not the RCP's: each parameter's time is shown on the card."
        ),
    )
    news2_show_low: bool = Field(
        default=False,
        description="Show an info card for a low NEWS2 (RCP 2017: 0-4, no red score).",
    )
    site_maps: list[Path] = Field(
        default_factory=list,
        description="TOML files mapping local codes to variables, beside LOINC and the built-ins.",
    )
    max_hooks_in_flight: int = Field(
        default=8,
        ge=1,
        description=(
            "Hook calls answered at once by one process; more get an immediate 503 with "
            "Retry-After. At ~25 ms of CPU a call (bench/README.md) 8 bound the wait to ~0.2 s."
        ),
    )
    gc_freeze: bool = Field(
        default=True,
        description="Freeze the start-up heap out of the garbage collector (cds_service.gc_watch).",
    )
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    fhir: FhirSettings = Field(default_factory=FhirSettings)
    sepsis: SepsisSettings = Field(default_factory=SepsisSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)

    @field_validator("public_base_url")
    @classmethod
    def _normalise_public_url(cls, value: str | None) -> str | None:
        return None if value is None else normalise_base_url(value)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment == "development":
            return self
        if self.pseudonym_key.get_secret_value() == PLACEHOLDER_PSEUDONYM_KEY:
            raise ValueError("CDS_PSEUDONYM_KEY must be set outside development")
        if len(self.pseudonym_key.get_secret_value()) < 32:
            raise ValueError("CDS_PSEUDONYM_KEY must be at least 32 characters")
        if self.jwt.dev_trust_sandbox:
            raise ValueError("CDS_JWT__DEV_TRUST_SANDBOX is for development only")
        plain = [u for u in self.fhir.allowed_servers if u.startswith("http://")]
        if any(not is_loopback_url(u) for u in plain):
            raise ValueError(f"FHIR servers must use https outside development: {plain}")
        return self

    @property
    def base_url(self) -> str:
        """The public base URL without a trailing slash."""
        return self.public_base_url or f"http://{self.host}:{self.port}"
