"""The app factory: ``create_app(settings)`` builds the API; its lifespan opens the clients once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import redis.asyncio as aioredis
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from cds_service.answer import Answerer
from cds_service.catalogue import Catalogue
from cds_service.clinical_data import ClinicalData
from cds_service.deps import Components, InFlight
from cds_service.errors import BadRequest, CdsError, DependencyUnavailable, Overloaded
from cds_service.gc_watch import freeze_startup_heap, watch_pauses
from cds_service.inference.registry import ModelRefused
from cds_service.inference.scorer import Scorer
from cds_service.lifecycle.audit import AuditTrail
from cds_service.lifecycle.follower import ModelHolder, follow, poll
from cds_service.lifecycle.monitor import DriftMonitor
from cds_service.lifecycle.operations import Operations
from cds_service.lifecycle.policy import load_policy
from cds_service.lifecycle.recorder import ScoreRecorder
from cds_service.lifecycle.state import LifecycleStore
from cds_service.logging_setup import quiet_identifying_loggers
from cds_service.metrics import Metrics
from cds_service.prefetch import PrefetchResolver
from cds_service.request_id import RequestIdMiddleware
from cds_service.responses import JsonResponse
from cds_service.routes import admin, discovery, feedback, health, hooks, model_cards
from cds_service.security.admin_auth import AdminAuth
from cds_service.security.ehr_jwt import EhrJwtVerifier, KeySource
from cds_service.security.pseudonym import Pseudonymiser
from cds_service.security.replay import ReplayGuard
from cds_service.sepsis.answer import SepsisAnswer
from cds_service.sepsis.assess import SepsisAssessor
from cds_service.settings import Settings
from cds_service.store.alerts import AlertState
from cds_service.store.feedback import FeedbackStore
from cds_service.store.patients import PatientCache
from cds_service.store.redis_client import create_redis
from cds_service.store.timeline import TimelineStore
from fhir_adapters.site_codes import site_index
from fhir_adapters.variables import VARIABLES

log = logging.getLogger(__name__)


def _error_response(error: CdsError) -> JsonResponse:
    challenge = getattr(error, "challenge", 'Bearer error="invalid_token"')
    headers = {"WWW-Authenticate": challenge} if error.status == 401 else None
    if isinstance(error, Overloaded):
        headers = {"Retry-After": "1"}
    return JsonResponse(error.operation_outcome(), status_code=error.status, headers=headers)


async def _on_cds_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, CdsError)  # noqa: S101 - registered for CdsError only
    if exc.status >= 500 and not isinstance(exc, Overloaded):  # shedding is counted, not logged
        log.warning("answered %s: %s", exc.status, type(exc).__name__)
    return _error_response(exc)


async def _on_http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for it only
    code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
    error = CdsError(str(exc.detail))
    error.status, error.code = exc.status_code, code
    return _error_response(error)


async def _on_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it only
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"][1:]) or None
    return _error_response(BadRequest(f"{where}: {first['msg']}", expression=where))


async def _on_unexpected(_: Request, exc: Exception) -> Response:
    # The traceback goes to the log by type only: a message may quote request content.
    log.error("unexpected %s while answering", type(exc).__name__)
    return _error_response(CdsError("internal error"))


def build_components(
    settings: Settings,
    redis: aioredis.Redis,
    http: httpx.AsyncClient,
    executor: ThreadPoolExecutor,
) -> Components:
    metrics = Metrics()
    replay = ReplayGuard(redis, metrics, settings.jwt.clock_skew_s)
    verifier = EhrJwtVerifier(settings.jwt, KeySource(settings.jwt, http), replay, metrics)
    pseudonymiser = Pseudonymiser(settings.pseudonym_key)
    codes = site_index(settings.site_maps)
    timeline = TimelineStore(
        redis, pseudonymiser, VARIABLES, retention_s=settings.timeline_retention_h * 3600
    )
    data = ClinicalData(timeline, metrics, codes=codes)
    # With the workers' key the API can use their cached stay context (hook calls then need no
    # FHIR read); without it, it reads only the unencrypted freshness and lag figures.
    key = settings.worker.identifier_key
    patients = PatientCache(
        redis,
        pseudonymiser,
        Fernet(key.get_secret_value().encode()) if key else None,
        retention_s=settings.timeline_retention_h * 3600,
    )
    models = ModelHolder(settings.sepsis.model_root, settings.sepsis.device, metrics)
    models.load_active()
    scorer = Scorer(models, metrics, executor)
    audit = AuditTrail(
        redis,
        timedelta(days=settings.lifecycle.audit_retention_days),
        timedelta(days=settings.lifecycle.call_audit_retention_days),
    )
    policy = load_policy(settings.lifecycle.policy_file)
    store = LifecycleStore(redis, audit)
    operations = Operations(
        store, audit, settings.sepsis.model_root, policy, settings.sepsis.device
    )
    alerts = AlertState(
        redis,
        pseudonymiser,
        repeat_window_s=settings.sepsis.repeat_window_min * 60,
        snooze_s=settings.sepsis.snooze_h * 3600,
    )
    sepsis = SepsisAnswer(
        SepsisAssessor(scorer, settings.sepsis, settings.base_url),
        alerts,
        settings.sepsis,
        metrics,
        models=models,
        scorer=scorer,
        recorder=ScoreRecorder(redis, audit, metrics),
        pseudonymiser=pseudonymiser,
    )
    answerer = Answerer(
        data,
        metrics,
        sepsis,
        models=models,
        news2_lookback=timedelta(hours=settings.news2_lookback_h),
        news2_show_low=settings.news2_show_low,
    )
    return Components(
        settings=settings,
        redis=redis,
        http=http,
        metrics=metrics,
        catalogue=Catalogue(),
        verifier=verifier,
        prefetch=PrefetchResolver(http, settings.fhir, metrics),
        feedback=FeedbackStore(redis, pseudonymiser, settings.feedback_retention_days),
        answerer=answerer,
        models=models,
        alerts=alerts,
        patients=patients,
        in_flight=InFlight(),
        audit=audit,
        lifecycle=store,
        operations=operations,
        admins=AdminAuth(settings.admin),
        monitor=DriftMonitor(redis, operations, audit, settings.sepsis.model_root, policy.drift),
    )


def create_app(
    settings: Settings,
    *,
    redis: aioredis.Redis | None = None,
    http: httpx.AsyncClient | None = None,
) -> FastAPI:
    """The API. Tests may pass their own Redis or HTTP client; otherwise the lifespan opens them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_redis = redis is None
        own_http = http is None
        redis_client = redis if redis is not None else create_redis(settings)
        http_client = http if http is not None else httpx.AsyncClient(follow_redirects=False)
        # One scoring thread: see cds_service.inference.scorer.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
        app.state.components = build_components(settings, redis_client, http_client, executor)
        components = app.state.components
        stop_watching = watch_pauses(components.metrics.gc_pause)
        try:
            # Read the shared state before serving: a kill switch or stop applies from the
            # first call (until then /readyz says not ready).
            await poll(components.models, components.lifecycle)
        except (DependencyUnavailable, ModelRefused):
            log.warning("lifecycle state not read at start; following in the background")
        following = asyncio.create_task(
            follow(components.models, components.lifecycle, settings.lifecycle.poll_interval_s)
        )
        if settings.gc_freeze:
            freeze_startup_heap()
        try:
            yield
        finally:
            following.cancel()
            stop_watching()
            executor.shutdown(wait=False, cancel_futures=True)
            if own_http:
                await http_client.aclose()
            if own_redis:
                await redis_client.aclose()

    quiet_identifying_loggers()
    app = FastAPI(
        title="Sepsis and deterioration CDS Hooks service",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None if settings.environment == "production" else "/docs",
        redoc_url=None,
    )
    app.add_exception_handler(CdsError, _on_cds_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
    if settings.cors_allow_origins:
        # §Cross-Origin Resource Sharing: browser clients (the sandbox) preflight with these
        # headers, on the call and feedback routes too.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(RequestIdMiddleware)
    for module in (discovery, hooks, feedback, health, model_cards, admin):
        app.include_router(module.router)
    return app
