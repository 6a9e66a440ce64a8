"""The model registry on disk (``model_artifacts/``) and loading one version for scoring.

A version is used only when every file the service reads (the ONNX form it will run, the model
card, the reference statistics) has the sha256 the manifest records, and when its feature list is
the one ``cds_service.features`` computes: a model trained on another feature definition would
score silently wrong inputs. A refused version is never run in its place by another one
(``cds_service.lifecycle.follower``: fail closed).

The form follows the device: the GEMM form on the CUDA provider when a GPU session loads (ORT's
TreeEnsemble operator has no CUDA kernel), the tree-ensemble form on the CPU otherwise.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cds_service.drift.statistics import Reference
from cds_service.features import FEATURE_NAMES
from cds_service.inference.sessions import cuda_available, session_for, used_providers

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
Form = Literal["tree-ensemble", "gemm"]
_FILES: dict[Form, str] = {"tree-ensemble": "model.onnx", "gemm": "model-gemm.onnx"}
#: batch sizes run once at load, so that the first hook call pays no allocation or kernel set-up
WARMUP_BATCHES = (1, 64)


class Calibration(BaseModel):
    model_config = ConfigDict(extra="ignore")
    method: Literal["platt"]
    intercept: float
    slope: float


class OperatingPoints(BaseModel):
    model_config = ConfigDict(extra="ignore")
    utility_optimal: float = Field(gt=0, lt=1)
    high_sensitivity: float = Field(gt=0, lt=1)


class ModelInput(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    dtype: Literal["float32"]
    missing: Literal["NaN"]


class ManifestVersion(BaseModel):
    """One version as ``training.artifacts.write_version`` records it (fields the service uses)."""

    model_config = ConfigDict(extra="ignore")
    version: str
    outcome: str
    files: dict[str, str]
    features: list[str]
    input: ModelInput
    calibration: Calibration
    operating_points: OperatingPoints
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    versions: list[ManifestVersion]
    active: str | None


class ModelRefused(Exception):
    """A version that must not be used; the message says why (never patient data)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        #: a fixed label for the metric
        self.reason = reason


