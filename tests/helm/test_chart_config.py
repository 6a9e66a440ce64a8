"""Settings and secrets as the chart hands them to the service, checksums, NetworkPolicies."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import CHART, Doc, RenderError, env_of, find, pod_specs, render
from pydantic import BaseModel

from cds_service.settings import Settings

API = "sepsis-cds-api"
WORKER = "sepsis-cds-worker"
BEAT = "sepsis-cds-beat"


def _annotations(docs: list[Doc], name: str) -> dict[str, str]:
    return dict(find(docs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"])


# --- checksums ------------------------------------------------------------------------------


def test_checksums_are_stable_for_the_same_values() -> None:
    first, second = render("minimal"), render("minimal", "api.replicas=2")
    for name in (API, WORKER, BEAT):
        assert _annotations(first, name) == _annotations(second, name)


@pytest.mark.parametrize(
    ("value", "changed", "restarted", "kept"),
    [
        ("config.logLevel=DEBUG", "checksum/config", [API, WORKER, BEAT], []),
        (
            "config.fhirAllowedServers[0]=https://fhir.example",
            "checksum/config",
            [API, WORKER, BEAT],
            [],
        ),
        (
            "secrets.pseudonymKey=another-pseudonymisation-key-0123456789",
            "checksum/secret",
            [API, WORKER, BEAT],
            [],
        ),
        ("redis.auth.password=another0password", "checksum/secret", [API, WORKER, BEAT], []),
        ("jwks.files.ehr\\.json=rotated-key-set", "checksum/secret", [API], []),
        (
            "workers.config.censusLocations[0]=Location/icu-2",
            "checksum/worker-config",
            [WORKER, BEAT],
            [API],
        ),
    ],
)
def test_a_changed_value_restarts_the_pods_that_read_it(
    value: str, changed: str, restarted: list[str], kept: list[str]
) -> None:
    before, after = render("minimal"), render("minimal", value)
    for name in restarted:
        assert _annotations(before, name)[changed] != _annotations(after, name)[changed], name
    for name in kept:
        assert _annotations(before, name) == _annotations(after, name), name


def test_the_redis_pod_restarts_when_its_password_changes() -> None:
    def checksum(docs: list[Doc]) -> str:
        redis = find(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
        return str(redis["checksum/redis-secret"])

    assert checksum(render("minimal")) != checksum(render("minimal", "redis.auth.password=x0y"))


# --- settings ---------------------------------------------------------------------------------


def _settings_field(name: str) -> bool:
    """Whether an environment variable names a field of Settings (pydantic ignores the others)."""
    if name in ("REDIS_URL", "REDIS_PASSWORD", "POD_NAME"):
        return True
    if not name.startswith("CDS_"):
        return False
    model: type[BaseModel] = Settings
    parts = name.removeprefix("CDS_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation: Any = field.annotation
        if i < len(parts) - 1:
            nested = [
                a
                for a in getattr(annotation, "__args__", (annotation,))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ]
            if not nested:
                return False
            model = nested[0]
    return True


def _environment(docs: list[Doc], name: str, secrets: dict[str, str]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it: envFrom, then env, $(VAR) expanded."""
    spec = find(docs, "Deployment", name)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            key = f"{ref['name']}/{ref['key']}"
            if key in secrets:
                env[item["name"]] = secrets[key]
            else:
                assert ref.get("optional"), f"{name}: no value for {key}"
        else:
            env[item["name"]] = "pod-0"
    return env


PRODUCTION_SECRETS = {
    "sepsis-cds-secrets/pseudonym-key": "p" * 40,
    "sepsis-cds-secrets/smart-private-key": "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----",
    "sepsis-cds-redis/url": "rediss://:pw@redis.hospital.example:6380/0",
}


@pytest.mark.parametrize("scenario", ["minimal", "production", "gpu", "keda"])
def test_every_variable_the_chart_sets_is_a_setting(scenario: str) -> None:
    docs = render(scenario)
    for obj, _, spec in pod_specs(docs):
        if obj["kind"] == "StatefulSet" or obj["kind"] == "Pod":
            continue
        for container in spec["containers"]:
            names = set(env_of(container))
            for source in container.get("envFrom", []):
                names |= find(docs, "ConfigMap", source["configMapRef"]["name"])["data"].keys()
            unknown = sorted(n for n in names if not _settings_field(n))
            assert not unknown, f"{obj['metadata']['name']}: {unknown} are no Settings fields"


