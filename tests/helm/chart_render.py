"""Render the chart with the pinned helm that `make chart-check` installs, and read the result.

The tests fail (never skip) when helm is missing: `make test` runs `chart-check` first, which
installs it into .cache/chart-tools.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML, installed with uvicorn[standard]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sepsis-cds"
TOOLS = Path(os.environ.get("CHART_TOOLS_DIR", ROOT / ".cache" / "chart-tools"))
HELM = TOOLS / "bin" / "helm"
RELEASE = "sepsis-cds"
NAMESPACE = "sepsis-cds"
SCENARIOS = sorted(
    p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")
)

Doc = dict[str, Any]


def _pinned(name: str) -> str:
    for line in (ROOT / "tools" / "chart-checks" / "versions.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.partition("=")[2].strip()
    raise LookupError(name)


KUBERNETES_VERSION = _pinned("KUBERNETES_VERSION")


def helm_binary() -> Path:
    if not os.access(HELM, os.X_OK):
        pytest.fail(
            f"helm is not installed at {HELM}: run `make chart-check` (or "
            "`bash tools/chart-checks/install.sh helm`), which installs the pinned version",
            pytrace=False,
        )
    return HELM


@cache
def template(chart: Path, scenario: str | None, sets: tuple[str, ...]) -> str:
    args = [str(helm_binary()), "template", RELEASE, str(chart), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBERNETES_VERSION]
    if scenario:
        args += ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")]
    for item in sets:
        args += ["--set", item]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise RenderError(result.stderr.strip())
    return result.stdout


class RenderError(Exception):
    """helm template refused the values; the message is helm's."""


# libyaml's loader where PyYAML was built with it: the pure-Python one takes most of the time here.
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_all(text: str) -> list[Doc]:
    return [d for d in yaml.load_all(text, Loader=Loader) if d]


def render(scenario: str | None, *sets: str) -> list[Doc]:
    """The objects `helm template` renders for a scenario (and --set overrides), hooks included.
    Cached: the same arguments return the same objects, which callers must not change."""
    return _render(scenario, sets)


@cache
def _render(scenario: str | None, sets: tuple[str, ...]) -> list[Doc]:
    return load_all(template(CHART, scenario, sets))


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    """The one object of that kind (and name); fails when there is none or several."""
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} objects named {name}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc, Doc]]:
    """(object, pod metadata, pod spec) for everything that runs containers."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            pod = doc["spec"]["template"]
            yield doc, pod["metadata"], pod["spec"]
        elif doc["kind"] == "Pod":
            yield doc, doc["metadata"], doc["spec"]


def containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}
