"""Fixtures of the chart tests: each scenario of helm/sepsis-cds/ci rendered, and NOTES.txt."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
from chart_render import CHART, SCENARIOS, Doc, load_all, render, template


@pytest.fixture(params=SCENARIOS)
def scenario(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rendered(scenario: str) -> list[Doc]:
    return render(scenario)


@pytest.fixture(scope="session")
def notes(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """NOTES.txt as `helm install` would print it: helm template does not render it, so a copy of
    the chart includes it into a ConfigMap."""
    chart = tmp_path_factory.mktemp("chart") / "sepsis-cds"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '    {{- include (print .Template.BasePath "/NOTES.txt") . | nindent 4 }}\n'
    )

    def read(scenario: str) -> str:
        docs = load_all(template(chart, scenario, ()))
        return str(next(d for d in docs if d and d["metadata"]["name"] == "notes")["data"]["notes"])

    return read
