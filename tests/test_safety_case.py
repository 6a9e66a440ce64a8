"""The safety case's hazard log points at real tests, and its runbook at every alert."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "docs" / "safety-case.md"
RULES = ROOT / "helm" / "sepsis-cds" / "templates" / "prometheusrule.yaml"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _hazard_rows() -> list[str]:
    return [line for line in CASE.read_text().splitlines() if re.match(r"\| H\d+ \|", line)]


def test_every_hazard_names_a_mitigation_and_a_test() -> None:
    rows = _hazard_rows()
    assert len(rows) >= 15
    ids = [row.split("|")[1].strip() for row in rows]
    assert ids == [f"H{i}" for i in range(1, len(rows) + 1)]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 6, row[:40]
        assert all(cells[1:4]), row[:40]  # hazard, cause, mitigation
        assert TEST_REF.search(cells[4]), f"{cells[0]} names no test"


def test_every_named_test_exists() -> None:
    refs = TEST_REF.findall(CASE.read_text())
    assert refs
    for path, name in refs:
        source = (ROOT / path).read_text()
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"


def test_every_runbook_section_an_alert_names_is_in_the_case() -> None:
    named = set(re.findall(r"runbook: ([a-z ]+)\)", RULES.read_text()))
    assert len(named) >= 6
    headings = {h.lower() for h in re.findall(r"^### (.+)$", CASE.read_text(), re.M)}
    assert named <= headings, named - headings
