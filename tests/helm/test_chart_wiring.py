"""The chart's objects fit together and fit the service: commands, probes, selectors, scaling."""

from __future__ import annotations

import re
from collections.abc import Callable

from chart_render import Doc, containers, env_of, find, pod_specs, render

API = "sepsis-cds-api"
WORKER = "sepsis-cds-worker"


def _container(docs: list[Doc], kind: str, name: str) -> Doc:
    return find(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_api_serves_on_all_interfaces_with_http_probes(rendered: list[Doc]) -> None:
    api = _container(rendered, "Deployment", API)
    config = find(rendered, "ConfigMap", "sepsis-cds")["data"]
    assert api["command"] == ["cds-service", "serve"]
    assert config["CDS_HOST"] == "0.0.0.0"  # noqa: S104 - the pod's interface, behind its Service
    port = next(p for p in api["ports"] if p["name"] == "http")
    assert str(port["containerPort"]) == config["CDS_PORT"]
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_workers_run_the_celery_app_and_answer_a_ping_probe(rendered: list[Doc]) -> None:
    for obj, _, spec in pod_specs(rendered):
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        if component not in ("worker", "gpu-worker"):
            continue
        (worker,) = containers(spec)
        assert worker["command"][:4] == ["celery", "-A", "workers.main", "worker"]
        hostname = next(a for a in worker["command"] if a.startswith("--hostname="))
        assert hostname == f"--hostname={component}@$(POD_NAME)"
        assert "POD_NAME" in env_of(worker)
        for probe in ("livenessProbe", "readinessProbe"):
            command = worker[probe]["exec"]["command"][-1]
            assert "celery -A workers.main inspect ping" in command
            assert f'--destination={component}@"$POD_NAME"' in command
            # The probe's own wait ends before Kubernetes gives up on it.
            timeout = int(command.rpartition("--timeout=")[2])
            assert timeout < worker[probe]["timeoutSeconds"]


def test_one_beat_with_its_schedule_in_tmp(rendered: list[Doc]) -> None:
    beat = find(rendered, "Deployment", "sepsis-cds-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = beat["spec"]["template"]["spec"]["containers"]
    assert container["command"][:4] == ["celery", "-A", "workers.main", "beat"]
    assert "--schedule=/tmp/celerybeat-schedule" in container["command"]


def test_the_app_the_chart_starts_is_the_one_make_run_starts() -> None:
    import ast  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    import cds_service.devrun  # noqa: PLC0415

    source = Path(cds_service.devrun.__file__).read_text()
    strings = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant)}
    assert {"-A", "workers.main", "worker"} <= strings


def test_services_and_budgets_select_their_pods(rendered: list[Doc]) -> None:
    pods = {
        obj["metadata"]["name"]: meta["labels"]
        for obj, meta, _ in pod_specs(rendered)
        if obj["kind"] != "Pod"
    }
    for doc in rendered:
        if doc["kind"] == "Service":
            selector = doc["spec"]["selector"]
        elif doc["kind"] == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        else:
            continue
        chosen = [n for n, labels in pods.items() if _labels_match(selector, labels)]
        assert len(chosen) == 1, f"{doc['kind']}/{doc['metadata']['name']} selects {chosen}"


def test_the_service_points_at_the_api_port(rendered: list[Doc]) -> None:
    service = find(rendered, "Service", "sepsis-cds")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert _labels_match(
        service["spec"]["selector"],
        find(rendered, "Deployment", API)["spec"]["template"]["metadata"]["labels"],
    )


def test_the_hpa_owns_the_api_replicas() -> None:
    docs = render("production")
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": API,
    }
    assert "replicas" not in find(docs, "Deployment", API)["spec"]
    assert "replicas" in find(render("minimal"), "Deployment", API)["spec"]


