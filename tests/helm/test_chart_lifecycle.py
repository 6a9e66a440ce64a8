"""The chart's side of the model lifecycle: the policy file, admin tokens, a durable Redis for the
audit trail, and the lifecycle alerts."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from chart_render import CHART, ROOT, Doc, RenderError, env_of, find, pod_specs, render

from cds_service.lifecycle.policy import load_policy
from cds_service.settings import Settings

POLICY = ROOT / "cds_service" / "lifecycle" / "policy.toml"
POLICY_FILE = "/etc/cds/lifecycle/policy.toml"
API = "sepsis-cds-api"
SERVICE_PODS = ("sepsis-cds-api", "sepsis-cds-worker", "sepsis-cds-beat")
#: the hash of the throwaway token in ci/minimal-values.yaml
CI_ADMIN_HASH = hashlib.sha256(b"ci-only-admin-token").hexdigest()


def _deployment(docs: list[Doc], name: str) -> Doc:
    return find(docs, "Deployment", name)


def _pod(docs: list[Doc], name: str) -> Doc:
    return dict(_deployment(docs, name)["spec"]["template"])


def _annotations(docs: list[Doc], name: str) -> dict[str, str]:
    return dict(_pod(docs, name)["metadata"]["annotations"])


def _environment(docs: list[Doc], name: str, secrets: dict[str, str]) -> dict[str, str]:
    """A container's environment as Kubernetes builds it; keys of the chart's own Secrets are
    read from the rendered Secrets, others from ``secrets`` (``name/key``) when optional is not."""
    (container,) = _pod(docs, name)["spec"]["containers"]
    chart_secrets = {
        f"{d['metadata']['name']}/{k}": base64.b64decode(v).decode()
        for d in docs
        if d["kind"] == "Secret"
        for k, v in d.get("data", {}).items()
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            key = f"{ref['name']}/{ref['key']}"
            value = chart_secrets.get(key, secrets.get(key))
            if value is not None:
                env[item["name"]] = value
            else:
                assert ref.get("optional"), f"{name}: no value for {key}"
        else:
            env[item["name"]] = "pod-0"
    return env


def _settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os  # noqa: PLC0415

    for name in list(os.environ):
        if name.startswith("CDS_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


# --- the policy -------------------------------------------------------------------------------


def test_the_charts_default_policy_is_the_services_policy_byte_for_byte() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart_copy = values["lifecycle"]["policy"]
    assert tomllib.loads(chart_copy) == tomllib.loads(POLICY.read_text())
    assert chart_copy == POLICY.read_text(), (
        "helm/sepsis-cds/values.yaml lifecycle.policy differs from "
        "cds_service/lifecycle/policy.toml: copy the file into the value again"
    )


@pytest.mark.parametrize("scenario", ["minimal", "production", "gpu", "keda"])
def test_the_rendered_policy_is_the_file_and_the_service_accepts_it(
    scenario: str, tmp_path: Path
) -> None:
    rendered = find(render(scenario), "ConfigMap", "sepsis-cds-lifecycle")["data"]["policy.toml"]
    assert rendered == POLICY.read_text()
    (tmp_path / "policy.toml").write_text(rendered)
    policy = load_policy(tmp_path / "policy.toml")
    assert policy.drift.psi_act == tomllib.loads(rendered)["drift"]["psi_act"]


@pytest.mark.parametrize(
    ("scenario", "pods"), [("minimal", SERVICE_PODS), ("gpu", ("sepsis-cds-gpu-worker",))]
)
def test_every_service_pod_mounts_the_policy_read_only_where_the_setting_points(
    scenario: str, pods: tuple[str, ...]
) -> None:
    docs = render(scenario)
    for name in pods:
        spec = _pod(docs, name)["spec"]
        (container,) = spec["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "lifecycle"]
        assert mount == {"name": "lifecycle", "mountPath": "/etc/cds/lifecycle", "readOnly": True}
        (volume,) = [v for v in spec["volumes"] if v["name"] == "lifecycle"]
        assert volume == {"name": "lifecycle", "configMap": {"name": "sepsis-cds-lifecycle"}}
        assert env_of(container)["CDS_LIFECYCLE__POLICY_FILE"]["value"] == POLICY_FILE
    assert Path(POLICY_FILE).name in find(docs, "ConfigMap", "sepsis-cds-lifecycle")["data"]


def test_only_the_service_pods_get_the_policy() -> None:
    docs = render("minimal")
    for obj, _, spec in pod_specs(docs):
        has_mount = any(v["name"] == "lifecycle" for v in spec.get("volumes", []))
        assert has_mount is (obj["metadata"]["name"] in SERVICE_PODS), obj["metadata"]["name"]


def test_poll_interval_and_retention_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    default = _settings(_environment(render("minimal"), API, {}), monkeypatch)
    assert default.lifecycle.policy_file == Path(POLICY_FILE)
    assert default.lifecycle.poll_interval_s == 5
    assert default.lifecycle.audit_retention_days == 400
    docs = render("minimal", "lifecycle.pollIntervalS=2", "lifecycle.auditRetentionDays=3650")
    for name in SERVICE_PODS:
        settings = _settings(_environment(docs, name, {}), monkeypatch)
        assert settings.lifecycle.poll_interval_s == 2, name
        assert settings.lifecycle.audit_retention_days == 3650, name


def test_a_policy_change_rolls_the_service_pods_and_nothing_else() -> None:
    before = render("minimal")
    after = render("minimal", "lifecycle.policy=[gates]\nmin_auroc = 0.8\n")
    for name in (*SERVICE_PODS,):
        assert (
            _annotations(before, name)["checksum/lifecycle"]
            != _annotations(after, name)["checksum/lifecycle"]
        ), name
    redis = [find(d, "StatefulSet")["spec"]["template"]["metadata"] for d in (before, after)]
    assert redis[0] == redis[1]
    gpu = [render("gpu"), render("gpu", "lifecycle.policy=[gates]\nmin_auroc = 0.8\n")]
    assert len({_annotations(d, "sepsis-cds-gpu-worker")["checksum/lifecycle"] for d in gpu}) == 2


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("[gates\nmin_auroc = 0.8", "lifecycle.policy is not TOML"),
        ("[drift]\npsi_act = 0.3", "no [gates] table"),
    ],
)
def test_a_broken_policy_fails_the_render(policy: str, message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render("minimal", f"lifecycle.policy={policy}")


# --- admin tokens -----------------------------------------------------------------------------


def test_admin_token_hashes_reach_the_api_alone_from_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render("minimal")
    secret = find(docs, "Secret", "sepsis-cds-admin")
    tokens = json.loads(base64.b64decode(secret["data"]["tokens.json"]))
    assert tokens == {"ci-admin": CI_ADMIN_HASH}
    ref = env_of(_pod(docs, API)["spec"]["containers"][0])["CDS_ADMIN__TOKENS"]
    assert ref["valueFrom"]["secretKeyRef"]["name"] == "sepsis-cds-admin"
    settings = _settings(_environment(docs, API, {}), monkeypatch)
    assert {k: v.get_secret_value() for k, v in settings.admin.tokens.items()} == tokens
    for obj, _, spec in pod_specs(docs):
        if obj["metadata"]["name"] != API:
            for container in spec["containers"]:
                assert "CDS_ADMIN__TOKENS" not in env_of(container), obj["metadata"]["name"]
    for doc in docs:
        if doc["kind"] != "Secret":
            assert CI_ADMIN_HASH not in yaml.safe_dump(doc), doc["metadata"]["name"]


def test_no_admin_tokens_no_admin_api() -> None:
    docs = render("production")
    assert not [d for d in docs if d["kind"] == "Secret"]
    for _, _, spec in pod_specs(docs):
        for container in spec["containers"]:
            assert "CDS_ADMIN__TOKENS" not in env_of(container)


def test_an_existing_admin_secret_is_read_and_the_chart_makes_none() -> None:
    docs = render("keda")
    assert not [d for d in docs if d["kind"] == "Secret" and "admin" in d["metadata"]["name"]]
    ref = env_of(_pod(docs, API)["spec"]["containers"][0])["CDS_ADMIN__TOKENS"]
    assert ref["valueFrom"]["secretKeyRef"] == {
        "name": "sepsis-cds-admin",
        "key": "tokens.json",
        # A missing admin Secret leaves the admin API off, never the clinical API down.
        "optional": True,
    }


def test_a_token_change_restarts_only_the_api() -> None:
    other = hashlib.sha256(b"another").hexdigest()
    before, after = render("minimal"), render("minimal", f"admin.tokens.ci-admin={other}")
    assert (
        _annotations(before, API)["checksum/admin-secret"]
        != _annotations(after, API)["checksum/admin-secret"]
    )
    for name in ("sepsis-cds-worker", "sepsis-cds-beat"):
        assert _annotations(before, name) == _annotations(after, name), name


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # A raw token (not a sha256 hex digest) must never be accepted as a value.
        (["admin.tokens.alice=correct-horse-battery-staple"], "admin.tokens.alice"),
        (["admin.tokens.alice=" + "A" * 64], "admin.tokens.alice"),
        (["admin.existingSecret=admins"], "not both"),
    ],
)
def test_bad_admin_values_are_refused(values: list[str], message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render("minimal", *values)


def _ingress_paths(docs: list[Doc]) -> list[str]:
    (rule,) = find(docs, "Ingress")["spec"]["rules"]
    return [p["path"] for p in rule["http"]["paths"]]


def test_the_ingress_does_not_route_the_admin_api_unless_asked() -> None:
    assert _ingress_paths(render("production")) == ["/cds-services", "/model-cards"]
    exposed = _ingress_paths(render("production", "admin.ingress.expose=true"))
    assert exposed == ["/cds-services", "/model-cards", "/admin"]


@pytest.mark.parametrize("path", ["/", "/admin", "/admin/", "/admin/monitor"])
def test_an_ingress_path_that_would_route_admin_fails_the_render(path: str) -> None:
    with pytest.raises(RenderError, match="routes the admin API"):
        render("production", f"ingress.paths={{/cds-services,{path}}}")
    render("production", f"ingress.paths={{/cds-services,{path}}}", "admin.ingress.expose=true")


# --- Redis, the audit trail's store ------------------------------------------------------------


def _redis_conf(docs: list[Doc]) -> dict[str, str]:
    text = find(docs, "ConfigMap", "sepsis-cds-redis")["data"]["redis.conf"]
    lines = [line.split(None, 1) for line in text.splitlines() if line and line[0] != "#"]
    return {key: value for key, value in lines}


@pytest.mark.parametrize(
    ("scenario", "sets"),
    [
        # The production scenario uses a managed Redis; with the in-chart one it must be durable.
        ("production", ("redis.enabled=true", "redis.auth.password=pw0pw")),
        ("minimal", ()),
        ("keda", ()),
    ],
)
def test_redis_keeps_an_append_only_file_and_never_evicts(
    scenario: str, sets: tuple[str, ...]
) -> None:
    docs = render(scenario, *sets)
    conf = _redis_conf(docs)
    assert conf["appendonly"] == "yes"
    assert conf["appendfsync"] == "everysec"
    assert conf["maxmemory-policy"] == "noeviction"
    # ... on the persistent volume.
    redis = find(docs, "StatefulSet")
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    data = next(m for m in container["volumeMounts"] if m["mountPath"] == conf["dir"])
    assert data["name"] == claim["metadata"]["name"]


def test_turning_the_append_only_file_off_is_refused_outside_development() -> None:
    with pytest.raises(RenderError, match="audit trail"):
        render("minimal", "redis.appendonly=false")
    conf = _redis_conf(
        render("minimal", "redis.appendonly=false", "config.environment=development")
    )
    assert conf["appendonly"] == "no"


# --- alerts -----------------------------------------------------------------------------------

ALERTS = {
    "CdsSepsisCardsStopped": ("critical", "1m", ["cds_cards_off{", 'why="stopped"', "> 0"]),
    "CdsKillSwitchOn": ("warning", None, ["cds_cards_off{", 'why="killed"', "> 0"]),
    "CdsModelRolledBack": (
        "critical",
        None,
        ["increase(cds_lifecycle_actions_total{", 'action="rollback"', "[15m]", "> 0"],
    ),
    "CdsDriftWarn": ("warning", "30m", ["cds_drift_level{", "inputs|behaviour", ">= 1"]),
    "CdsAuditNotDurable": ("critical", "5m", ["cds_audit_durable{", "== 0"]),
    "CdsRedisMemoryHigh": ("warning", "15m", ["cds_redis_memory_used_ratio{", "> 0.8"]),
    "CdsAuditArchiveFailing": ("warning", "30m", ["kube_job_status_failed{", "audit-archive"]),
}


def test_no_prometheus_rule_unless_enabled() -> None:
    for scenario in ("minimal", "gpu", "keda"):
        assert not [d for d in render(scenario) if d["kind"] == "PrometheusRule"]


def test_the_lifecycle_alerts() -> None:
    rule = find(render("production"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == set(ALERTS)
    for name, (severity, duration, parts) in ALERTS.items():
        alert = alerts[name]
        assert alert["labels"] == {"severity": severity, "team": "clinical-informatics"}, name
        assert alert.get("for") == duration, name
        expr = alert["expr"]
        for part in parts:
            assert part in expr, (name, part)
        # Only this release's namespace: a test release beside it must not page for it.
        assert 'namespace="sepsis-cds"' in expr, name
        assert expr.count("(") == expr.count(")"), name
        notes = alert["annotations"]
        assert notes["summary"] and len(notes["description"]) > 100, name
        assert "runbook" in notes["description"], name
        assert notes["runbook_url"] == (
            f"https://wiki.hospital.example/sepsis-cds/runbook#{name.lower()}"
        )


def test_alert_labels_cannot_override_the_severity() -> None:
    with pytest.raises(RenderError, match="alertLabels"):
        render("production", "metrics.prometheusRule.alertLabels.severity=info")


# --- what helm install prints -----------------------------------------------------------------


def test_the_notes_say_how_to_reach_the_admin_api_and_what_redis_needs(
    notes: Callable[[str], str],
) -> None:
    minimal = notes("minimal")
    assert "inside the cluster only" in minimal
    assert "port-forward svc/sepsis-cds 8080:80" in minimal
    assert "/admin/monitor" in minimal
    production = notes("production")
    assert "/admin/*, bearer token of admin.tokens): off" in production
    assert "appendonly yes and maxmemory-policy noeviction" in production
    assert "redis.persistence.enabled is false" not in notes("gpu")
