"""Loading the active model: sha256 checks, the feature definition, keeping the previous model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from cds_service.features import FEATURE_NAMES
from cds_service.inference.registry import (
    ModelRefused,
    load_version,
    read_manifest,
    verified_card,
)
from cds_service.inference.sessions import cuda_available, session_for, used_providers
from cds_service.lifecycle.follower import ModelHolder
from cds_service.metrics import Metrics

from support import LiveApi, patient_view_request

ROOT = Path(__file__).resolve().parents[2] / "model_artifacts"


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A copy of the registry the test may break."""
    copy = tmp_path / "registry"
    shutil.copytree(ROOT, copy)
    return copy


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _write_manifest(root: Path, manifest: dict) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_active_version_loads_on_cpu_with_its_figures() -> None:
    active = read_manifest(ROOT).active
    assert active is not None
    model = load_version(ROOT, active, "cpu")
    assert model.version == active
    assert (model.form, model.provider) == ("tree-ensemble", "CPUExecutionProvider")
    assert model.reference_medians.shape == (len(FEATURE_NAMES),)
    assert model.held_out["split"] in ("A->B", "B->A")
    assert 0 < float(model.held_out["sensitivity"]) < 1
    assert model.card_markdown.startswith("# Sepsis early warning")


def test_predict_applies_the_platt_calibration() -> None:
    active = read_manifest(ROOT).active
    assert active is not None
    model = load_version(ROOT, active, "cpu")
    rows = np.tile(model.reference_medians, (3, 1))
    rows[1] = np.nan
    raw = model.session.run(None, {"features": rows})[0].astype(np.float64)
    c = model.entry.calibration
    expected = 1 / (1 + np.exp(-(c.intercept + c.slope * np.log(raw / (1 - raw)))))
    np.testing.assert_allclose(model.predict(rows), expected, rtol=1e-9)
    assert not np.allclose(model.predict(rows), raw)


def test_a_tampered_active_version_is_refused_and_nothing_else_is_shown(registry: Path) -> None:
    """Fail closed: the model that ran before is not the version now named active (after a
    rollback it would be the withdrawn one), so no model serves until the named one loads."""
    holder = ModelHolder(registry, "cpu", Metrics())
    first = holder.load_active()
    assert first is not None
    manifest = _manifest(registry)
    other = next(v["version"] for v in manifest["versions"] if v["version"] != first.version)
    onnx_path = registry / other / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:-1] + b"\x00")
    manifest["active"] = other
    _write_manifest(registry, manifest)
    assert holder.load_active() is None
    assert holder.last_refusal == "sha256-mismatch"
    assert holder.current is None
    manifest["active"] = first.version  # the named version loads again: it serves again
    _write_manifest(registry, manifest)
    again = holder.load_active()
    assert again is not None and again.version == first.version


def test_a_model_trained_on_other_features_is_refused(registry: Path) -> None:
    manifest = _manifest(registry)
    active = next(v for v in manifest["versions"] if v["version"] == manifest["active"])
    active["features"] = list(reversed(active["features"]))
    _write_manifest(registry, manifest)
    with pytest.raises(ModelRefused) as refused:
        load_version(registry, manifest["active"], "cpu")
    assert refused.value.reason == "feature-mismatch"


def test_no_manifest_means_no_model(tmp_path: Path) -> None:
    holder = ModelHolder(tmp_path, "auto", Metrics())
    assert holder.load_active() is None
    assert holder.last_refusal == "no-manifest"


def _gpu_session_loads() -> bool:
    if not cuda_available():
        return False
    gemm = ROOT / "sepsis-gbdt-AB-1" / "model-gemm.onnx"
    return used_providers(session_for(gemm, prefer_cuda=True))[0] == "CUDAExecutionProvider"


@pytest.mark.skipif(_gpu_session_loads(), reason="a CUDA session loads here: 'cuda' would load")
def test_requiring_cuda_without_a_gpu_is_refused() -> None:
    active = read_manifest(ROOT).active
    assert active is not None
    with pytest.raises(ModelRefused) as refused:
        load_version(ROOT, active, "cuda")
    assert refused.value.reason == "no-cuda"


def test_a_changed_model_card_is_not_served(registry: Path) -> None:
    version = _manifest(registry)["active"]
    assert "model card" in verified_card(registry, version)
    (registry / version / "card.md").write_text("# edited after training\n")
    with pytest.raises(ModelRefused):
        verified_card(registry, version)
    with pytest.raises(ModelRefused):
        verified_card(registry, "no-such-version")


@pytest.mark.integration
def test_without_a_model_the_api_is_not_ready_and_answers_without_sepsis_cards(
    start_api: Callable[..., LiveApi], es_key, http: httpx.Client, tmp_path: Path
) -> None:
    api = start_api(sepsis={"model_root": tmp_path})
    ready = http.get(f"{api.url}/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["model"] == "not-loaded: no-manifest"
    url = f"{api.url}/cds-services/sepsis-patient-view"
    answer = http.post(
        url,
        json=patient_view_request(),
        headers={"Authorization": f"Bearer {es_key.token(url)}"},
    )
    assert answer.status_code == 200
    assert answer.json() == {"cards": []}
    metrics = http.get(f"{api.url}/metrics").text
    assert 'cds_score_not_shown_total{reason="no-model",score="sepsis"} 1.0' in metrics


@pytest.mark.integration
def test_model_card_route(api: LiveApi, http: httpx.Client) -> None:
    version = read_manifest(ROOT).active
    response = http.get(f"{api.url}/model-cards/{version}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    assert f"version {version}" in response.text
    missing = http.get(f"{api.url}/model-cards/not-a-version")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