def test_keda_scales_the_worker_deployment_on_the_celery_list() -> None:
    docs = render("keda")
    scaled = find(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == WORKER
    assert target.get("kind", "Deployment") == "Deployment"
    worker = find(docs, "Deployment", target["name"])
    assert "replicas" not in worker["spec"], "KEDA, not the chart, sets the worker count"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert all(isinstance(v, str) for v in metadata.values()), "KEDA metadata is string-valued"
    assert metadata["listName"] == "celery"
    queues = next(
        a
        for a in worker["spec"]["template"]["spec"]["containers"][0]["command"]
        if a.startswith("--queues=")
    )
    assert metadata["listName"] in queues.removeprefix("--queues=").split(",")
    host, _, port = metadata["address"].partition(":")
    assert host == "sepsis-cds-redis.sepsis-cds.svc.cluster.local"
    assert port == "6379"
    find(docs, "Service", host.split(".")[0])
    # KEDA reads the password from the target container's own environment.
    env = env_of(worker["spec"]["template"]["spec"]["containers"][0])
    assert metadata["passwordFromEnv"] in env
    assert env[metadata["passwordFromEnv"]]["valueFrom"]["secretKeyRef"] == {
        "name": "sepsis-cds-redis-auth",
        "key": "password",
    }


def test_keda_with_an_external_redis_needs_an_address() -> None:
    import pytest  # noqa: PLC0415
    from chart_render import RenderError  # noqa: PLC0415

    with pytest.raises(RenderError, match=re.escape("workers.keda.address")):
        render("production", "workers.keda.enabled=true")
    docs = render(
        "production", "workers.keda.enabled=true", "workers.keda.address=redis.example:6380"
    )
    assert find(docs, "ScaledObject")["spec"]["triggers"][0]["metadata"]["address"] == (
        "redis.example:6380"
    )


def test_the_gpu_pool_asks_for_gpus_on_gpu_nodes() -> None:
    docs = render("gpu")
    gpu = find(docs, "Deployment", "sepsis-cds-gpu-worker")["spec"]["template"]["spec"]
    (container,) = gpu["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu[
        "tolerations"
    ]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["runtimeClassName"] == "nvidia"
    assert env_of(container)["CDS_SEPSIS__DEVICE"] == {
        "name": "CDS_SEPSIS__DEVICE",
        "value": "cuda",
    }
    assert container["image"].endswith(":0.1.0-cuda12")
    cpu = find(docs, "Deployment", WORKER)["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert "CDS_SEPSIS__DEVICE" not in env_of(cpu)
    find(docs, "PodDisruptionBudget", "sepsis-cds-gpu-worker")


def test_models_from_a_volume_are_mounted_read_only_where_the_settings_look() -> None:
    docs = render("gpu")
    config = find(docs, "ConfigMap", "sepsis-cds")["data"]
    assert config["CDS_SEPSIS__MODEL_ROOT"] == "/models"
    for obj, _, spec in pod_specs(docs):
        if obj["metadata"]["name"] in (API, WORKER, "sepsis-cds-gpu-worker"):
            mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "models")
            assert mount == {
                "name": "models",
                "mountPath": "/models",
                "readOnly": True,
                "subPath": "registry",
            }
            volume = next(v for v in spec["volumes"] if v["name"] == "models")
            assert volume["persistentVolumeClaim"]["claimName"] == "sepsis-models"
    baked = find(render("minimal"), "ConfigMap", "sepsis-cds")["data"]
    assert baked["CDS_SEPSIS__MODEL_ROOT"] == "/opt/cds/model_artifacts"


def test_the_service_monitor_scrapes_the_api_service() -> None:
    docs = render("production")
    monitor = find(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = find(docs, "Service", "sepsis-cds")
    assert _labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["sepsis-cds"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_the_ingress_exposes_only_the_cds_routes() -> None:
    ingress = find(render("production"), "Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "cds.hospital.example"
    paths = {p["path"] for p in rule["http"]["paths"]}
    assert paths == {"/cds-services", "/model-cards"}
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"] == {"name": "sepsis-cds", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "cds-hospital-tls"


def test_the_helm_test_calls_discovery_through_the_service(rendered: list[Doc]) -> None:
    pod = find(rendered, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert 'url="http://sepsis-cds:80/cds-services"' in script
    assert pod["spec"]["restartPolicy"] == "Never"


def test_the_helm_test_expects_401_when_discovery_needs_a_jwt() -> None:
    script = find(render("production"), "Pod")["spec"]["containers"][0]["command"][-1]
    assert 'test "$code" = 401' in script
    script = find(render("minimal"), "Pod")["spec"]["containers"][0]["command"][-1]
    assert "grep -q '\"sepsis-patient-view\"'" in script


def test_the_notes_name_the_discovery_url_and_warn_what_is_missing(
    notes: Callable[[str], str],
) -> None:
    production = notes("production")
    assert "https://cds.hospital.example/cds-services" in production
    assert "rollout restart" in production
    minimal = notes("minimal")
    assert "http://sepsis-cds.sepsis-cds.svc.cluster.local/cds-services" in minimal
    gpu = notes("gpu")
    assert "config.jwt.issuers is empty" in gpu
    assert "GPU worker(s)" in gpu
