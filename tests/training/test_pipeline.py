"""The training pipeline end to end on a small subset: runs, writes artifacts, ONNX = booster."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"

pytestmark = pytest.mark.skipif(
    not (DATA / "physionet2019").is_dir(), reason=f"no PhysioNet data under {DATA}"
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts")
    cache = tmp_path_factory.mktemp("cache")
    command = [
        sys.executable, "-m", "training", "train",
        "--limit", "150", "--folds", "2", "--out", str(out), "--cache", str(cache),
    ]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=900)
    return out


def test_two_versions_with_files_and_hashes(artifacts: Path) -> None:
    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert manifest["active"] == "sepsis-gbdt-AB-1"
    assert [v["version"] for v in manifest["versions"]] == ["sepsis-gbdt-A-1", "sepsis-gbdt-AB-1"]
    for version in manifest["versions"]:
        folder = artifacts / version["version"]
        for name, digest in version["files"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
        assert 0 < version["operating_points"]["utility_optimal"] < 1
        assert len(version["features"]) > 100
    card = (artifacts / "sepsis-gbdt-AB-1" / "card.md").read_text()
    assert "within about the next 6 hours" in card and "| A->B" in card


def test_metrics_in_plausible_ranges(artifacts: Path) -> None:
    report = json.loads((artifacts / "evaluation.json").read_text())
    for split in ("A->B", "B->A"):
        model = report["splits"][split]["model"]
        assert 0.4 < model["auroc"] <= 1.0
        assert 0 < model["auprc"] <= 1.0
        assert model["normalized_utility"] is not None and model["normalized_utility"] <= 1
        assert set(report["splits"][split]["baselines"]) == {
            "qSOFA (partial: no mentation)",
            "SIRS",
            "NEWS2 (partial: 5 of 7 parameters)",
            "SOFA (partial: coagulation, liver, renal, MAP)",
        }
    assert len(report["splits"]["cv5"]["folds"]) == 2


def test_both_onnx_forms_give_the_same_risks(artifacts: Path) -> None:
    folder = artifacts / "sepsis-gbdt-AB-1"
    manifest = json.loads((artifacts / "manifest.json").read_text())
    n = len(manifest["versions"][-1]["features"])
    rng = np.random.default_rng(1)
    x = rng.normal(50, 30, size=(500, n)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] = np.nan
    risks = []
    for name in ("model.onnx", "model-gemm.onnx"):
        session = ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        risks.append(session.run(None, {"features": x})[0].reshape(-1))
    np.testing.assert_allclose(risks[0], risks[1], atol=1e-4)
