"""``python -m training train|evaluate|verify|validation`` (what `make train` and `make evaluate`
run).

``verify`` re-checks every committed version's ONNX files against its booster on 100,000 real
rows at batch sizes 1, 7 and 1024, and records the differences in the manifest. ``validation``
rebuilds each shipped version's validation split, checks it is the one its ``reference.json`` was
measured on, and records the version's figures on it as ``metrics.validation`` (what promotion
gates read). ``evaluate --site PATH --model VERSION --out DIR`` is the site-local validation
report instead (``training.site_report``; ``python -m training evaluate --help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.artifacts import (
    VALIDATION_FRACTION,
    add_card,
    check_validation_split,
    missing_validation_keys,
    record_validation,
    reference_statistics,
    update_manifest,
    validation_metrics,
    validation_split_text,
    verify,
    write_version,
)
from training.dataset import Dataset, concatenate, definition_hash, load_or_build
from training.fit import PlattCalibration, split_patients
from training.model_card import render
from training.pipeline import run

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shipped:
    """A version ``train`` writes: the hospitals of its training side and the seed of
    ``pipeline.train_side``'s split (the seeds ``pipeline.run`` passes)."""

    key: str
    version: str
    trained_on: str
    active: bool
    hospitals: tuple[str, ...]
    seed: int


SHIPPED = (
    Shipped("A", "sepsis-gbdt-A-1", "hospital A only", False, ("A",), 11),
    Shipped("A+B", "sepsis-gbdt-AB-1", "hospitals A and B", True, ("A", "B"), 13),
)


def shipped_splits(
    data_dir: Path, models: Path, cache: Path
) -> Iterator[tuple[Shipped, Dataset, npt.NDArray[np.float64], float, dict[str, Any]]]:
    """Each shipped version's rebuilt validation split, its calibrated scores, its alert level
    and its recorded reference, after checking the split is the one the reference describes.

    Scored with the committed booster (sha256 checked against the manifest) and the manifest's
    calibration: the scores ``reference.json`` was computed from at training, so the check that
    the split was reproduced can be exact."""
    import lightgbm as lgb  # noqa: PLC0415 - only the training extra has it

    manifest: dict[str, Any] = json.loads((models / "manifest.json").read_text())
    entries = {v["version"]: v for v in manifest["versions"]}
    parts: dict[tuple[str, int | None], Dataset] = {}
    for shipped in SHIPPED:
        entry = entries.get(shipped.version)
        if entry is None:
            print(f"{shipped.version}: not in the manifest, skipped")
            continue
        # A registry trained with --limit was split from the first `limit` patients only.
        limit = entry.get("provenance", {}).get("patients_per_hospital_limit")
        for hospital in shipped.hospitals:
            if (hospital, limit) not in parts:
                archive = data_dir / "physionet2019" / f"training_set{hospital}.zip"
                parts[hospital, limit] = load_or_build(archive, cache, limit)[0]
        side = concatenate([parts[h, limit] for h in shipped.hospitals])
        valid = side.subset(split_patients(side.n_patients, VALIDATION_FRACTION, shipped.seed)[1])
        folder = models / shipped.version
        booster_bytes = (folder / "booster.txt").read_bytes()
        if hashlib.sha256(booster_bytes).hexdigest() != entry["files"]["booster.txt"]:
            raise SystemExit(f"{shipped.version}: booster.txt does not match its sha256")
        booster = lgb.Booster(model_str=booster_bytes.decode())
        calibration = PlattCalibration(
            entry["calibration"]["intercept"], entry["calibration"]["slope"]
        )
        raw = np.asarray(booster.predict(valid.features), dtype=np.float64)
        probabilities = calibration.apply(raw)
        threshold = float(entry["operating_points"]["utility_optimal"])
        reference = json.loads((folder / "reference.json").read_text())
        check_validation_split(valid, probabilities, threshold, reference, shipped.version)
        yield shipped, valid, probabilities, threshold, reference


def refresh_references(data_dir: Path, models: Path, cache: Path) -> None:
    """Rewrite each shipped version's ``reference.json`` with the current
    ``reference_statistics`` (exact drift bins), from its own validation split, and its sha256 in
    the manifest. The figures it already held must come out the same."""
    manifest_path = models / "manifest.json"
    for shipped, valid, probabilities, threshold, old in shipped_splits(data_dir, models, cache):
        new = reference_statistics(valid, probabilities, threshold)
        # shipped_splits has checked the scores agree to 1e-9; keep the recorded figures as
        # they were, so that only the bins are new.
        for key in ("quantile_levels", "score_quantiles", "alerts_per_100_patient_days"):
            new[key] = old[key]
        for name, feature in new["features"].items():
            if feature["quantiles"] != old["features"][name]["quantiles"]:
                raise SystemExit(f"{shipped.version}: {name} quantiles changed; not a refresh")
        path = models / shipped.version / "reference.json"
        path.write_text(json.dumps(new, indent=2, allow_nan=False))
        manifest = json.loads(manifest_path.read_text())
        for entry in manifest["versions"]:
            if entry["version"] == shipped.version:
                entry["files"]["reference.json"] = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest_path.write_text(json.dumps(manifest, indent=2, allow_nan=False))
        print(f"{shipped.version}: reference.json refreshed")


