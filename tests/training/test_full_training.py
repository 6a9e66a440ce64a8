"""Full-data training, opt in: `.venv/bin/pytest -m slow tests/training/test_full_training.py`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "data" / "physionet2019").is_dir(), reason="no PhysioNet data"
)
def test_full_evaluation_reaches_the_reported_figures(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "training", "evaluate", "--out", str(tmp_path)]
    subprocess.run(command, cwd=ROOT, check=True, timeout=3 * 3600)
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["splits"]["cv5"]["mean"]["auroc"] > 0.80
    for split in ("A->B", "B->A"):
        assert report["splits"][split]["model"]["auroc"] > 0.75
