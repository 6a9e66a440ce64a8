"""Promotion gates: a version's own validation figures against the policy's minimums."""

from __future__ import annotations

from pydantic import BaseModel

from cds_service.inference.registry import ManifestVersion
from cds_service.lifecycle.policy import Gates

#: the manifest's metrics entry the gates read (written by ``python -m training validation``)
VALIDATION = "validation"


class GateResult(BaseModel):
    passed: bool
    figures: dict[str, float]
    failures: list[str]


def check_gates(entry: ManifestVersion, gates: Gates) -> GateResult:
    """Every gate the version fails, named with its figure and the limit."""
    figures = entry.metrics.get(VALIDATION)
    if not figures:
        return GateResult(
            passed=False,
            figures={},
            failures=[
                f"no '{VALIDATION}' figures in the manifest: run python -m training validation"
            ],
        )
    failures: list[str] = []

    def need(name: str) -> float | None:
        value = figures.get(name)
        if value is None:
            failures.append(f"{name} missing from the validation figures")
        return value

    auroc = need("auroc")
    if auroc is not None and auroc < gates.min_auroc:
        failures.append(f"AUROC {auroc:.3f} < {gates.min_auroc:.3f}")
    utility = need("normalized_utility")
    if utility is not None and utility < gates.min_normalized_utility:
        failures.append(f"normalized utility {utility:.3f} < {gates.min_normalized_utility:.3f}")
    slope = need("calibration_slope")
    low, high = gates.calibration_slope
    if slope is not None and not low <= slope <= high:
        failures.append(f"calibration slope {slope:.3f} outside [{low:g}, {high:g}]")
    rate = need("alerts_per_100_patient_days")
    if rate is not None and rate > gates.max_alerts_per_100_patient_days:
        failures.append(
            f"{rate:.1f} alerts per 100 patient-days > {gates.max_alerts_per_100_patient_days:g}"
        )
    shown = {
        k: float(figures[k])
        for k in ("auroc", "normalized_utility", "calibration_slope", "alerts_per_100_patient_days")
        if k in figures
    }
    return GateResult(passed=not failures, figures=shown, failures=failures)