def validation(data_dir: Path, models: Path, cache: Path) -> dict[str, dict[str, float]]:
    """Every shipped version's figures on its own validation split, written into the manifest."""
    found: dict[str, dict[str, float]] = {}
    for shipped, valid, probabilities, threshold, _ in shipped_splits(data_dir, models, cache):
        figures = validation_metrics(valid, probabilities, threshold)
        missing = missing_validation_keys(figures)
        if missing:
            raise SystemExit(f"{shipped.version}: undefined on its split: {', '.join(missing)}")
        text = validation_split_text(shipped.hospitals, shipped.seed, figures)
        record_validation(models, shipped.version, figures, text)
        found[shipped.version] = figures
        print(
            f"{shipped.version}: {figures['patients']:,.0f} patients, "
            f"AUROC {figures['auroc']:.4f}, utility {figures['normalized_utility']:.4f}, "
            f"{figures['alerts_per_100_patient_days']:.2f} alerts per 100 patient-days "
            "(split reproduced: reference.json agrees)"
        )
    return found


def _sepsis_code(text: str) -> tuple[str, str]:
    system, bar, code = text.rpartition("|")
    if not bar or not system or not code:
        raise argparse.ArgumentTypeError("expected SYSTEM|CODE, e.g. http://snomed.info/sct|123")
    return system, code


def _add_site_arguments(parser: argparse.ArgumentParser) -> None:
    site = parser.add_argument_group(
        "site report", "evaluate --site PATH --model VERSION --out DIR: training.site_report"
    )
    site.add_argument(
        "--site", type=Path, default=None,
        help="PhysioNet PSV (.zip or folder of .psv) or a FHIR Bulk Data NDJSON folder",
    )  # fmt: skip
    site.add_argument("--model", default=None, help="the registered version to evaluate")
    site.add_argument("--models-root", type=Path, default=ROOT / "model_artifacts")
    site.add_argument("--site-name", default="site", help="how the report names the site")
    site.add_argument("--bootstrap", type=int, default=200, help="resamples for the intervals")
    site.add_argument("--workers", type=int, default=2, help="processes reading PSV files")
    site.add_argument(
        "--site-map", type=Path, action="append", default=[],
        help="a site code map (TOML, fhir_adapters/site_codes.py), repeatable",
    )  # fmt: skip
    site.add_argument(
        "--icu-location", action="append", default=[],
        help="a Location reference that is an ICU (as CDS_SEPSIS__ICU_LOCATION_IDS), repeatable",
    )  # fmt: skip
    site.add_argument(
        "--sepsis-code", type=_sepsis_code, action="append", default=[],
        help="SYSTEM|CODE of a further Condition code read as sepsis, repeatable",
    )  # fmt: skip


def site_evaluation(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``evaluate --site``: the site-local validation report (``training.site_report``)."""
    from cds_service.inference.registry import ModelRefused  # noqa: PLC0415
    from training.site_report import evaluate_site  # noqa: PLC0415 - only this command needs it

    if args.model is None or args.out is None:
        parser.error("evaluate --site needs --model VERSION and --out DIR")
    if args.out.resolve() == args.models_root.resolve():
        parser.error("--out is the report's folder, not the model registry")
    try:
        evaluate_site(
            args.site,
            args.model,
            args.models_root,
            args.out,
            site_name=args.site_name,
            limit=args.limit,
            resamples=args.bootstrap,
            site_maps=args.site_map,
            icu_locations=args.icu_location,
            sepsis_codes=args.sepsis_code,
            workers=args.workers,
        )
    except ModelRefused as refused:
        raise SystemExit(f"model refused ({refused.reason}): {refused}") from refused


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training")
    parser.add_argument(
        "command", choices=["train", "evaluate", "verify", "validation", "reference"]
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="the registry (default model_artifacts/); with --site, the report's folder",
    )  # fmt: skip
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "training")
    parser.add_argument(
        "--limit", type=int, default=None,
        help="patients per hospital (tests); with --site, the first N stays",
    )  # fmt: skip
    parser.add_argument("--folds", type=int, default=5)
    _add_site_arguments(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.command == "evaluate" and args.site is not None:
        site_evaluation(args, parser)
        return
    if args.site is not None:
        parser.error("--site goes with evaluate")
    args.out = args.out or ROOT / "model_artifacts"
    if args.command == "reference":
        refresh_references(args.data, args.out, args.cache)
        return
    if args.command == "validation":
        validation(args.data, args.out, args.cache)
        print(f"validation figures recorded in {time.perf_counter() - started:.0f} s")
        return
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
    for shipped in SHIPPED:
        key, version, trained_on = shipped.key, shipped.version, shipped.trained_on
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
        # write_version measured metrics.validation on these same held-out patients.
        entry["provenance"]["validation_split"] = validation_split_text(
            shipped.hospitals, shipped.seed, entry["metrics"]["validation"]
        )
        add_card(args.out, entry, render(version, trained_on, evaluation, entry))
        update_manifest(args.out, entry, active=shipped.active)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
