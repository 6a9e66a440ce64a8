"""`python -m training.tune`: the record of how the fixed hyper-parameters in ``fit.py`` were
checked. Each candidate is fitted on the training side of CV fold 0 (A+B, 85 % of it), stopped
early, calibrated and thresholded on the other 15 %, and scored on those held-out patients; the
fold-0 test patients are never looked at. Writes ``model_artifacts/tuning.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.dataset import concatenate, load_or_build
from training.fit import POSITIVE_WEIGHT, calibrate, fit, split_patients
from training.metrics import auroc
from training.pipeline import predict
from training.utility import best_threshold

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES: list[tuple[str, dict[str, Any], float]] = [
    ("fixed (fit.py)", {}, POSITIVE_WEIGHT),
    ("more leaves", {"num_leaves": 63}, POSITIVE_WEIGHT),
    ("smaller leaves", {"min_data_in_leaf": 100}, POSITIVE_WEIGHT),
    ("faster learning", {"learning_rate": 0.1}, POSITIVE_WEIGHT),
    ("positives x2", {}, 2.0),
    ("positives x10", {}, 10.0),
]


def main() -> None:
    data_dir = ROOT.parent / "shared" / "data" / "physionet2019"
    cache = ROOT / ".cache" / "training"
    parts = [load_or_build(data_dir / f"training_set{h}.zip", cache)[0] for h in "AB"]
    both = concatenate(parts)
    order = np.random.default_rng(7).permutation(both.n_patients)
    fold_of = np.empty(both.n_patients, dtype=np.int64)
    fold_of[order] = np.arange(both.n_patients) % 5
    side = both.subset(np.flatnonzero(fold_of != 0).astype(np.int64))
    rest, held = split_patients(side.n_patients, 0.15, 0)
    train, valid = side.subset(rest), side.subset(held)
    results = []
    for name, overrides, weight in CANDIDATES:
        started = time.perf_counter()
        fitted = fit(train, valid, overrides=overrides, positive_weight=weight)
        raw = predict(fitted, valid)
        p = calibrate(raw, valid.labels).apply(raw)
        choice = best_threshold(p, valid.labels, boundaries=valid.boundaries)
        results.append(
            {
                "candidate": name,
                "overrides": overrides,
                "positive_weight": weight,
                "trees": fitted.best_iteration,
                "auroc": auroc(valid.labels.astype(bool), p),
                "utility": choice.normalized_utility,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    out = ROOT / "model_artifacts" / "tuning.json"
    out.write_text(
        json.dumps({"split": "CV fold 0, training side 85/15", "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
