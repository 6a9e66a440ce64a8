"""The audit archive: a CronJob that appends the Redis audit streams to files on a kept volume."""

from __future__ import annotations

import base64
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from chart_render import Doc, RenderError, env_of, find, render

from cds_service.audit_archive import ArchiveSettings

ARCHIVE = "sepsis-cds-audit-archive"
ARCHIVE_DIR = "/var/lib/cds/audit"
WORKER = "sepsis-cds-worker"
# The scenarios that keep the default (on); minimal turns it off.
ON = ["production", "gpu", "keda"]
PRODUCTION_SECRETS = {
    "sepsis-cds-secrets/pseudonym-key": "p" * 40,
    "sepsis-cds-redis/url": "rediss://:pw@redis.hospital.example:6380/0",
}


def _cronjob(docs: list[Doc]) -> Doc:
    return find(docs, "CronJob", ARCHIVE)


def _pod(docs: list[Doc]) -> Doc:
    return dict(_cronjob(docs)["spec"]["jobTemplate"]["spec"]["template"])


def _container(docs: list[Doc]) -> Doc:
    (container,) = _pod(docs)["spec"]["containers"]
    return dict(container)


def _archive_objects(docs: list[Doc]) -> list[Doc]:
    return [
        d
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "audit-archive"
    ]


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches these labels (the operators the chart uses)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] == "NotIn" and value in expression["values"]:
            return False
    return True


def _environment(docs: list[Doc], secrets: dict[str, str]) -> dict[str, str]:
    """The archive container's environment as Kubernetes builds it: envFrom, env, $(VAR)."""
    container = _container(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        own = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref["name"]]
        if own:
            env[item["name"]] = base64.b64decode(own[0]["data"][ref["key"]]).decode()
        else:
            env[item["name"]] = secrets[f"{ref['name']}/{ref['key']}"]
    return env


