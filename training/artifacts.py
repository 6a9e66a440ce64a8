"""Writing a trained version into ``model_artifacts/``: ONNX files, model card, manifest entry.

Layout: ``model_artifacts/<version>/{model.onnx, model-gemm.onnx, evaluation.json, card.md,
reference.json, reliability.png, curves.png}`` and one ``model_artifacts/manifest.json`` listing
every version with the sha256 of each file, the ordered feature list, calibration, operating
points and headline metrics.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.features import FEATURE_NAMES
from training import metrics
from training.dataset import Dataset
from training.gemm_onnx import export_gemm
from training.metrics import reliability_curve, save_reliability_plot
from training.onnx_export import export_tree_ensemble, save_model, session_for
from training.utility import cohort_utility_concat, utility_curve

OUTCOME = (
    "the probability that this adult ICU patient meets Sepsis-3 within about the next 6 hours "
    "(or already does)"
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: where the drift bins of a feature are cut (their distinct values): the shares between them are
#: counted exactly, so a point mass (a count of 0, a flag) gets its true share, which seven
#: quantiles alone cannot give
BIN_LEVELS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def exact_bins(present: npt.NDArray[np.float64], levels: Sequence[float]) -> dict[str, list[float]]:
    """Inner edges (distinct quantiles of ``present`` at ``levels``) and the exact share of
    ``present`` in each right-closed bin ``(-inf, e1], (e1, e2], ..., (ek, +inf)``."""
    edges = np.unique(np.quantile(present, levels))
    index = np.searchsorted(edges, present, side="left")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return {
        "edges": [float(e) for e in edges],
        "shares": [float(c) for c in counts / counts.sum()],
    }


def reference_statistics(
    data: Dataset, probabilities: npt.NDArray[np.float64], threshold: float
) -> dict[str, Any]:
    """Per-feature quantiles, missingness and exact bin shares, and the score distribution:
    drift monitoring's reference, measured on the validation patients."""
    features = data.features.astype(np.float64)
    quantiles = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    per_feature: dict[str, Any] = {}
    for j, name in enumerate(FEATURE_NAMES):
        column = features[:, j]
        present = column[~np.isnan(column)]
        per_feature[name] = {
            "missing": float(np.mean(np.isnan(column))),
            "quantiles": [float(q) for q in np.quantile(present, quantiles)]
            if present.size
            else None,
            "bins": exact_bins(present, BIN_LEVELS) if present.size else None,
        }
    hours = len(data.labels)
    alerts = int(
        np.sum(np.diff(np.concatenate([[0], (probabilities >= threshold).astype(int)])) == 1)
    )
    score_levels = np.linspace(0, 1, 21)
    return {
        "quantile_levels": list(quantiles),
        "features": per_feature,
        "score_quantiles": [float(q) for q in np.quantile(probabilities, score_levels)],
        "score_bins": exact_bins(probabilities, score_levels[1:-1].tolist()),
        "alerts_per_100_patient_days": alerts / (hours / 24) * 100 if hours else None,
    }


def onnx_agreement(
    booster: Any, folder: Path, rows: npt.NDArray[np.float32], single_rows: int = 500
) -> dict[str, dict[str, float]]:
    """Both ONNX forms against the booster on real rows (missing values included), at batch sizes
    1 (the first ``single_rows``: one ORT call each, slow), 7 and 1024; refuses a version that
    differs by more than 1e-4 (`python -m training verify` runs batch 1 on all 100k rows).
    ORT keeps thresholds in float32 and LightGBM in double: the counts of rows off by more than
    1e-6 say how often that matters."""
    expected = np.asarray(booster.predict(rows), dtype=np.float64)
    result: dict[str, dict[str, float]] = {}
    for name in ("model.onnx", "model-gemm.onnx"):
        # One intra-op thread: at batch 1-7 a thread pool only adds hand-over cost.
        session = session_for(folder / name, prefer_cuda=False, intra_op_threads=1)
        for batch in (1, 7, 1024):
            count = min(single_rows, len(rows)) if batch == 1 else len(rows)
            got = np.concatenate(
                [
                    session.run(None, {"features": rows[i : i + batch]})[0].reshape(-1)
                    for i in range(0, count, batch)
                ]
            ).astype(np.float64)
            diff = np.abs(got - expected[:count])
            result[f"{name}@{batch}"] = {
                "rows": float(count),
                "max_abs_difference": float(diff.max()),
                "rows_over_1e-6": float(np.sum(diff > 1e-6)),
            }
            if diff.max() > 1e-4:
                raise ValueError(f"{name} differs from the booster by {diff.max():.2e}")
    return result


