"""``python -m training train|evaluate|verify`` (what `make train` and `make evaluate` run).

``verify`` re-checks every committed version's ONNX files against its booster on 100,000 real
rows at batch sizes 1, 7 and 1024, and records the differences in the manifest."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from training.artifacts import (
    add_card,
    reference_statistics,
    update_manifest,
    verify,
    write_version,
)
from training.dataset import definition_hash, load_or_build
from training.model_card import render
from training.pipeline import run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training")
    parser.add_argument("command", choices=["train", "evaluate", "verify"])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "model_artifacts")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "training")
    parser.add_argument("--limit", type=int, default=None, help="patients per hospital (tests)")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.command == "verify":
        data, _ = load_or_build(args.data / "physionet2019" / "training_setA.zip", args.cache)
        verify(args.out, data.features[:100_000])
        print(f"verified in {time.perf_counter() - started:.0f} s")
        return
    report = run(args.data, args.out, args.cache, args.limit, args.folds)
    models = report.pop("_models")  # `run` has written evaluation.json already
    if args.command == "evaluate":
        return
    provenance: dict[str, Any] = {
        "data": "PhysioNet/CinC Challenge 2019 training sets A and B (v1.0.0), read in place",
        "feature_definition_sha": definition_hash(),
        "patients_per_hospital_limit": args.limit,
        "trained": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, version, trained_on, active in (
        ("A", "sepsis-gbdt-A-1", "hospital A only", False),
        ("A+B", "sepsis-gbdt-AB-1", "hospitals A and B", True),
    ):
        trained = models[key]
        evaluation = {
            "features": report["features"],
            "training_rows": report["training_rows"],
            "splits": report["splits"] if key == "A+B" else {"A->B": report["splits"]["A->B"]},
        }
        reference = reference_statistics(
            trained.valid, trained.valid_probabilities, trained.threshold
        )
        documents = {
            "trained": trained,
            "evaluation": evaluation,
            "reference": reference,
            "provenance": provenance | {"trained_on": trained_on},
        }
        entry = write_version(args.out, version, **documents)
        add_card(args.out, entry, render(version, trained_on, evaluation, entry))
        update_manifest(args.out, entry, active=active)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