@dataclass(frozen=True)
class LoadedModel:
    """One verified version with its ORT session: everything scoring needs, immutable."""

    entry: ManifestVersion
    folder: Path
    session: onnxruntime.InferenceSession
    form: Form
    provider: str
    card_markdown: str
    #: per feature, the validation population's median (NaN where always missing)
    reference_medians: npt.NDArray[np.float32]
    #: held-out figures at the alert level from the version's evaluation, for the card
    held_out: dict[str, float | str]
    #: the validation population's binned statistics, what live drift is measured against
    drift_reference: Reference

    @property
    def version(self) -> str:
        return self.entry.version

    def predict(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Calibrated probabilities of ``rows`` [N, F] (NaN = missing). Blocking: run off-loop."""
        raw = self.session.run(None, {self.entry.input.name: rows})[0]
        p = np.clip(np.asarray(raw, dtype=np.float64).reshape(-1), 1e-7, 1 - 1e-7)
        c = self.entry.calibration
        z = c.intercept + c.slope * np.log(p / (1 - p))
        calibrated: npt.NDArray[np.float64] = 1 / (1 + np.exp(-z))
        return calibrated


def read_manifest(root: Path) -> Manifest:
    try:
        return Manifest.model_validate_json((root / "manifest.json").read_bytes())
    except FileNotFoundError as exc:
        raise ModelRefused("no-manifest", f"no manifest.json in {root}") from exc
    except ValidationError as exc:
        raise ModelRefused("bad-manifest", f"manifest.json does not validate: {exc}") from exc


def _verified_bytes(folder: Path, entry: ManifestVersion, name: str) -> bytes:
    expected = entry.files.get(name)
    if expected is None:
        raise ModelRefused("file-not-listed", f"{entry.version}: {name} not in the manifest")
    try:
        data = (folder / name).read_bytes()
    except FileNotFoundError as exc:
        raise ModelRefused("file-missing", f"{entry.version}: {name} is missing") from exc
    if hashlib.sha256(data).hexdigest() != expected:
        raise ModelRefused("sha256-mismatch", f"{entry.version}: {name} does not match its sha256")
    return data


def _medians(reference: dict[str, Any]) -> npt.NDArray[np.float32]:
    levels: list[float] = reference["quantile_levels"]
    middle = levels.index(0.5)
    features: dict[str, Any] = reference["features"]
    values = [
        np.nan if features[name]["quantiles"] is None else features[name]["quantiles"][middle]
        for name in FEATURE_NAMES
    ]
    return np.asarray(values, dtype=np.float32)


def _held_out(evaluation: dict[str, Any]) -> dict[str, float | str]:
    """The external split with the lower sensitivity at the alert level: the honest figure."""
    splits = evaluation.get("splits", {})
    external = [
        (name, split["model"])
        for name, split in splits.items()
        if "->" in name and "model" in split
    ]
    if not external:
        return {}
    name, model = min(external, key=lambda item: float(item[1]["sensitivity"]))
    return {
        "split": name,
        "sensitivity": float(model["sensitivity"]),
        "ppv": float(model["ppv"]),
        "alerts_per_100_patient_days": float(model["alerts_per_100_patient_days"]),
    }


def find_version(manifest: Manifest, version: str) -> ManifestVersion:
    entry = next((v for v in manifest.versions if v.version == version), None)
    if entry is None:
        raise ModelRefused("unknown-version", f"{version} is not in the manifest")
    return entry


def load_version(
    root: Path, version: str, device: Device, manifest: Manifest | None = None
) -> LoadedModel:
    """Verify and load ``version`` (of ``manifest`` when the caller has read it already);
    raises ``ModelRefused`` with the reason otherwise."""
    entry = find_version(manifest or read_manifest(root), version)
    if tuple(entry.features) != FEATURE_NAMES:
        raise ModelRefused(
            "feature-mismatch", f"{version} was trained on another feature definition"
        )
    folder = root / version
    card = _verified_bytes(folder, entry, "card.md").decode()
    reference = orjson.loads(_verified_bytes(folder, entry, "reference.json"))
    evaluation = orjson.loads(_verified_bytes(folder, entry, "evaluation.json"))
    form: Form = "tree-ensemble"
    session: onnxruntime.InferenceSession | None = None
    provider = "CPUExecutionProvider"
    if device != "cpu" and cuda_available():
        gemm = _verified_bytes(folder, entry, _FILES["gemm"])
        session = session_for(gemm, prefer_cuda=True, intra_op_threads=1)
        provider = used_providers(session)[0]
        if provider == "CUDAExecutionProvider":
            form = "gemm"
        else:
            session = None
    if session is None:
        if device == "cuda":
            raise ModelRefused("no-cuda", f"{version}: CUDA required but no GPU session loads")
        session = session_for(
            _verified_bytes(folder, entry, _FILES["tree-ensemble"]),
            prefer_cuda=False,
            intra_op_threads=1,
        )
        provider = used_providers(session)[0]
    loaded = LoadedModel(
        entry=entry,
        folder=folder,
        session=session,
        form=form,
        provider=provider,
        card_markdown=card,
        reference_medians=_medians(reference),
        held_out=_held_out(evaluation),
        drift_reference=Reference.from_json(reference, FEATURE_NAMES),
    )
    warm_up(loaded)
    return loaded


def verified_card(root: Path, version: str) -> str:
    """A version's model card, if the manifest lists the version and the file matches its hash."""
    entry = find_version(read_manifest(root), version)
    return _verified_bytes(root / version, entry, "card.md").decode()


def verified_reference(root: Path, version: str, manifest: Manifest | None = None) -> Reference:
    """A version's drift reference (binned), without loading its ONNX session."""
    entry = find_version(manifest or read_manifest(root), version)
    reference = orjson.loads(_verified_bytes(root / version, entry, "reference.json"))
    return Reference.from_json(reference, FEATURE_NAMES)


def warm_up(model: LoadedModel) -> None:
    """Score NaN rows (every feature missing) and median rows at the usual batch sizes."""
    for n in WARMUP_BATCHES:
        rows = np.tile(model.reference_medians, (n, 1))
        rows[::2] = np.nan
        result = model.predict(rows)
        if result.shape != (n,) or not np.all(np.isfinite(result)):
            raise ModelRefused("warm-up-failed", f"{model.version}: warm-up gave no valid risks")
