"""A lint of the Dockerfile and .dockerignore (no Docker daemon needed), and what the chart assumes
of the image: its user, its model registry and its commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from chart_render import CHART, ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _build_args() -> dict[str, str]:
    """Global ARG defaults (those before the first FROM)."""
    args = {}
    for word, rest in _instructions():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def test_every_base_image_is_pinned_and_a_cuda_base_can_be_chosen() -> None:
    args = _build_args()
    assert "BASE_IMAGE" in args
    stages = {}
    for stage in _stages():
        source = stage[0][1].split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], source[0])
        if image in stages:  # a stage built earlier in this file
            continue
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag and "/" not in tag and tag != "latest", f"{image} is not pinned"
        if len(source) == 3 and source[1].upper() == "AS":
            stages[source[2]] = image
    assert args["BASE_IMAGE"].startswith("python:3.11")
    assert "slim" in args["BASE_IMAGE"]


def test_the_runtime_runs_as_the_numeric_user_the_chart_expects() -> None:
    runtime = _stages()[-1]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit()
    assert (
        int(uid)
        == values["podSecurityContext"]["runAsUser"]
        == values["securityContext"]["runAsUser"]
    )
    assert int(gid) == values["podSecurityContext"]["runAsGroup"]


def test_the_image_is_multi_stage_with_a_venv_copied_from_the_builder() -> None:
    stages = _stages()
    assert len(stages) >= 3
    runtime = stages[-1]
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert any(c.startswith("--from=builder /opt/venv") for c in copies)
    # No compilers or build tools reach the runtime: nothing is pip-installed there.
    assert not any("pip install" in rest for word, rest in runtime if word == "RUN")


def test_the_models_are_baked_in_where_the_chart_points_the_settings() -> None:
    runtime = _stages()[-1]
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert f"CDS_SEPSIS__MODEL_ROOT={values['models']['imagePath']}" in env
    assert f"model_artifacts {values['models']['imagePath']}" in " ".join(
        rest for word, rest in runtime if word == "COPY"
    )
    assert "CDS_HOST=0.0.0.0" in env


def test_the_default_command_is_the_api_the_chart_starts() -> None:
    (cmd,) = [rest for word, rest in _stages()[-1] if word == "CMD"]
    assert yaml.safe_load(cmd) == ["cds-service", "serve"]
    assert not [word for word, _ in _instructions() if word == "ADD"], "COPY, never ADD"


def test_the_build_context_is_an_allow_list_without_keys_or_caches() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert not included & {".dev", ".venv", ".git", ".cache", "tests", "training", ".env"}
    copied = {
        source
        for word, rest in _instructions()
        if word == "COPY" and not rest.startswith("--from")
        for source in shlex.split(rest)[:-1]
    }
    # Every path the Dockerfile copies from the context is in the allow-list.
    for path in copied:
        assert path in included or Path(path).name in included, path
