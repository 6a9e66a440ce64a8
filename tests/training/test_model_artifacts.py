"""The committed model registry: every file matches its sha256, and matches today's features."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cds_service.features import FEATURE_NAMES

ARTIFACTS = Path(__file__).resolve().parents[2] / "model_artifacts"
MANIFEST = ARTIFACTS / "manifest.json"

pytestmark = pytest.mark.skipif(not MANIFEST.exists(), reason="no trained model committed yet")


def manifest() -> dict[str, object]:
    loaded: dict[str, object] = json.loads(MANIFEST.read_text())
    return loaded


def test_files_match_their_hashes_and_stay_small() -> None:
    versions = manifest()["versions"]
    assert isinstance(versions, list) and versions
    for version in versions:
        folder = ARTIFACTS / version["version"]
        for name, digest in version["files"].items():
            data = (folder / name).read_bytes()
            assert hashlib.sha256(data).hexdigest() == digest, f"{version['version']}/{name}"
            assert len(data) < 5 * 1024 * 1024, f"{name} is over 5 MB"


def test_models_were_trained_on_todays_feature_definition() -> None:
    for version in manifest()["versions"]:  # type: ignore[attr-defined]
        assert tuple(version["features"]) == FEATURE_NAMES, version["version"]


def test_active_version_forms_agree_on_rows_with_missing_values() -> None:
    active = manifest()["active"]
    folder = ARTIFACTS / str(active)
    rng = np.random.default_rng(5)
    x = rng.normal(60, 40, size=(2000, len(FEATURE_NAMES))).astype(np.float32)
    x[rng.random(x.shape) < 0.6] = np.nan
    outputs = [
        ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])
        .run(None, {"features": x})[0]
        .reshape(-1)
        for name in ("model.onnx", "model-gemm.onnx")
    ]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-4)
    assert outputs[0].min() >= 0 and outputs[0].max() <= 1
