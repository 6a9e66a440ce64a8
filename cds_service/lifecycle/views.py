"""What the admin API and the monitoring page show, gathered from the registry and Redis."""

from __future__ import annotations

from datetime import datetime

from cds_service.catalogue import SERVICES
from cds_service.drift.statistics import DriftReport, Verdict
from cds_service.inference.registry import Manifest, ModelRefused
from cds_service.lifecycle.audit import LIFECYCLE_STREAM, AuditTrail
from cds_service.lifecycle.follower import SEPSIS_SERVICE_PREFIX, Deployment
from cds_service.lifecycle.gates import VALIDATION, check_gates
from cds_service.lifecycle.monitor import DriftMonitor, DriftSnapshot
from cds_service.lifecycle.monitor_page import (
    AuditRow,
    FeatureFigure,
    MonitorView,
    ServiceRow,
    VersionRow,
)
from cds_service.lifecycle.policy import Policy
from cds_service.lifecycle.shadow import ShadowReport, ShadowStats
from cds_service.lifecycle.state import DeploymentState

_ORDER = {"act": 0, "warn": 1, "ok": 2}


def version_rows(manifest: Manifest, state: DeploymentState, policy: Policy) -> list[VersionRow]:
    rows = []
    for entry in manifest.versions:
        role = state.role_of(entry.version)
        if role is None and entry.version in state.withdrawn:
            role = "withdrawn"
        elif role is None and entry.version in state.previous:
            role = "previous"
        gate = check_gates(entry, policy.gates)
        trained_on = entry.provenance.get("trained_on")
        rows.append(
            VersionRow(
                version=entry.version,
                role=role,
                trained_on=str(trained_on) if trained_on is not None else None,
                gates_passed=gate.passed,
                gate_failures=gate.failures,
                validation=entry.metrics.get(VALIDATION, {}),
            )
        )
    return rows


def service_rows(state: DeploymentState) -> list[ServiceRow]:
    rows = []
    deployment = Deployment(state=state)  # the rule the hook path applies, without models
    for service in SERVICES:
        sepsis = service.id.startswith(SEPSIS_SERVICE_PREFIX)
        off = deployment.cards_off(service.id)
        rows.append(
            ServiceRow(
                service_id=service.id,
                title=service.title,
                cards=off[0] if off else "shown",
                why=off[1].reason if off else None,
                since=off[1].at if off else None,
                active=state.active if sepsis else None,
                shadow=state.shadow if sepsis else None,
                canary=state.canary if sepsis else None,
                canary_share=state.canary_share if sepsis and state.canary else None,
            )
        )
    return rows


def feature_figures(figures: DriftReport, verdict: Verdict, top: int = 15) -> list[FeatureFigure]:
    rows = [
        FeatureFigure(
            name=name,
            psi=f.psi,
            wasserstein=f.wasserstein,
            missing_delta=f.missing_delta,
            n=f.n,
            level=verdict.features[name],
        )
        for name, f in figures.features.items()
    ]
    rows.sort(key=lambda r: (_ORDER[r.level], -max(r.psi, abs(r.missing_delta))))
    return rows[:top]


async def shadow_report(
    shadow: ShadowStats, state: DeploymentState, hours: int, now: datetime
) -> ShadowReport | None:
    if state.active is None or state.shadow is None:
        return None
    return await shadow.report(state.active, state.shadow, hours, now)


async def monitor_view(
    *,
    state: DeploymentState,
    manifest: Manifest,
    policy: Policy,
    monitor: DriftMonitor,
    audit: AuditTrail,
    shadow: ShadowStats,
    durable: bool | None,
    now: datetime,
) -> MonitorView:
    drift: dict[str, list[DriftSnapshot]] = {}
    features: dict[str, list[FeatureFigure]] = {}
    for version in (state.active, state.canary):
        if version is None:
            continue
        drift[version] = await monitor.history(version)
        try:
            figures, verdict = await monitor.figures(version, now)
        except (ModelRefused, KeyError, ValueError):  # no readable reference: no figures
            continue
        features[version] = feature_figures(figures, verdict)
    recent = await audit.recent(LIFECYCLE_STREAM, 30)
    report = await shadow_report(shadow, state, policy.drift.window_hours, now)
    thresholds = policy.drift.model_dump(exclude={"window_hours", "check_interval_s"})
    return MonitorView(
        generated=now,
        model=state.model,
        revision=state.revision,
        services=service_rows(state),
        versions=version_rows(manifest, state, policy),
        drift=drift,
        features=features,
        audit=[
            AuditRow.model_validate({"service": None, "version": None} | entry.event)
            for entry in recent
        ],
        shadow=report,
        window_hours=policy.drift.window_hours,
        thresholds={k: float(v) for k, v in thresholds.items()},
        audit_durable=durable,
    )