def _set_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Exactly these settings in the environment, none of the developer's own."""
    import os  # noqa: PLC0415

    for name in list(os.environ):
        if name.startswith("CDS_") or name in ("REDIS_URL", "REDIS_PASSWORD"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _load(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ArchiveSettings:
    """The job's own settings class: it needs no pseudonymisation key, and is handed none."""
    _set_env(env, monkeypatch)
    assert "CDS_PSEUDONYM_KEY" not in env
    return ArchiveSettings(_env_file=None)  # type: ignore[call-arg]


# --- the CronJob ----------------------------------------------------------------------------


def test_production_archives_every_ten_minutes_one_run_at_a_time() -> None:
    cronjob = _cronjob(render("production"))
    spec = cronjob["spec"]
    assert spec["schedule"] == "*/10 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] <= 600
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1, "a failed run must stay visible"
    job = spec["jobTemplate"]["spec"]
    assert 0 <= job["backoffLimit"] <= 3
    # A hung run must end before the next is due, or Forbid skips that one too.
    assert 0 < job["activeDeadlineSeconds"] < 600
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_a_setting_or_gap_failure_fails_the_job_at_once_and_a_drain_is_not_counted() -> None:
    rules = _cronjob(render("production"))["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]
    fail = [r for r in rules["rules"] if r["action"] == "FailJob"]
    assert [r["onExitCodes"] for r in fail] == [
        {
            "containerName": _container(render("production"))["name"],
            "operator": "In",
            "values": [2, 3],
        }
    ]
    ignore = [r for r in rules["rules"] if r["action"] == "Ignore"]
    assert ignore[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _TrimmedRedis:
    """A Redis whose calls stream starts with one event of today: everything older was trimmed."""

    def __init__(self) -> None:
        self.first = f"{int(time.time() * 1000)}-0"

    # redis-py's own parameter names: the archive passes min= by keyword.
    def xrange(self, stream: str, min: str = "-", **kwargs: object) -> list[object]:
        if stream != "cds:audit:calls" or min == f"({self.first}":
            return []
        return [(self.first.encode(), {b"e": b"{}"})]

    def close(self) -> None:
        pass


def test_the_exit_codes_the_job_fails_on_are_the_ones_the_archive_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 1 (Redis unreachable) is worth a retry; 2 (no archive directory) and 3 (a gap) not."""
    from cds_service import audit_archive  # noqa: PLC0415

    monkeypatch.chdir(tmp_path)  # no developer's .env
    archive = tmp_path / "archive"
    base = {"CDS_ENVIRONMENT": "development", "REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0"}
    _set_env(base, monkeypatch)
    assert audit_archive.main() == 2
    _set_env({**base, "CDS_LIFECYCLE__ARCHIVE_DIR": str(archive)}, monkeypatch)
    assert audit_archive.main() == 1
    # Archived up to 2020-01-01, and Redis, which keeps calls for 30 days, starts today: a gap.
    (archive / "calls").mkdir(parents=True, exist_ok=True)
    (archive / "calls" / "2020-01-01.jsonl").write_text('{"id": "1577836800000-0", "event": {}}\n')
    monkeypatch.setattr(audit_archive.redis.Redis, "from_url", lambda *a, **k: _TrimmedRedis())
    assert audit_archive.main() == 3


@pytest.mark.parametrize("scenario", ON)
def test_the_archive_pod_is_hardened_like_the_workers(scenario: str) -> None:
    docs = render(scenario)
    pod = _pod(docs)["spec"]
    worker = find(docs, "Deployment", WORKER)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == worker["serviceAccountName"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # The worker pods' context, plus: the kubelet leaves the archive's files as they are.
    assert {k: v for k, v in security.items() if k != "fsGroupChangePolicy"} == worker[
        "securityContext"
    ]
    assert security["fsGroupChangePolicy"] == "OnRootMismatch"
    container, (worker_container,) = _container(docs), worker["containers"]
    assert container["image"] == worker_container["image"]
    assert container["securityContext"] == worker_container["securityContext"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind


def test_the_job_runs_the_archive_module_once() -> None:
    import importlib.util  # noqa: PLC0415

    container = _container(render("production"))
    assert container["command"] == ["python", "-m", "cds_service.audit_archive"]
    assert "args" not in container
    assert importlib.util.find_spec("cds_service.audit_archive") is not None


@pytest.mark.parametrize("scenario", ON)
def test_the_volume_is_mounted_where_the_setting_points_and_nothing_else_is_writable(
    scenario: str,
) -> None:
    docs = render(scenario)
    pod = _pod(docs)["spec"]
    container = _container(docs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/tmp", ARCHIVE_DIR}  # noqa: S108 - the pod's own emptyDir
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # noqa: S108
    archive = mounts[ARCHIVE_DIR]
    assert archive.get("readOnly") is not True
    assert "persistentVolumeClaim" in volumes[archive["name"]]
    env = env_of(container)
    assert env["CDS_LIFECYCLE__ARCHIVE_DIR"]["value"] == ARCHIVE_DIR
    assert env["CDS_LIFECYCLE__ARCHIVE_RETENTION_DAYS"]["value"] == "3650"


def test_the_retention_comes_from_the_values() -> None:
    env = env_of(_container(render("production", "audit.archive.retentionDays=4000")))
    assert env["CDS_LIFECYCLE__ARCHIVE_RETENTION_DAYS"]["value"] == "4000"


@pytest.mark.parametrize("scenario", ON)
def test_the_archive_reaches_redis_exactly_as_the_workers_do_and_gets_no_worker_secret(
    scenario: str,
) -> None:
    docs = render(scenario)
    worker = find(docs, "Deployment", WORKER)["spec"]["template"]["spec"]["containers"][0]
    names = ("REDIS_PASSWORD", "REDIS_URL")
    archive = _container(docs)

    def redis_env(container: Doc) -> list[Doc]:
        return [e for e in container["env"] if e["name"] in names]

    assert redis_env(archive) == redis_env(worker)
    assert redis_env(archive), "no Redis connection"
    env = env_of(archive)
    assert "CDS_WORKER__SMART__PRIVATE_KEY_PEM" not in env
    assert "CDS_WORKER__IDENTIFIER_KEY" not in env
    assert [s["configMapRef"]["name"] for s in archive["envFrom"]] == ["sepsis-cds"]


def test_production_settings_load_from_what_the_chart_hands_the_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _load(_environment(render("production"), PRODUCTION_SECRETS), monkeypatch)
    assert "CDS_ENVIRONMENT" in _environment(render("production"), PRODUCTION_SECRETS)
    assert settings.lifecycle.archive_dir == Path(ARCHIVE_DIR)
    assert settings.lifecycle.archive_retention_days == 3650
    # The archive's gap check reads the streams' Redis retentions from the shared ConfigMap.
    assert settings.lifecycle.call_audit_retention_days == 30
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == PRODUCTION_SECRETS["sepsis-cds-redis/url"]


def test_in_chart_redis_settings_carry_the_password_from_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _load(_environment(render("gpu"), {}), monkeypatch)
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == (
        "redis://:ci0only0redis0password@sepsis-cds-redis:6379/0"
    )


# --- the volume -----------------------------------------------------------------------------


def test_production_gets_a_kept_claim_of_the_size_and_class_it_asks_for() -> None:
    docs = render("production")
    claim = find(docs, "PersistentVolumeClaim", ARCHIVE)
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["storageClassName"] == "backed-up-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "16Gi"
    volumes = _pod(docs)["spec"]["volumes"]
    assert {"name": "archive", "persistentVolumeClaim": {"claimName": ARCHIVE}} in volumes


def test_the_default_claim_is_10gi_of_the_cluster_default_class() -> None:
    claim = find(render("gpu"), "PersistentVolumeClaim", ARCHIVE)
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in claim["spec"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize(
    ("scenario", "sets"),
    [("keda", ()), ("production", ("audit.archive.persistence.existingClaim=audit-nfs",))],
)
def test_an_existing_claim_replaces_the_charts_own(scenario: str, sets: tuple[str, ...]) -> None:
    docs = render(scenario, *sets)
    expected = "sepsis-cds-audit" if scenario == "keda" else "audit-nfs"
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    volumes = _pod(docs)["spec"]["volumes"]
    assert {"name": "archive", "persistentVolumeClaim": {"claimName": expected}} in volumes


@pytest.mark.parametrize(
    ("scenario", "sets"), [("minimal", ()), ("production", ("audit.archive.enabled=false",))]
)
def test_disabled_renders_no_cronjob_claim_or_policy(scenario: str, sets: tuple[str, ...]) -> None:
    docs = render(scenario, *sets)
    assert not [d for d in docs if d["kind"] in ("CronJob", "PersistentVolumeClaim")]
    assert not _archive_objects(docs)


def test_the_notes_name_the_claim_or_warn_that_nothing_archives(
    notes: Callable[[str], str],
) -> None:
    production = notes("production")
    assert f"CronJob {ARCHIVE}" in production
    assert f"the claim {ARCHIVE}; back it up" in production
    assert "audit.archive.enabled is false" not in production
    assert "audit.archive.enabled is false" in notes("minimal")


# --- network policies -----------------------------------------------------------------------


def test_production_archive_may_reach_only_dns_and_the_external_redis() -> None:
    docs = render("production")
    policy = find(docs, "NetworkPolicy", ARCHIVE)["spec"]
    labels = _pod(docs)["metadata"]["labels"]
    assert _selects(policy["podSelector"], labels)
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == []
    dns, redis = policy["egress"]
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    # The FHIR servers, token endpoints and JWKS hosts the values list are not among them.
    assert redis == {
        "to": [{"ipBlock": {"cidr": "10.40.0.0/28"}}],
        "ports": [{"port": 6380, "protocol": "TCP"}],
    }


def test_in_chart_redis_admits_the_archive_and_the_archive_only_reaches_redis_pods() -> None:
    docs = render("gpu")
    labels = _pod(docs)["metadata"]["labels"]
    _, redis = find(docs, "NetworkPolicy", ARCHIVE)["spec"]["egress"]
    assert redis["to"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "sepsis-cds",
                    "app.kubernetes.io/instance": "sepsis-cds",
                    "app.kubernetes.io/component": "redis",
                }
            }
        }
    ]
    assert redis["ports"] == [{"port": 6379, "protocol": "TCP"}]
    (rule,) = find(docs, "NetworkPolicy", "sepsis-cds-redis")["spec"]["ingress"]
    assert any(
        _selects(peer["podSelector"], labels) for peer in rule["from"] if "podSelector" in peer
    )


def test_redis_does_not_admit_the_archive_when_it_is_off() -> None:
    docs = render("gpu", "audit.archive.enabled=false")
    (rule,) = find(docs, "NetworkPolicy", "sepsis-cds-redis")["spec"]["ingress"]
    archive = {
        "app.kubernetes.io/name": "sepsis-cds",
        "app.kubernetes.io/instance": "sepsis-cds",
        "app.kubernetes.io/component": "audit-archive",
    }
    assert not any(_selects(p["podSelector"], archive) for p in rule["from"] if "podSelector" in p)


def test_the_archive_policy_selects_no_other_pod() -> None:
    docs = render("gpu")
    selector = find(docs, "NetworkPolicy", ARCHIVE)["spec"]["podSelector"]
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            assert not _selects(selector, doc["spec"]["template"]["metadata"]["labels"])


def test_no_archive_policy_without_network_policies() -> None:
    docs = render("production", "networkPolicy.enabled=false")
    assert _cronjob(docs)
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "audit.archive.persistence.accessModes[0]=ReadOnlyMany",
        "audit.archive.retentionDays=0",
        "audit.archive.schedule=every ten minutes",
        "audit.archive.failedJobsHistoryLimit=0",
        "audit.archive.unknown=1",
    ],
)
def test_the_schema_refuses_archive_values_that_would_not_work(value: str) -> None:
    with pytest.raises(RenderError, match="audit"):
        render("production", value)
