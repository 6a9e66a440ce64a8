"""The long-lived objects of one app, and the FastAPI dependencies that hand them to routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import httpx
import redis.asyncio as aioredis
from fastapi import Depends, Request

from cds_service.answer import Answerer
from cds_service.catalogue import Catalogue
from cds_service.lifecycle.audit import AuditTrail
from cds_service.lifecycle.follower import ModelHolder
from cds_service.lifecycle.monitor import DriftMonitor
from cds_service.lifecycle.operations import Operations
from cds_service.lifecycle.state import LifecycleStore
from cds_service.metrics import Metrics
from cds_service.prefetch import PrefetchResolver
from cds_service.security.admin_auth import AdminAuth
from cds_service.security.ehr_jwt import EhrJwtVerifier
from cds_service.settings import Settings
from cds_service.store.alerts import AlertState
from cds_service.store.feedback import FeedbackStore
from cds_service.store.patients import PatientCache


@dataclass
class InFlight:
    """Hook calls being answered now (one event loop per process: a plain counter is exact)."""

    count: int = 0


@dataclass
class Components:
    """Everything the lifespan opens once; routes never build clients of their own."""

    settings: Settings
    redis: aioredis.Redis
    http: httpx.AsyncClient
    metrics: Metrics
    catalogue: Catalogue
    verifier: EhrJwtVerifier
    prefetch: PrefetchResolver
    feedback: FeedbackStore
    answerer: Answerer
    models: ModelHolder
    alerts: AlertState
    patients: PatientCache
    in_flight: InFlight
    audit: AuditTrail
    lifecycle: LifecycleStore
    operations: Operations
    admins: AdminAuth
    monitor: DriftMonitor


async def _components(request: Request) -> Components:
    components: Components = request.app.state.components
    return components


ComponentsDep = Annotated[Components, Depends(_components)]
