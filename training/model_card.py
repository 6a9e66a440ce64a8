"""The model card: one page a clinician can read, written from the evaluation's own numbers."""

from __future__ import annotations

from typing import Any

from training.artifacts import OUTCOME


def _f(value: object, digits: int = 3) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def _row(name: str, m: dict[str, Any]) -> str:
    return (
        f"| {name} | {_f(m.get('auroc'))} | {_f(m.get('auprc'))} | "
        f"{_f(m.get('normalized_utility'))} | {_f(m.get('sensitivity'), 2)} | "
        f"{_f(m.get('ppv'), 3)} | {_f(m.get('alerts_per_100_patient_days'), 1)} |"
    )


def render(
    version: str, trained_on: str, evaluation: dict[str, Any], manifest_entry: dict[str, Any]
) -> str:
    splits = evaluation["splits"]
    lines = [
        f"# Sepsis early warning — model card, version {version}",
        "",
        "## What the number means",
        f"The risk shown is {OUTCOME}. Sepsis-3 here is the PhysioNet/CinC 2019 challenge's",
        "definition (suspected infection — cultures and IV antibiotics — with a SOFA rise of 2 or",
        "more); its label turns positive 6 hours before the onset time, which is why the risk",
        "looks about 6 hours ahead. Probabilities are calibrated on held-out patients.",
        "",
        "## Intended use and population",
        "Adults in intensive care, hourly vital signs and laboratory values. Decision support",
        "for a clinician, never a diagnosis: it does not replace assessment, and it does not",
        "know about infection sources, cultures or antibiotics already given.",
        "",
        "## Data",
        f"Trained on: {trained_on} of the PhysioNet/CinC Challenge 2019 training data (Reyna et",
        "al., Crit Care Med 2020; CC BY 4.0): hospital A (Beth Israel Deaconess) and B (Emory).",
        f"Rows: {evaluation.get('training_rows')}. Features: {evaluation['features']} (values,",
        "missingness and time since measurement, 6/24 h statistics, partial SOFA/qSOFA/NEWS2,",
        "age, sex, ICU unit, time in ICU and hospital). No race or ethnicity field exists in the",
        "data.",
        "",
        "## Performance (hourly; thresholds chosen on training-side patients only)",
        "",
        "| split | AUROC | AUPRC | utility | sensitivity | PPV | alerts/100 patient-days |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    cv = splits.get("cv5", {})
    if cv:
        mean = cv["mean"]
        lines.append(
            f"| 5-fold CV on A+B (mean of folds) | {_f(mean.get('auroc'))} | "
            f"{_f(mean.get('auprc'))} | {_f(mean.get('normalized_utility'))} | | | |"
        )
    for name in ("A->B", "B->A"):
        if name in splits:
            split = splits[name]
            ci, uci = split["auroc_ci"], split.get("utility_ci", {})
            label = (
                f"{name} (95% CI: AUROC {_f(ci['low'])}-{_f(ci['high'])}, "
                f"utility {_f(uci.get('low'))}-{_f(uci.get('high'))})"
            )
            lines.append(_row(label, split["model"]))
            for baseline, m in split["baselines"].items():
                lines.append(_row(f"{name} baseline: {baseline}", m))
    calibration = manifest_entry["calibration"]
    points = manifest_entry["operating_points"]
    lines += [
        "",
        "## Operating points and calibration",
        "- Alert level (maximises the challenge utility on training-side patients): "
        f"{points['utility_optimal']:.3f}; high-sensitivity level: "
        f"{points['high_sensitivity']:.3f}.",
        f"- Platt calibration on held-out patients: intercept {calibration['intercept']:.3f}, "
        f"slope {calibration['slope']:.3f}. Calibration slope and intercept per split are in",
        "  `evaluation.json`.",
        "",
        "## Limits",
        "- ICU data from two US hospitals; on a hospital the model has not seen, performance drops",
        "  (the challenge's best entries scored negative utility on the unseen hospital C).",
        "- Inputs missing from the data (mentation, vasopressors, PaO2, urine output) make every",
        "  SOFA/qSOFA/NEWS2 feature partial.",
        "- Set B's calcium column mixes ionised and total calcium; ionised-looking values are",
        "  rejected by the plausible range, so calcium is mostly missing there.",
        "- The label is derived from antibiotics and cultures: practice differences between",
        '  hospitals change what "sepsis" means to the model.',
        "",
        f"Files and sha256: see `manifest.json` (trees: {manifest_entry['trees']}).",
        "",
    ]
    return "\n".join(lines)