def _load(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os  # noqa: PLC0415

    for name in list(os.environ):
        if name.startswith("CDS_") or name in ("REDIS_URL",):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_production_settings_load_from_what_the_chart_hands_the_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _load(_environment(render("production"), API, PRODUCTION_SECRETS), monkeypatch)
    assert settings.environment == "production"
    assert settings.host == "0.0.0.0"  # noqa: S104
    assert settings.base_url == "https://cds.hospital.example"
    assert settings.fhir.allowed_servers == ["https://fhir.hospital.example/r4"]
    assert settings.jwt.required_for_discovery is True
    assert [i.iss for i in settings.jwt.issuers] == [
        "https://ehr.hospital.example",
        "https://ehr-test.hospital.example",
    ]
    assert settings.jwt.issuers[0].jwks_path == Path("/etc/cds/jwks/ehr.json")
    assert settings.jwt.issuers[1].jku == "https://ehr-test.hospital.example/.well-known/jwks.json"
    assert settings.sepsis.icu_location_ids == ["Location/icu-1"]
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == PRODUCTION_SECRETS["sepsis-cds-redis/url"]
    assert settings.worker.smart is None, "the API gets no SMART settings"
    assert settings.worker.fresh_for_hooks_s == 900


def test_production_settings_load_from_what_the_chart_hands_the_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _load(_environment(render("production"), WORKER, PRODUCTION_SECRETS), monkeypatch)
    assert settings.worker.fhir_base_url == "https://fhir.hospital.example/r4"
    assert settings.worker.census_locations == ["Location/icu-1"]
    assert settings.worker.smart is not None
    assert settings.worker.smart.token_url == "https://auth.hospital.example/oauth2/token"
    assert settings.worker.smart.kid == "sepsis-cds-2026"
    assert settings.worker.smart.private_key_pem.get_secret_value().startswith("-----BEGIN")
    assert settings.worker.census_interval_s == 300


def test_the_identifier_key_reaches_api_and_workers_the_smart_key_only_workers() -> None:
    docs = render(
        "minimal",
        "secrets.identifierKey=" + "A" * 43 + "=",
        "secrets.smartPrivateKeyPem=pem",
        "workers.config.smart.enabled=true",
        "workers.config.smart.tokenUrl=https://auth.example/token",
        "workers.config.smart.clientId=cds",
        "workers.config.smart.kid=k1",
    )
    for name, smart in ((API, False), (WORKER, True), (BEAT, True)):
        container = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        env = env_of(container)
        assert env["CDS_WORKER__IDENTIFIER_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "sepsis-cds",
            "key": "identifier-key",
            "optional": False,
        }
        assert ("CDS_WORKER__SMART__PRIVATE_KEY_PEM" in env) is smart, name
        config_maps = {s["configMapRef"]["name"] for s in container["envFrom"]}
        assert ("sepsis-cds-worker" in config_maps) is smart, name


def test_in_chart_redis_settings_carry_the_password_from_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = render("gpu")
    secrets = {
        "sepsis-cds/pseudonym-key": "ci-only-pseudonymisation-key-0123456789abcdef",
        "sepsis-cds-redis/redis-password": "ci0only0redis0password",
    }
    for name in (API, WORKER, "sepsis-cds-gpu-worker"):
        settings = _load(_environment(docs, name, secrets), monkeypatch)
        assert settings.redis_url is not None
        assert settings.redis_url.get_secret_value() == (
            "redis://:ci0only0redis0password@sepsis-cds-redis:6379/0"
        )
    gpu = _load(_environment(docs, "sepsis-cds-gpu-worker", secrets), monkeypatch)
    assert gpu.sepsis.device == "cuda"
    assert gpu.sepsis.model_root == Path("/models")


def test_order_sets_reach_the_settings_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    order_set = {
        "label": "Adult sepsis antibiotics",
        "resource": {"resourceType": "ServiceRequest"},
    }
    docs = render(
        "minimal",
        f"config.sepsis.orderSets.antibiotics.label={order_set['label']}",
        "config.sepsis.orderSets.antibiotics.resource.resourceType=ServiceRequest",
    )
    config = find(docs, "ConfigMap", "sepsis-cds")["data"]
    assert json.loads(config["CDS_SEPSIS__ORDER_SETS"]) == {"antibiotics": order_set}
    secrets = {
        "sepsis-cds/pseudonym-key": "k" * 40,
        "sepsis-cds-redis/redis-password": "pw",
    }
    settings = _load(_environment(docs, API, secrets), monkeypatch)
    assert settings.sepsis.order_sets["antibiotics"].label == order_set["label"]


# --- secrets ----------------------------------------------------------------------------------


def test_the_in_chart_redis_takes_its_password_from_a_secret() -> None:
    docs = render("minimal")
    redis = find(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    ref = env_of(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secret = find(docs, "Secret", ref["name"])
    assert ref["key"] in secret["data"]
    assert redis["command"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert env_of(redis)["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"] == ref
    # Kubernetes expands $(VAR) only from variables defined before it.
    for obj, _, spec in pod_specs(docs):
        for container in spec["containers"]:
            names = [e["name"] for e in container.get("env", [])]
            if "REDIS_URL" in names and obj["kind"] == "Deployment":
                assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")


def test_no_password_appears_outside_a_secret() -> None:
    docs = render("minimal")
    for doc in docs:
        if doc["kind"] != "Secret":
            text = yaml.safe_dump(doc)
            assert "ci0only0redis0password" not in text, doc["metadata"]["name"]
            assert "ci-only-pseudonymisation-key" not in text, doc["metadata"]["name"]


def test_existing_secrets_replace_the_charts_own() -> None:
    docs = render("production")
    assert not [d for d in docs if d["kind"] == "Secret"]
    names = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for _, _, spec in pod_specs(docs)
        for c in spec["containers"]
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert names == {"sepsis-cds-secrets", "sepsis-cds-redis"}
    volumes = find(docs, "Deployment", API)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "jwks", "secret": {"secretName": "sepsis-cds-jwks"}} in volumes
    keda = render("keda")
    assert not [d for d in keda if d["kind"] == "Secret" and "redis" in d["metadata"]["name"]]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["secrets.pseudonymKey="], "set secrets.pseudonymKey"),
        (["redis.auth.password="], "set redis.auth.password"),
        (["redis.enabled=false"], "set redis.external.url"),
        (["config.jwt.issuers[0].jwksFile=other.json"], "which jwks.files does not have"),
        (["workers.config.smart.enabled=true"], "secrets.smartPrivateKeyPem"),
        (["redis.enabled=false", "redis.external.url=redis://r:6379/0"], "redis.external.cidrs"),
    ],
)
def test_missing_values_fail_the_render_with_a_reason(values: list[str], message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render("minimal", *values)


def test_a_short_pseudonym_key_is_refused_by_the_schema() -> None:
    with pytest.raises(RenderError, match="pseudonymKey"):
        render("minimal", "secrets.pseudonymKey=too-short")


# --- network policies -----------------------------------------------------------------------


def _policy(docs: list[Doc], name: str) -> Doc:
    return dict(find(docs, "NetworkPolicy", name)["spec"])


def _cidrs(rules: list[Doc]) -> set[str]:
    return {peer["ipBlock"]["cidr"] for rule in rules for peer in rule["to"] if "ipBlock" in peer}


def _every_rule_is_bounded(rules: list[Doc], peers: str) -> None:
    for rule in rules:
        # An empty `to`/`from` admits every address, a missing `ports` every port.
        assert rule.get(peers), rule
        assert rule.get("ports"), rule
        for peer in rule[peers]:
            assert peer.get("ipBlock", {}).get("cidr") not in ("0.0.0.0/0", "::/0"), rule


def test_production_egress_allows_exactly_what_the_values_list() -> None:
    docs = render("production")
    api, workers = _policy(docs, API), _policy(docs, WORKER)
    for policy in (api, workers):
        assert policy["policyTypes"] == ["Ingress", "Egress"]
        _every_rule_is_bounded(policy["egress"], "to")
        dns = policy["egress"][0]
        assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    # Redis, the FHIR servers, and the JWKS hosts (API) or token endpoints (workers).
    assert _cidrs(api["egress"]) == {"10.40.0.0/28", "10.20.0.0/24", "10.20.2.0/28"}
    assert _cidrs(workers["egress"]) == {"10.40.0.0/28", "10.20.0.0/24", "10.20.1.0/28"}
    jwks = next(r for r in api["egress"] if _cidrs([r]) == {"10.20.2.0/28"})
    assert [p["port"] for p in jwks["ports"]] == [443, 8443]
    redis = next(r for r in api["egress"] if _cidrs([r]) == {"10.40.0.0/28"})
    assert [p["port"] for p in redis["ports"]] == [6380]


def test_production_ingress_admits_the_ehr_the_ingress_controller_and_prometheus() -> None:
    docs = render("production")
    api = _policy(docs, API)
    _every_rule_is_bounded(api["ingress"], "from")
    peers = [peer for rule in api["ingress"] for peer in rule["from"]]
    namespaces = {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for p in peers
        if "namespaceSelector" in p
    }
    assert namespaces == {"ingress-nginx", "ehr", "monitoring"}
    assert {p["ipBlock"]["cidr"] for p in peers if "ipBlock" in p} == {"10.10.0.0/16"}
    pods = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p]
    assert pods == [
        {
            "app.kubernetes.io/name": "sepsis-cds",
            "app.kubernetes.io/instance": "sepsis-cds",
            "app.kubernetes.io/component": "test",
        }
    ]
    assert _policy(docs, WORKER)["ingress"] == []


