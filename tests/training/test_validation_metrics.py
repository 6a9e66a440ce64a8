"""The manifest's ``metrics.validation`` block: what promotion gates read about each version.

Every version must carry its figures on its own validation split (``python -m training
validation``), as finite floats the service's manifest model accepts, in ranges a real model on
real data can have; and the split those figures describe must be the one ``reference.json`` was
measured on (checked by the command, and re-run here when the slow tests are asked for).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cds_service.features import FEATURE_NAMES
from cds_service.inference.registry import read_manifest
from training.artifacts import (
    VALIDATION_KEYS,
    ValidationSplitMismatch,
    check_validation_split,
    missing_validation_keys,
    reference_statistics,
    validation_metrics,
)
from training.dataset import Dataset

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "model_artifacts"
DATA = ROOT.parent / "shared" / "data"
#: patients per PhysioNet archive (shared/data/README.md), to check the split's size
PATIENTS = {"sepsis-gbdt-A-1": 20_336, "sepsis-gbdt-AB-1": 40_336}


def versions() -> list[dict[str, Any]]:
    manifest: dict[str, Any] = json.loads((ARTIFACTS / "manifest.json").read_text())
    found: list[dict[str, Any]] = manifest["versions"]
    return found


def test_every_version_has_validation_figures_with_the_gate_keys() -> None:
    assert {v["version"] for v in versions()} >= set(PATIENTS)
    for entry in versions():
        figures = entry["metrics"]["validation"]
        assert missing_validation_keys(figures) == [], entry["version"]
        assert all(isinstance(v, float) and math.isfinite(v) for v in figures.values())
        assert "split_patients(seed " in entry["provenance"]["validation_split"]
    # The service reads metrics as dict[str, dict[str, float]]: the block must not break it.
    parsed = read_manifest(ARTIFACTS)
    assert all("validation" in v.metrics for v in parsed.versions)


@pytest.mark.parametrize("version", sorted(PATIENTS))
def test_validation_figures_are_in_sane_ranges(version: str) -> None:
    entry = next(v for v in versions() if v["version"] == version)
    f = entry["metrics"]["validation"]
    # 15 % of the training side's patients, rounded as split_patients rounds.
    assert f["patients"] == PATIENTS[version] - round(PATIENTS[version] * 0.85)
    assert 0.03 * f["patients"] < f["septic_patients"] < 0.15 * f["patients"]
    assert 8 * f["patients"] <= f["rows"] <= 336 * f["patients"]
    assert 0.75 < f["auroc"] < 0.95
    assert f["row_prevalence"] < f["auprc"] < 0.5
    assert 0.2 < f["normalized_utility"] < 0.7
    # Calibrated on these very patients: slope 1 and intercept 0 up to the fit's tolerance.
    assert f["calibration_slope"] == pytest.approx(1.0, abs=1e-6)
    assert f["calibration_intercept"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < f["brier"] < f["row_prevalence"]
    assert 10 < f["alerts_per_100_patient_days"] < 200
    assert 0.3 < f["sensitivity"] < 1 and 0 < f["ppv"] < 0.5
    assert f["threshold"] == entry["operating_points"]["utility_optimal"]
    assert f["auroc_ci_low"] < f["auroc"] < f["auroc_ci_high"]


def _cohort(seed: int, patients: int = 40, hours: int = 30) -> tuple[Dataset, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = patients * hours
    labels = np.zeros(rows, dtype=np.int8)
    for p in range(0, patients, 4):  # every fourth patient septic for the last 8 hours
        labels[(p + 1) * hours - 8 : (p + 1) * hours] = 1
    probabilities = np.clip(0.05 + 0.2 * labels + rng.normal(0, 0.1, rows), 0.001, 0.999)
    data = Dataset(
        features=rng.normal(size=(rows, len(FEATURE_NAMES))).astype(np.float32),
        labels=labels,
        boundaries=np.arange(0, rows + 1, hours, dtype=np.int64),
        patients=np.array([f"A/p{i:06d}" for i in range(patients)]),
        hospital=np.full(patients, "A"),
        age=np.full(patients, 60.0),
        sex=np.full(patients, "female"),
        unit=np.full(patients, "MICU"),
        implausible=0,
    )
    return data, probabilities


def test_the_split_check_accepts_the_same_split_and_refuses_another() -> None:
    data, p = _cohort(1)
    reference = reference_statistics(data, p, 0.2)
    check_validation_split(data, p, 0.2, reference, "v")  # the same split: no error
    with pytest.raises(ValidationSplitMismatch, match="alerts"):
        check_validation_split(data, p, 0.1, reference, "v")  # another alert level
    other, q = _cohort(2)
    with pytest.raises(ValidationSplitMismatch):
        check_validation_split(other, q, 0.2, reference, "v")  # other patients
    # Same alert count, shifted scores: caught by the score quantiles.
    with pytest.raises(ValidationSplitMismatch, match="quantiles"):
        check_validation_split(data, p, 0.2, reference | {"score_quantiles": [0.0] * 21}, "v")


def test_validation_metrics_leave_undefined_figures_out_instead_of_null() -> None:
    data, p = _cohort(3)
    figures = validation_metrics(data, p, 0.2)
    assert missing_validation_keys(figures) == []
    assert figures["septic_patients"] == 10 and figures["patients"] == 40
    no_septic = Dataset(**{**data.__dict__, "labels": np.zeros_like(data.labels)})
    figures = validation_metrics(no_septic, p, 0.2)
    assert "auroc" not in figures and "calibration_slope" not in figures
    assert set(missing_validation_keys(figures)) >= {"auroc", "auprc", "sensitivity"}
    assert all(math.isfinite(v) for v in figures.values())


@pytest.mark.skipif(not (DATA / "physionet2019").is_dir(), reason=f"no PhysioNet data at {DATA}")
def test_train_writes_the_block_the_command_reproduces(tmp_path: Path) -> None:
    """A small ``train`` (400 patients per hospital) writes metrics.validation for each version;
    ``validation`` on that registry rebuilds the same splits, passes the reference.json check and
    writes exactly the same figures: the train path and the command measure one thing."""
    out, cache = tmp_path / "registry", tmp_path / "cache"
    common = ["--out", str(out), "--cache", str(cache), "--data", str(DATA)]
    train = [sys.executable, "-m", "training", "train", "--limit", "400", "--folds", "2"]
    subprocess.run([*train, *common], cwd=ROOT, check=True, capture_output=True, timeout=300)
    trained = json.loads((out / "manifest.json").read_text())
    for entry in trained["versions"]:
        assert missing_validation_keys(entry["metrics"]["validation"]) == [], entry["version"]
        assert "of the patients of hospital" in entry["provenance"]["validation_split"]
    command = [sys.executable, "-m", "training", "validation", *common]
    done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    assert done.stdout.count("split reproduced") == 2
    assert json.loads((out / "manifest.json").read_text()) == trained
    # A registry whose reference.json was measured on other patients is refused, loudly.
    reference = out / "sepsis-gbdt-A-1" / "reference.json"
    changed = json.loads(reference.read_text())
    changed["alerts_per_100_patient_days"] *= 1.01
    reference.write_text(json.dumps(changed))
    failed = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode != 0 and "was not reproduced" in failed.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "physionet2019").is_dir(), reason=f"no PhysioNet data at {DATA}")
def test_the_command_reproduces_the_committed_figures(tmp_path: Path) -> None:
    """``python -m training validation`` on a copy of the registry: the split is rebuilt and
    checked against reference.json, and gives the committed figures. About 30 s with the feature
    cache in .cache/training, a minute more to build it."""
    from training.__main__ import validation  # noqa: PLC0415 - the CLI module, imported to run

    shutil.copy(ARTIFACTS / "manifest.json", tmp_path / "manifest.json")
    for version in PATIENTS:
        (tmp_path / version).mkdir()
        for name in ("booster.txt", "reference.json"):
            shutil.copy(ARTIFACTS / version / name, tmp_path / version / name)
    found = validation(DATA, tmp_path, ROOT / ".cache" / "training")
    committed = {v["version"]: v["metrics"]["validation"] for v in versions()}
    for version, figures in found.items():
        for key in VALIDATION_KEYS:
            assert figures[key] == pytest.approx(committed[version][key], rel=1e-9), (version, key)
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert [v["metrics"]["validation"] for v in written["versions"]] == [
        found[v["version"]] for v in written["versions"]
    ]
