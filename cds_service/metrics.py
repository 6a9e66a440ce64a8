"""Prometheus metrics, one registry per app so that several apps (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every metric the API exports. Labels are fixed vocabularies: never an id or a claim value."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cds_http_requests",
            "HTTP requests answered, by route template and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.hook_latency = Histogram(
            "cds_hook_latency_seconds",
            "Time from request received to response ready for hook calls, by service.",
            ["service"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.jwt_rejections = Counter(
            "cds_jwt_rejections",
            "EHR JWTs refused, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.replay_check_degraded = Counter(
            "cds_jwt_replay_check_degraded",
            "jti replay checks done in process memory because Redis did not answer.",
            registry=self.registry,
        )
        self.prefetch = Counter(
            "cds_prefetch_keys",
            "How each prefetch key was met: prefetch, empty, partial, fetched or unavailable.",
            ["service", "key", "source"],
            registry=self.registry,
        )
        self.fhir_requests = Counter(
            "cds_fhir_requests",
            "Requests to EHR FHIR servers, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "cds_feedback_entries",
            "Feedback entries received, by service, outcome and whether they were new.",
            ["service", "outcome", "stored"],
            registry=self.registry,
        )
        self.observations = Counter(
            "cds_observations",
            "Observation values from prefetch and FHIR reads, by what became of them.",
            ["outcome"],
            registry=self.registry,
        )
        self.partial_history = Counter(
            "cds_partial_history",
            "Hook calls scored from prefetch alone because the Redis timeline was unavailable.",
            registry=self.registry,
        )
        self.score_not_shown = Counter(
            "cds_score_not_shown",
            "Scores not shown because the patient is outside the score's population, by reason.",
            ["score", "reason"],
            registry=self.registry,
        )
        self.cards = Counter(
            "cds_cards",
            "Cards returned, by service and indicator.",
            ["service", "indicator"],
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "cds_inference_latency_seconds",
            "Time one ONNX Runtime batch took (features in, calibrated risks out), by provider.",
            ["provider"],
            buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=self.registry,
        )
        self.inference_rows = Counter(
            "cds_inference_rows",
            "Feature rows scored, by provider.",
            ["provider"],
            registry=self.registry,
        )
        self.cards_suppressed = Counter(
            "cds_cards_suppressed",
            "Cards built but not shown, by service and reason (repeat, snoozed).",
            ["service", "reason"],
            registry=self.registry,
        )
        self.alert_state_unavailable = Counter(
            "cds_alert_state_unavailable",
            "Cards shown without the repeat check because Redis did not answer.",
            registry=self.registry,
        )
        self.model_loads = Counter(
            "cds_model_loads",
            "Model versions loaded or refused, by outcome (loaded or the refusal reason).",
            ["outcome"],
            registry=self.registry,
        )
        self.lifecycle_revision = Gauge(
            "cds_lifecycle_revision",
            "Revision of the deployment state (active, shadow, canary, stops) this process runs.",
            registry=self.registry,
        )
        self.lifecycle_applied = Gauge(
            "cds_lifecycle_applied",
            "1 when this process runs every version the deployment state names, 0 when one does "
            "not load here (without its active version it shows no sepsis card).",
            registry=self.registry,
        )
        self.shadow_failures = Counter(
            "cds_lifecycle_shadow_failures",
            "Shadow scorings that failed (the shown card is unaffected).",
            registry=self.registry,
        )
        self.audit_unwritten = Counter(
            "cds_audit_unwritten",
            "Scored calls whose audit event and drift counts could not be written (Redis down).",
            registry=self.registry,
        )
        self.gc_pause = Histogram(
            "cds_gc_pause_seconds",
            "Python garbage-collector pauses, by generation.",
            ["generation"],
            buckets=(1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1),
            registry=self.registry,
        )
        self.hooks_shed = Counter(
            "cds_hooks_shed",
            "Hook calls answered 503 at once because the in-flight limit was reached.",
            registry=self.registry,
        )