def test_in_chart_redis_is_reached_by_pod_and_reaches_nobody() -> None:
    docs = render("minimal")
    for name in (API, WORKER):
        egress = _policy(docs, name)["egress"]
        assert not _cidrs(egress), "no address range is allowed unless the values list it"
        redis = egress[1]["to"][0]["podSelector"]["matchLabels"]
        assert redis["app.kubernetes.io/component"] == "redis"
    api = _policy(docs, API)
    assert api["ingress"][0]["from"] == [{"podSelector": {}}], "default: this namespace only"
    redis = _policy(docs, "sepsis-cds-redis")
    assert redis["egress"] == []
    (rule,) = redis["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchExpressions"][0]["values"] == [
        "api",
        "worker",
        "gpu-worker",
        "beat",
    ]


def test_keda_may_read_the_in_chart_redis() -> None:
    (rule,) = _policy(render("keda"), "sepsis-cds-redis")["ingress"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}} in rule[
        "from"
    ]


def test_the_worker_policy_covers_every_worker_pod() -> None:
    docs = render("gpu")
    selector = _policy(docs, WORKER)["podSelector"]
    components = set(selector["matchExpressions"][0]["values"])
    for obj, meta, _ in pod_specs(docs):
        component = meta["labels"]["app.kubernetes.io/component"]
        if component in ("worker", "gpu-worker", "beat"):
            assert component in components, obj["metadata"]["name"]


# --- values.yaml ------------------------------------------------------------------------------


def test_every_value_has_a_comment() -> None:
    """Each key has a comment line above it; a `# --` comment documents the whole block below."""
    undocumented: list[str] = []
    documented_blocks: list[int] = []  # indents of blocks documented as one value
    comment = ""  # the first line of the comment block right above, if any
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment = comment or stripped
            continue
        if not stripped:
            comment = ""
            continue
        indent = len(line) - len(line.lstrip())
        documented_blocks = [i for i in documented_blocks if i < indent]
        if re.match(r"^[\w.\-/]+:", stripped) and not documented_blocks:
            if not comment:
                undocumented.append(stripped)
            elif comment.startswith("# --"):
                documented_blocks.append(indent)
        comment = ""
    assert not undocumented, undocumented


def test_the_schema_knows_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: Any, part: Any, path: str) -> None:
        if not isinstance(node, dict) or "properties" not in part:
            return
        for key, value in node.items():
            assert key in part["properties"], f"{path}{key} is not in values.schema.json"
            walk(value, part["properties"][key], f"{path}{key}.")

    walk(values, schema, "")
