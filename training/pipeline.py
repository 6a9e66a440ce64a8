"""`make train`: features (cached) → splits → fits → calibration → evaluation → artifacts.

Splits (patient level throughout; thresholds are always chosen on training-side patients):

* ``cv5``: 5-fold cross-validation on A+B, out-of-fold predictions pooled;
* ``A->B`` and ``B->A``: trained on one hospital, evaluated on the other;
* the shipped versions: ``A`` (hospital A alone: the previous version, and the evidence for
  cross-hospital behaviour) and ``A+B`` (active).

Inside every training side, 15 % of its patients are held out for early stopping, calibration and
the utility-maximising threshold, so no number is tuned on the patients it is reported on.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

import training.fit as fit_module
from cds_service.features import FEATURE_NAMES
from training import metrics
from training.baselines import BASELINES, baseline_scores
from training.dataset import Dataset, concatenate, definition_hash, load_or_build
from training.fit import Fitted, PlattCalibration, calibrate, fit, split_patients
from training.progress import Progress
from training.utility import best_threshold, cohort_utility_concat

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Trained:
    fitted: Fitted
    calibration: PlattCalibration
    threshold: float
    high_sensitivity_threshold: float
    seconds: float
    #: the held-out patients of the training side, with their calibrated probabilities
    valid: Dataset
    valid_probabilities: Floats


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def predict(trained: Fitted, data: Dataset) -> Floats:
    raw: Floats = np.asarray(trained.booster.predict(data.features), dtype=np.float64)
    return raw


def train_side(data: Dataset, seed: int) -> Trained:
    """Fit on 85 % of the patients; stop, calibrate and choose thresholds on the other 15 %."""
    started = time.perf_counter()
    rest, held = split_patients(data.n_patients, 0.15, seed)
    train, valid = data.subset(rest), data.subset(held)
    fitted = fit(train, valid)
    raw_valid = predict(fitted, valid)
    platt = calibrate(raw_valid, valid.labels)
    p_valid = platt.apply(raw_valid)
    choice = best_threshold(p_valid, valid.labels, boundaries=valid.boundaries)
    # A second operating point for units that prefer sensitivity: 80 % of septic patients'
    # positive hours flagged (sensitivity chosen by us, reported with its PPV and alert rate).
    positives = np.sort(p_valid[valid.labels == 1])
    sensitive = float(positives[int(0.2 * len(positives))]) if len(positives) else choice.threshold
    return Trained(
        fitted, platt, choice.threshold, sensitive, time.perf_counter() - started, valid, p_valid
    )


def _results_folder(cache: Path, limit: int | None, folds: int) -> Path:
    """Where finished steps are kept; keyed by the code that produced them."""
    digest = hashlib.sha256(definition_hash().encode())
    for module in (fit_module, sys.modules[__name__]):
        digest.update(Path(str(module.__file__)).read_bytes())
    return cache / "results" / f"{digest.hexdigest()[:16]}-{limit or 'all'}-{folds}"


def resumable_side(data: Dataset, seed: int, folder: Path) -> Trained:
    """``train_side``, or the same side reloaded from ``folder`` when a run already finished it."""
    booster_path, info_path = folder / "booster.txt", folder / "side.json"
    if booster_path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        fitted = Fitted(lgb.Booster(model_file=str(booster_path)), info["best_iteration"])
        platt = PlattCalibration(info["intercept"], info["slope"])
        valid = data.subset(split_patients(data.n_patients, 0.15, seed)[1])
        return Trained(
            fitted,
            platt,
            info["threshold"],
            info["high_sensitivity_threshold"],
            info["seconds"],
            valid,
            platt.apply(predict(fitted, valid)),
        )
    trained = train_side(data, seed)
    folder.mkdir(parents=True, exist_ok=True)
    trained.fitted.booster.save_model(str(booster_path))
    info = {
        "best_iteration": trained.fitted.best_iteration,
        "intercept": trained.calibration.intercept,
        "slope": trained.calibration.slope,
        "threshold": trained.threshold,
        "high_sensitivity_threshold": trained.high_sensitivity_threshold,
        "seconds": trained.seconds,
    }
    info_path.write_text(json.dumps(info))
    return trained


def resumable_result(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if path.exists():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, allow_nan=False))
    return dict(result)


def evaluate(
    name: str, trained: Trained, test: Dataset, with_subgroups: bool = True
) -> dict[str, Any]:
    p = trained.calibration.apply(predict(trained.fitted, test))
    result: dict[str, Any] = {
        "split": name,
        "trees": trained.fitted.best_iteration,
        "fit_seconds": round(trained.seconds, 1),
        "threshold": trained.threshold,
        "model": metrics.summary(test.labels, p, test.boundaries, trained.threshold),
        "model_high_sensitivity": metrics.summary(
            test.labels, p, test.boundaries, trained.high_sensitivity_threshold
        ),
        "auroc_ci": metrics.to_dict(
            metrics.bootstrap_ci(
                lambda y, s, b: metrics.auroc(y, s), test.labels, p, test.boundaries, n_resamples=50
            )
        ),
        "utility_ci": metrics.to_dict(
            metrics.bootstrap_ci(
                lambda y, s, b: cohort_utility_concat(y, s >= trained.threshold, b).normalized,
                test.labels,
                p,
                test.boundaries,
                n_resamples=50,
            )
        ),
        "baselines": {
            baseline.name: metrics.summary(
                test.labels, baseline_scores(baseline, test), test.boundaries, baseline.cut
            )
            for baseline in BASELINES
        },
    }
    if with_subgroups:
        bands = np.select(
            [test.age < 45, test.age < 65, test.age < 80], ["18-44", "45-64", "65-79"], "80+"
        )
        groups = {"age": bands, "sex": test.sex, "unit": test.unit, "hospital": test.hospital}
        result["subgroups"] = {
            kind: metrics.subgroup_metrics(
                test.labels, p, test.boundaries, labels, threshold=trained.threshold
            )
            for kind, labels in groups.items()
        }
    _log(
        f"{name}: AUROC {result['model']['auroc']:.3f}, "
        f"utility {result['model']['normalized_utility']:.3f}, "
        f"trees {trained.fitted.best_iteration}"
    )
    return result


def cross_validate(data: Dataset, folds: int, results: Path) -> dict[str, Any]:
    order = np.random.default_rng(7).permutation(data.n_patients)
    fold_of = np.empty(data.n_patients, dtype=np.int64)
    fold_of[order] = np.arange(data.n_patients) % folds
    per_fold = []
    progress = Progress("cross-validation", folds, "folds")
    for k in range(folds):
        train = data.subset(np.flatnonzero(fold_of != k).astype(np.int64))
        test = data.subset(np.flatnonzero(fold_of == k).astype(np.int64))
        name = f"cv5-fold{k}"
        per_fold.append(
            resumable_result(
                results / f"{name}.json",
                lambda: evaluate(name, resumable_side(train, k, results / name), test),  # noqa: B023
            )
        )
        progress.step()
    keys = ("auroc", "auprc", "normalized_utility", "calibration_slope", "calibration_intercept")
    return {
        "folds": per_fold,
        "mean": {
            key: float(np.mean([f["model"][key] for f in per_fold if f["model"][key] is not None]))
            for key in keys
        },
    }


def run(data_dir: Path, out: Path, cache: Path, limit: int | None, folds: int) -> dict[str, Any]:
    """The whole pipeline; writes ``out/evaluation.json`` and returns it with the models."""
    archives = data_dir / "physionet2019"
    parts = {}
    for hospital in ("A", "B"):
        data, rate = load_or_build(archives / f"training_set{hospital}.zip", cache, limit)
        parts[hospital] = data
        how = "from cache" if rate is None else f"built at {rate:,.0f} rows/s"
        _log(f"hospital {hospital}: {data.n_patients:,} patients, {len(data.labels):,} rows, {how}")
    both = concatenate([parts["A"], parts["B"]])
    report: dict[str, Any] = {"features": len(FEATURE_NAMES), "splits": {}}
    results = _results_folder(cache, limit, folds)
    report["splits"]["cv5"] = cross_validate(both, folds, results)
    models: dict[str, Trained] = {}
    for source, target in (("A", "B"), ("B", "A")):
        trained = resumable_side(parts[source], 11, results / f"side-{source}")
        models[source] = trained
        split = f"{source}->{target}"
        report["splits"][split] = resumable_result(
            results / f"{split}.json",
            lambda: evaluate(split, trained, parts[target]),  # noqa: B023
        )
    models["A+B"] = resumable_side(both, 13, results / "side-A+B")
    report["training_rows"] = {k: len(v.labels) for k, v in parts.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    report["_models"] = models
    return report