def headline(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The figures a registry gate reads: per split, the model's main metrics."""
    keys = ("auroc", "auprc", "normalized_utility", "brier", "calibration_slope")
    result: dict[str, Any] = {}
    for split, report in evaluation["splits"].items():
        if split == "cv5":
            result[split] = report["mean"]
        else:
            result[split] = {key: report["model"].get(key) for key in keys}
            result[split]["alerts_per_100_patient_days"] = report["model"].get(
                "alerts_per_100_patient_days"
            )
    return result


#: What promotion gates read from ``metrics.validation``: each one must be a finite float.
VALIDATION_KEYS = (
    "auroc",
    "auprc",
    "normalized_utility",
    "calibration_slope",
    "calibration_intercept",
    "brier",
    "alerts_per_100_patient_days",
    "sensitivity",
    "ppv",
    "patients",
    "septic_patients",
    "rows",
)
#: ``pipeline.train_side`` holds out this share of a training side's patients.
VALIDATION_FRACTION = 0.15


class ValidationSplitMismatch(RuntimeError):
    """The rebuilt validation split is not the one the version's reference.json was measured on."""


def validation_metrics(
    valid: Dataset, probabilities: npt.NDArray[np.float64], threshold: float
) -> dict[str, float]:
    """A version's figures on its own validation patients at its alert level: every metric of
    ``metrics.summary`` that is defined, plus patient-bootstrap intervals of AUROC and utility.

    Flat floats only, because the registry's manifest model (``cds_service.inference.registry``)
    reads ``metrics`` as ``dict[str, dict[str, float]]``: an undefined metric (a split too small
    to have septic patients, as in the ``--limit`` test runs) is left out rather than written as
    null, and the gates report the key as missing."""
    labels, bounds = valid.labels, valid.boundaries
    result = {
        key: float(value)
        for key, value in metrics.summary(labels, probabilities, bounds, threshold).items()
        if value is not None
    }
    for name, metric in (
        ("auroc", lambda y, s, b: metrics.auroc(y, s)),
        (
            "normalized_utility",
            lambda y, s, b: cohort_utility_concat(y, s >= threshold, b).normalized,
        ),
    ):
        interval = metrics.bootstrap_ci(metric, labels, probabilities, bounds, n_resamples=100)
        if math.isfinite(interval.low) and math.isfinite(interval.high):
            result[f"{name}_ci_low"], result[f"{name}_ci_high"] = interval.low, interval.high
    return result


def missing_validation_keys(figures: dict[str, float]) -> list[str]:
    """The gate keys a validation block lacks (undefined on a small or one-class split)."""
    return [key for key in VALIDATION_KEYS if key not in figures]


def validation_split_text(hospitals: Sequence[str], seed: int, figures: dict[str, float]) -> str:
    """``provenance.validation_split``: which patients, how they were drawn, and why the figures
    measured on them flatter the model. ``figures`` is the block ``validation_metrics`` made."""
    side = f"hospital{'s' if len(hospitals) > 1 else ''} {' and '.join(hospitals)}"
    return (
        f"{VALIDATION_FRACTION * 100:.0f} % of the patients of {side} "
        f"({figures['patients']:,.0f} ICU stays, {figures['septic_patients']:,.0f} septic, "
        f"{figures['rows']:,.0f} patient-hours) held out by "
        f"training.pipeline.split_patients(seed {seed}); the training side's early stopping, "
        "Platt calibration and alert level were chosen on these same patients, so their figures "
        "are optimistic (calibration slope 1 and intercept 0 by construction) and the external "
        "splits (A->B, B->A) are the honest estimate"
    )


def check_validation_split(
    valid: Dataset,
    probabilities: npt.NDArray[np.float64],
    threshold: float,
    reference: dict[str, Any],
    version: str,
) -> None:
    """Refuse a rebuilt split whose alert rate (and score distribution) is not the one recorded
    in the version's ``reference.json``, which was measured on the validation split at training.

    The rate is recomputed with ``reference_statistics`` itself, the code that wrote the file. Its
    alerts are rising edges over the concatenated cohort (a stay that opens in alert right after
    one that closed in alert is not counted), while ``metrics.operating_point`` resets at every
    stay: 53.25 against 54.13 per 100 patient-days for sepsis-gbdt-A-1, so comparing one
    definition with the other would report a mismatch that is not one."""
    rebuilt = reference_statistics(valid, probabilities, threshold)
    recorded = reference.get("alerts_per_100_patient_days")
    measured = rebuilt["alerts_per_100_patient_days"]
    if recorded is None or measured is None or not math.isclose(measured, recorded, rel_tol=1e-9):
        raise ValidationSplitMismatch(
            f"{version}: the rebuilt validation split alerts {measured} per 100 patient-days, "
            f"reference.json says {recorded}: the split (data, feature code or seed) was not "
            "reproduced"
        )
    scores = np.asarray(reference.get("score_quantiles") or [], dtype=np.float64)
    rebuilt_scores = np.asarray(rebuilt["score_quantiles"], dtype=np.float64)
    if scores.shape != rebuilt_scores.shape or not np.allclose(scores, rebuilt_scores, atol=1e-9):
        raise ValidationSplitMismatch(
            f"{version}: the rebuilt validation split's score quantiles differ from reference.json"
        )


def record_validation(
    root: Path, version: str, validation: dict[str, float], split_text: str
) -> dict[str, Any]:
    """Write ``metrics.validation`` and ``provenance.validation_split`` of one manifest entry,
    leaving every other field (and every hashed file) as it is."""
    path = root / "manifest.json"
    manifest: dict[str, Any] = json.loads(path.read_text())
    entry = next((v for v in manifest["versions"] if v["version"] == version), None)
    if entry is None:
        raise KeyError(f"{version} is not in {path}")
    entry.setdefault("metrics", {})["validation"] = validation
    entry.setdefault("provenance", {})["validation_split"] = split_text
    path.write_text(json.dumps(manifest, indent=2, allow_nan=False))
    return manifest


def save_curves(trained: Any, path: Path, version: str) -> Path:
    """ROC curve and utility against threshold on the version's held-out patients."""
    import matplotlib  # noqa: PLC0415 - only the training extra has it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from sklearn.metrics import roc_curve  # noqa: PLC0415

    labels, p = trained.valid.labels, trained.valid_probabilities
    fpr, tpr, _ = roc_curve(labels, p)
    grid = np.quantile(p, np.linspace(0.5, 0.999, 60))
    thresholds, utility = utility_curve(
        p, labels, boundaries=trained.valid.boundaries, thresholds=grid
    )
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot(fpr, tpr)
    left.plot([0, 1], [0, 1], "--", color="grey")
    left.set(xlabel="1 - specificity (hours)", ylabel="sensitivity (hours)", title="ROC")
    right.plot(thresholds, utility)
    right.axvline(trained.threshold, color="grey", linestyle="--", label="alert level")
    right.set(xlabel="threshold (calibrated risk)", ylabel="normalised utility", title="Utility")
    right.set_xscale("log")
    right.legend()
    figure.suptitle(f"{version}: held-out patients of the training side")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_version(
    root: Path,
    version: str,
    *,
    trained: Any,
    evaluation: dict[str, Any],
    reference: dict[str, Any],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Export both ONNX forms and the documents; return the manifest entry.

    The model card quotes the entry, so it is added afterwards with ``add_card``."""
    folder = root / version
    folder.mkdir(parents=True, exist_ok=True)
    booster = trained.fitted.booster
    n = len(FEATURE_NAMES)
    files = {
        "model.onnx": save_model(export_tree_ensemble(booster, n), folder / "model.onnx"),
        "model-gemm.onnx": save_model(export_gemm(booster, n), folder / "model-gemm.onnx"),
    }
    booster.save_model(str(folder / "booster.txt"))
    files["booster.txt"] = _sha256(folder / "booster.txt")
    agreement = onnx_agreement(booster, folder, trained.valid.features[:100_000])
    curve = reliability_curve(trained.valid.labels, trained.valid_probabilities)
    plot = save_reliability_plot(curve, folder / "reliability.png", title=f"{version}: held-out")
    files["reliability.png"] = _sha256(plot)
    files["curves.png"] = _sha256(save_curves(trained, folder / "curves.png", version))
    for name, content in (
        ("evaluation.json", json.dumps(evaluation, indent=2, allow_nan=False)),
        ("reference.json", json.dumps(reference, indent=2, allow_nan=False)),
    ):
        (folder / name).write_text(content)
        files[name] = _sha256(folder / name)
    return {
        "version": version,
        "outcome": OUTCOME,
        "files": files,
        "features": list(FEATURE_NAMES),
        "input": {"name": "features", "dtype": "float32", "missing": "NaN"},
        "calibration": {
            "method": "platt",
            "intercept": trained.calibration.intercept,
            "slope": trained.calibration.slope,
        },
        "operating_points": {
            "utility_optimal": trained.threshold,
            "high_sensitivity": trained.high_sensitivity_threshold,
        },
        "trees": trained.fitted.best_iteration,
        "onnx_agreement": agreement,
        "metrics": headline(evaluation)
        | {
            "validation": validation_metrics(
                trained.valid, trained.valid_probabilities, trained.threshold
            )
        },
        "provenance": provenance,
    }


def verify(root: Path, rows: npt.NDArray[np.float32]) -> dict[str, Any]:
    """Re-check every version's ONNX files against its booster on ``rows``, all batch sizes on
    every row, and record the result in the manifest."""
    import lightgbm as lgb  # noqa: PLC0415 - only the training extra has it

    path = root / "manifest.json"
    manifest: dict[str, Any] = json.loads(path.read_text())
    for entry in manifest["versions"]:
        folder = root / entry["version"]
        booster = lgb.Booster(model_file=str(folder / "booster.txt"))
        entry["onnx_agreement"] = onnx_agreement(booster, folder, rows, single_rows=len(rows))
    path.write_text(json.dumps(manifest, indent=2, allow_nan=False))
    return manifest


def add_card(root: Path, entry: dict[str, Any], card: str) -> None:
    """Write a version's model card and record its hash in the manifest entry."""
    path = root / entry["version"] / "card.md"
    path.write_text(card)
    entry["files"]["card.md"] = _sha256(path)


def update_manifest(root: Path, entry: dict[str, Any], active: bool) -> None:
    path = root / "manifest.json"
    manifest: dict[str, Any] = (
        json.loads(path.read_text()) if path.exists() else {"versions": [], "active": None}
    )
    manifest["versions"] = [v for v in manifest["versions"] if v["version"] != entry["version"]]
    manifest["versions"].append(entry)
    if active:
        manifest["active"] = entry["version"]
    path.write_text(json.dumps(manifest, indent=2, allow_nan=False))
