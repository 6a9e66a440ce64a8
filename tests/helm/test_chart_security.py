"""What a hospital's security review asks of every pod, in every scenario of helm/sepsis-cds/ci."""

from __future__ import annotations

import re

import pytest
from chart_render import NAMESPACE, Doc, containers, find, pod_specs, render

# name[:tag][@sha256:digest], where a tag-only reference must not be `latest`.
IMAGE = re.compile(
    r"^(?P<name>[^@]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)


# The one writable path of a container: an emptyDir of the pod's own, not the host's /tmp.
TMP = "/tmp"  # noqa: S108


def test_every_scenario_renders_something_that_runs(rendered: list[Doc]) -> None:
    kinds = {d["kind"] for d in rendered}
    assert {"Deployment", "Service", "ConfigMap", "Pod"} <= kinds


def test_every_pod_runs_unprivileged(rendered: list[Doc]) -> None:
    for obj, _, spec in pod_specs(rendered):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for c in containers(spec):
            sc = c["securityContext"]
            at = f"{where} container {c['name']}"
            assert sc["runAsNonRoot"] is True, at
            assert sc.get("runAsUser", pod["runAsUser"]) > 0, at
            assert sc["readOnlyRootFilesystem"] is True, at
            assert sc["allowPrivilegeEscalation"] is False, at
            assert sc.get("privileged", False) is False, at
            assert sc["capabilities"] == {"drop": ["ALL"]}, at
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, at


def test_every_container_has_a_writable_tmp_and_nothing_else_writable(
    rendered: list[Doc],
) -> None:
    for obj, _, spec in pod_specs(rendered):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            assert TMP in mounts, f"{obj['metadata']['name']}/{c['name']}"
            assert "emptyDir" in volumes[mounts[TMP]["name"]]
            for path, mount in mounts.items():
                volume = volumes.get(mount["name"], {})
                writable = "emptyDir" in volume or path == "/data"
                assert writable or mount.get("readOnly") is True, f"{c['name']} {path}"


def test_every_container_has_requests_and_limits(rendered: list[Doc]) -> None:
    for obj, _, spec in pod_specs(rendered):
        for c in containers(spec):
            resources = c["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= resources[kind].keys(), (
                    f"{obj['metadata']['name']}/{c['name']} {kind}"
                )


def test_images_are_pinned(rendered: list[Doc]) -> None:
    for obj, _, spec in pod_specs(rendered):
        for c in containers(spec):
            match = IMAGE.match(c["image"])
            assert match, c["image"]
            assert match["digest"] or (match["tag"] and match["tag"] != "latest"), (
                f"{obj['metadata']['name']}/{c['name']}: {c['image']} is not pinned"
            )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("image.tag=latest", "image.tag"),
        ("tests.image.tag=latest", "tests.image.tag"),
        ("redis.image.tag=latest", "redis.image.tag"),
        ("gpuWorkers.enabled=true,gpuWorkers.image.tag=latest", "gpuWorkers.image.tag"),
    ],
)
def test_latest_is_refused(values: str, message: str) -> None:
    from chart_render import RenderError  # noqa: PLC0415

    with pytest.raises(RenderError, match=re.escape(message)):
        render("minimal", values)


def test_an_untagged_image_is_refused() -> None:
    from chart_render import RenderError  # noqa: PLC0415

    with pytest.raises(RenderError, match="needs a pinned tag or digest"):
        render("minimal", "redis.image.tag=")


def test_a_digest_replaces_the_tag() -> None:
    digest = "sha256:" + "ab" * 32
    docs = render("minimal", f"image.digest={digest}")
    api = find(docs, "Deployment", "sepsis-cds-api")
    assert api["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f"@{digest}")


def test_every_object_names_its_namespace(rendered: list[Doc]) -> None:
    for doc in rendered:
        assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_the_service_account_mounts_no_token(rendered: list[Doc]) -> None:
    account = find(rendered, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert not [d for d in rendered if d["kind"] in ("Role", "ClusterRole", "RoleBinding")]
