"""The site report (``python -m training evaluate --site``): aggregates only, small cells hidden.

On 300 stays of PhysioNet hospital B scored by ``sepsis-gbdt-A-1`` (trained on A alone, so B is
external to it), on an NDJSON export this file writes from B's PSV records, on the MIMIC-IV demo
FHIR export, and through the command line. About 15 s on two cores.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np
import orjson
import pytest
from pydantic import BaseModel

from cds_service.features import FEATURE_NAMES
from cds_service.inference.registry import LoadedModel, load_version
from fhir_adapters.binning import bin_start
from training.challenge_rows import PsvPatient, iter_patients, to_fhir_observations
from training.dataset import patient_features
from training.site_data import SiteCohort, read_psv
from training.site_fhir import read_ndjson
from training.site_report import (
    LEVELS,
    Aggregate,
    SiteReport,
    build_report,
    evaluate_site,
    render_markdown,
    score,
)
from training.site_suppression import MIN_CELL, complementary, small_cells, suppress

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
SET_B = DATA / "physionet2019" / "training_setB.zip"
MIMIC = DATA / "mimic-iv-fhir-demo" / "fhir"
MODELS = ROOT / "model_artifacts"
VERSION = "sepsis-gbdt-A-1"
STAYS = 300

needs_b = pytest.mark.skipif(not SET_B.exists(), reason=f"no PhysioNet set B at {SET_B}")


# ----------------------------------------------------------------- the suppression rule alone


def test_suppression_of_hand_made_counts() -> None:
    # One small cell: the next smallest that counts someone goes with it, not the zero.
    assert suppress({"a": 4, "b": 0, "c": 30, "d": 50}) == {
        "a": "small-cell-patients",
        "c": "complementary",
    }
    # Two small cells that together are still a small cell: a third is hidden.
    reasons = suppress({"a": 2, "b": 3, "c": 40, "d": 55})
    assert reasons == {"a": "small-cell-patients", "b": "small-cell-patients", "c": "complementary"}
    # Two small cells adding up to 10 or more protect each other.
    assert suppress({"a": 6, "b": 7, "c": 40}) == {
        "a": "small-cell-patients",
        "b": "small-cell-patients",
    }
    # Nothing small, nothing hidden; zeros are shown.
    assert suppress({"a": 0, "b": 10, "c": 99}) == {}
    # Cells hidden for another reason count as hidden, and keep their reason.
    hidden = suppress({"a": 12, "b": 15, "c": 50}, hidden={"a": "small-cell-patients"})
    assert hidden == {"a": "small-cell-patients", "b": "complementary"}
    # Only zeros left to hide: hidden anyway (the total would give the small cell away).
    assert suppress({"a": 5, "b": 0}) == {"a": "small-cell-patients", "b": "complementary"}
    assert small_cells({"a": 1, "b": 9, "c": 10, "d": 0}) == {"a", "b"}
    assert complementary({"a": 3, "b": 20}, hidden=set()) == set()


def _hidden_cells_are_protected(
    shown: dict[str, int | None], total: int, counts: dict[str, int]
) -> None:
    """What a reader can work out: total minus the shown cells is the sum of the hidden ones."""
    hidden = [c for c, v in shown.items() if v is None and counts[c] > 0]
    if hidden:
        assert len([c for c, v in shown.items() if v is None]) >= 2, shown
        assert total - sum(v for v in shown.values() if v is not None) >= MIN_CELL, shown
    for cell, value in shown.items():
        if value is not None:
            assert value == counts[cell] and not 0 < value < MIN_CELL, (cell, value)


# ---------------------------------------------------------------------------- hospital B


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_version(MODELS, VERSION, "cpu")


@pytest.fixture(scope="module")
def b_patients() -> list[PsvPatient]:
    if not SET_B.exists():
        pytest.skip(f"no PhysioNet set B at {SET_B}")
    return list(iter_patients(SET_B, limit=STAYS))


@pytest.fixture(scope="module")
def b_report(
    tmp_path_factory: pytest.TempPathFactory, b_patients: list[PsvPatient]
) -> tuple[SiteReport, Path]:
    out = tmp_path_factory.mktemp("site-b")
    report = evaluate_site(
        SET_B, VERSION, MODELS, out, site_name="Hospital B", limit=STAYS, resamples=30
    )
    return report, out


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def numbers_outside_aggregates(
    model: type[BaseModel], data: dict[str, Any], path: str = ""
) -> list[str]:
    """Paths of numbers in ``data`` whose schema field is not marked ``Aggregate``."""
    bad: list[str] = []
    for key, value in data.items():
        field = model.model_fields[key]  # KeyError: a field the schema does not have
        where = f"{path}{key}"
        is_aggregate = any(isinstance(m, Aggregate) for m in field.metadata)
        if isinstance(value, bool):
            bad.append(where)
        elif isinstance(value, int | float):
            if not is_aggregate:
                bad.append(where)
        elif isinstance(value, dict | list):
            nested = _model_in(field.annotation)
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if nested is not None and isinstance(item, dict):
                    bad += numbers_outside_aggregates(nested, item, f"{where}[{i}].")
                elif list(_numbers(item)):  # a number in a free-form dict or list
                    origin = get_origin(field.annotation)
                    bad.append(f"{where} ({origin})")
    return bad


@needs_b
def test_b_report_holds_no_identifier_no_row_and_only_aggregate_numbers(
    b_report: tuple[SiteReport, Path], b_patients: list[PsvPatient]
) -> None:
    report, out = b_report
    text = (out / "report.json").read_text()
    markdown = (out / "report.md").read_text()
    data = json.loads(text)
    assert SiteReport.model_validate(data) == report
    assert report.overall.patients == STAYS and report.cohort.stays_included == STAYS
    for document in (text, markdown):
        # No PhysioNet record name, no file or archive name, no path.
        assert not re.search(r"p\d{6}", document)
        assert "training_set" not in document and ".psv" not in document
        assert ".zip" not in document and str(DATA) not in document
        # The only time is the generation time.
        times = re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d", document)
        assert times == [report.generated_at.isoformat()[:16]], times
    stems = {int(p.patient.rsplit("p", 1)[1]) for p in b_patients}
    numbers = list(_numbers(data))
    assert not stems & {n for n in numbers if n.is_integer()}, "a record number is in the report"
    # Every number is a field the schema marks as an aggregate (count, figure or setting).
    assert numbers_outside_aggregates(SiteReport, data) == []
    # No patient's row: a row's vital signs (3 or more present) never all appear among the
    # report's numbers, nor does any feature row of the model's input.
    present = set(numbers)

    def row_found(values: np.ndarray) -> bool:
        values = values[~np.isnan(values)]
        return len(values) >= 3 and all(float(v) in present for v in values)

    vitals = 7  # HR, O2Sat, Temp, SBP, MAP, DBP, Resp
    assert not any(row_found(row[:vitals]) for p in b_patients for row in p.values)
    features = np.concatenate([patient_features(p)[0] for p in b_patients[:50]]).astype(np.float64)
    assert not any(row_found(row[[0, 3, 6, 9, 12, 15, 18]]) for row in features)
    # The check itself finds a row when one is there.
    planted = json.loads(text)
    row = next(r[:vitals] for p in b_patients for r in p.values if np.isfinite(r[:vitals]).all())
    assert not row_found(np.asarray(row))
    planted["calibration"][0]["expected_rate"] = [float(v) for v in row]
    present |= set(_numbers(planted))
    assert row_found(np.asarray(row))


@needs_b
def test_small_cells_and_their_complements_are_hidden(
    b_report: tuple[SiteReport, Path], model: LoadedModel
) -> None:
    report, _ = b_report
    cohort = read_psv(SET_B, limit=STAYS, workers=1)
    _check_partitions(report, cohort)
    # A cohort of 40: most subgroups are small cells, and the figures say why.
    small = read_psv(SET_B, limit=40, workers=1)
    small_report = build_report(
        small, model, score(model, small.data.features), site_name="x", resamples=0
    )
    _check_partitions(small_report, small)
    reasons = {r for g in small_report.subgroups for r in g.figures.suppressed.values()}
    assert {"small-cell-patients", "small-cell-septic-patients"} <= reasons
    # Fewer than 10 septic stays in all: nothing that depends on them is published.
    septic = int(
        np.sum(np.add.reduceat(small.data.labels.astype(int), small.data.boundaries[:-1]) > 0)
    )
    assert 0 < septic < MIN_CELL
    o = small_report.overall
    assert o.patients == 40 and o.septic_patients is None and o.auroc is None
    assert o.suppressed["auroc"] == "small-cell-septic-patients"
    assert o.specificity is not None and o.alerts_per_100_patient_days is not None
    assert small_report.intervals.auroc_low is None
    assert all(c.observed_rate is None for c in small_report.calibration)
    # Nine stays: not even the cohort is published.
    tiny = read_psv(SET_B, limit=9, workers=1)
    tiny_report = build_report(
        tiny, model, score(model, tiny.data.features), site_name="x", resamples=0
    )
    assert tiny_report.overall.patients is None
    assert tiny_report.overall.suppressed["patients"] == "small-cell-patients"
    assert tiny_report.cohort.stays_included is None and tiny_report.cohort.stays_found is None
    assert all(g.figures.patients is None for g in tiny_report.subgroups if g.by == "sex")


def _check_partitions(report: SiteReport, cohort: SiteCohort) -> None:
    data = cohort.data
    septic_stay = np.add.reduceat(data.labels.astype(int), data.boundaries[:-1]) > 0
    age = np.select(
        [data.age < 45, data.age < 65, data.age < 80], ["18-44", "45-64", "65-79"], "80+"
    )
    hours = cohort.stay_hours
    stay = np.select(
        [hours < 24, hours < 72, hours < 168],
        ["under 24 h", "24-71 h", "72-167 h"],
        "168 h and over",
    )
    levels = {"sex": data.sex, "age": age, "icu_unit": data.unit, "length_of_stay": stay}
    total, septic_total = data.n_patients, int(septic_stay.sum())
    for by, of_stay in levels.items():
        counts = {lvl: int(np.sum(of_stay == lvl)) for lvl in LEVELS[by]}
        septic = {lvl: int(np.sum((of_stay == lvl) & septic_stay)) for lvl in LEVELS[by]}
        groups = {g.level: g.figures for g in report.subgroups if g.by == by}
        if total < MIN_CELL:
            assert all(f.patients is None for f in groups.values())
            continue
        shown = {lvl: groups[lvl].patients for lvl in LEVELS[by]}
        _hidden_cells_are_protected(shown, total, counts)
        for lvl, figures in groups.items():
            if 0 < counts[lvl] < MIN_CELL:
                assert figures.suppressed["patients"] == "small-cell-patients"
                assert figures.auroc is None and figures.brier is None
            if figures.patients is not None and 0 < septic[lvl] < MIN_CELL:
                assert figures.suppressed["septic_patients"] == "small-cell-septic-patients"
                assert figures.sensitivity is None and figures.auprc is None
        if septic_total >= MIN_CELL:
            shown_septic = {lvl: groups[lvl].septic_patients for lvl in LEVELS[by]}
            _hidden_cells_are_protected(shown_septic, septic_total, septic)
    # Risk bins: patient-hours add up to the cohort's, so a hidden bin cannot be recovered.
    if report.calibration and report.overall.patient_hours is not None:
        bins = {str(i): b.patient_hours for i, b in enumerate(report.calibration)}
        risk_true = {k: v or 0 for k, v in bins.items()}
        hidden = [k for k, v in bins.items() if v is None]
        if hidden:
            assert len(hidden) >= 2
            assert report.overall.patient_hours - sum(v for v in bins.values() if v) >= MIN_CELL
        for b in report.calibration:
            assert b.patients is None or b.patients >= MIN_CELL
            assert (
                b.septic_patients is None or b.septic_patients == 0 or b.septic_patients >= MIN_CELL
            )
        assert risk_true  # every bin is listed, shown or not
    # Exclusions: a small one hides the total found.
    small = [e for e in report.cohort.exclusions if e.stays is None]
    assert bool(small) == (report.cohort.stays_found is None)


@needs_b
def test_b_report_figures_are_those_of_training_metrics(
    b_report: tuple[SiteReport, Path], model: LoadedModel
) -> None:
    """The headline figures are ``training.metrics`` on the same rows scored by the ONNX model,
    and the comparison quotes the manifest's validation block."""
    from training import metrics  # noqa: PLC0415

    report, _ = b_report
    cohort = read_psv(SET_B, limit=STAYS, workers=1)
    risk = score(model, cohort.data.features)
    threshold = model.entry.operating_points.utility_optimal
    expected = metrics.summary(cohort.data.labels, risk, cohort.data.boundaries, threshold)
    o = report.overall
    assert o.auroc == pytest.approx(expected["auroc"])
    assert o.normalized_utility == pytest.approx(expected["normalized_utility"])
    assert o.patient_hours == expected["rows"] and o.septic_patients == expected["septic_patients"]
    assert report.intervals.auroc_low is not None and report.intervals.auroc_high is not None
    assert report.intervals.auroc_low < o.auroc < report.intervals.auroc_high  # type: ignore[operator]
    validation = model.entry.metrics["validation"]
    rows = {c.metric: c for c in report.comparison}
    assert rows["auroc"].validation == validation["auroc"]
    assert rows["auroc"].difference == pytest.approx(o.auroc - validation["auroc"])  # type: ignore[operator]
    assert sum(b.patient_hours or 0 for b in report.calibration) <= expected["rows"]


# --------------------------------------------------------------------------------- NDJSON


def _write_export(folder: Path, patients: list[PsvPatient]) -> dict[str, Any]:
    """A Bulk Data export of PSV stays: Patient, Location, Encounter, Condition (sepsis onset at
    the challenge's t_sepsis), Observation (gzipped), plus three stays that must be excluded."""
    folder.mkdir()
    units = {
        "MICU": "Medical Intensive Care Unit (MICU)",
        "SICU": "Surgical ICU (SICU)",
        None: "Intensive Care Unit",
    }
    locations = [
        {"resourceType": "Location", "id": f"loc-{i}", "name": n}
        for i, n in enumerate(units.values())
    ]
    location_of = {u: f"loc-{i}" for i, u in enumerate(units)}
    people, encounters, conditions, observations = [], [], [], []
    septic: list[int] = []
    for k, p in enumerate(patients):
        pid = f"pat-{k:03d}"
        start = bin_start(_icu_start(p), 1)
        age = p.age if k != len(patients) - 1 else 12.0  # the last one: a child
        people.append(
            {
                "resourceType": "Patient",
                "id": pid,
                "gender": p.sex or "unknown",
                "birthDate": (start - timedelta(days=age * 365.25)).date().isoformat(),
            }
        )
        admitted = start + timedelta(hours=p.hosp_adm_hours or 0.0)
        end = bin_start(start, int(p.iculos.max())) + timedelta(minutes=59)
        encounters.append({
            "resourceType": "Encounter", "id": f"enc-{k:03d}", "status": "finished",
            "subject": {"reference": f"Patient/{pid}"},
            "period": {"start": admitted.isoformat(), "end": (end + timedelta(hours=30)).isoformat()},
            "location": [{"location": {"reference": f"Location/{location_of[p.unit]}"}, "period": {"start": start.isoformat(), "end": end.isoformat()}}],
        })  # fmt: skip
        if p.labels.any():
            first = int(p.iculos[np.argmax(p.labels)])
            onset = bin_start(start, first + 6) + timedelta(minutes=10)
            conditions.append({"resourceType": "Condition", "id": f"c-{k}", "subject": {"reference": f"Patient/{pid}"}, "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "A41.9"}]}, "onsetDateTime": onset.isoformat()})  # fmt: skip
            septic.append(k)
        elif k == 1:  # sepsis coded without any time: this stay cannot be labelled
            conditions.append({"resourceType": "Condition", "id": "c-undated", "subject": {"reference": f"Patient/{pid}"}, "encounter": {"reference": f"Encounter/enc-{k:03d}"}, "code": {"coding": [{"system": "http://snomed.info/sct", "code": "76571007"}]}})  # fmt: skip
        elif k == 2:  # a refuted sepsis diagnosis is no label
            conditions.append({"resourceType": "Condition", "id": "c-refuted", "subject": {"reference": f"Patient/{pid}"}, "verificationStatus": {"coding": [{"code": "refuted"}]}, "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91302008"}]}, "onsetDateTime": start.isoformat()})  # fmt: skip
        observations += to_fhir_observations(p, start, f"Patient/{pid}")
    # A ward stay (no ICU location) and one stay too short for the challenge's rule.
    encounters.append({"resourceType": "Encounter", "id": "ward", "status": "finished", "subject": {"reference": "Patient/pat-000"}, "period": {"start": "2018-01-01T00:00:00Z", "end": "2018-01-05T00:00:00Z"}, "location": [{"location": {"display": "General medicine ward"}}]})  # fmt: skip
    encounters.append({"resourceType": "Encounter", "id": "short", "status": "finished", "subject": {"reference": "Patient/pat-000"}, "period": {"start": "2018-06-01T00:00:00Z", "end": "2018-06-01T05:00:00Z"}, "location": [{"location": {"display": "MICU"}}]})  # fmt: skip
    for name, resources in (
        ("Patient", people),
        ("Location", locations),
        ("Encounter", encounters),
        ("Condition", conditions),
    ):
        (folder / f"{name}.ndjson").write_bytes(
            b"".join(orjson.dumps(r) + b"\n" for r in resources)
        )
    with gzip.open(folder / "Observation.000.ndjson.gz", "wb") as handle:
        handle.writelines(orjson.dumps(o) + b"\n" for o in observations)
    return {"septic": septic, "stays": len(patients) + 1}


def _icu_start(p: PsvPatient) -> Any:
    from training.challenge_rows import synthetic_icu_start  # noqa: PLC0415

    return synthetic_icu_start(p.patient)


@needs_b
def test_ndjson_export_gives_the_psv_rows_and_labels_and_a_report(
    tmp_path: Path, b_patients: list[PsvPatient], model: LoadedModel
) -> None:
    patients = b_patients[:60]
    written = _write_export(tmp_path / "export", patients)
    cohort = read_ndjson(tmp_path / "export")
    assert cohort.kind == "fhir-ndjson" and cohort.stays_found == written["stays"]
    assert cohort.exclusions == {
        "sepsis-coded-without-onset": 1,
        "under-18": 1,
        "fewer-than-8-hours": 1,
    }
    kept = [p for k, p in enumerate(patients) if k not in (1, len(patients) - 1)]
    assert cohort.data.n_patients == len(kept)
    skip = [FEATURE_NAMES.index("age_years"), FEATURE_NAMES.index("hospital_hours")]
    compared = np.ones(len(FEATURE_NAMES), bool)
    compared[skip] = False
    for i, p in enumerate(kept):
        rows = cohort.data.features[cohort.data.boundaries[i] : cohort.data.boundaries[i + 1]]
        labels = cohort.data.labels[cohort.data.boundaries[i] : cohort.data.boundaries[i + 1]]
        psv_rows, _ = patient_features(p)
        at = p.iculos - 1  # FHIR rows are ICU hours 1..discharge; PSV rows its ICULOS hours
        assert len(rows) == p.iculos.max()
        np.testing.assert_array_equal(
            rows[at][:, compared], psv_rows[:, compared], err_msg=p.patient
        )
        np.testing.assert_array_equal(labels[at], p.labels, err_msg=p.patient)
        assert abs(cohort.data.age[i] - p.age) < 0.01
    assert cohort.septic_by_condition == sum(1 for k in written["septic"] if k != 1)
    report = build_report(
        cohort, model, score(model, cohort.data.features), site_name="export", resamples=0
    )
    report = SiteReport.model_validate_json(report.model_dump_json())
    assert (
        report.data.kind == "fhir-ndjson"
        and report.data.label.kind == "proxy-from-sepsis-conditions"
    )
    assert report.overall.patients == len(kept) and report.mapping is not None
    assert report.mapping.values_mapped is not None and report.mapping.values_mapped > 1000
    markdown = render_markdown(report)
    assert "PROXY LABEL" in markdown and "Reyna" in markdown
    assert "pat-0" not in markdown + report.model_dump_json() and "psv-" not in markdown


@pytest.mark.skipif(not MIMIC.is_dir(), reason=f"no MIMIC-IV demo FHIR export at {MIMIC}")
def test_mimic_demo_export_yields_a_report_that_withholds_what_it_cannot_support(
    tmp_path: Path, model: LoadedModel
) -> None:
    """The shared MIMIC-IV demo lacks chartevents and labevents (shared/data/README.md): its 140
    ICU stays are found, their sepsis Conditions (ICD-9/10 billing codes) have no time, and
    almost no stay has a model variable in the ICU, so the report publishes no figure."""
    cohort = read_ndjson(MIMIC)
    assert cohort.stays_found == 140
    assert cohort.exclusions["sepsis-coded-without-onset"] > 0
    assert cohort.exclusions["no-observations"] > 50
    report = build_report(
        cohort, model, score(model, cohort.data.features), site_name="MIMIC-IV demo", resamples=0
    )
    assert report.overall.patients is None or report.overall.patients >= MIN_CELL
    assert report.overall.auroc is None
    assert "no-observations" in render_markdown(report)


# ------------------------------------------------------------------------- command line


@needs_b
def test_cli_end_to_end_on_a_folder_of_psv_files(tmp_path: Path) -> None:
    folder = tmp_path / "icu-export"
    folder.mkdir()
    with zipfile.ZipFile(SET_B) as zipped:
        names = sorted(n for n in zipped.namelist() if n.endswith(".psv"))[:120]
        for k, name in enumerate(names):
            (folder / f"bed-{k:03d}-stay.psv").write_bytes(zipped.read(name))
    out = tmp_path / "report"
    command = [
        sys.executable, "-m", "training", "evaluate", "--site", str(folder), "--model", VERSION,
        "--out", str(out), "--site-name", "Test ICU", "--limit", "100", "--bootstrap", "20",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, check=True, capture_output=True, text=True, timeout=120
    )
    assert "100 stays" in done.stdout
    report = SiteReport.model_validate_json((out / "report.json").read_text())
    assert report.site_name == "Test ICU" and report.overall.patients == 100
    assert report.model.version == VERSION and report.data.kind == "physionet-psv"
    written = (out / "report.json").read_text() + (out / "report.md").read_text()
    assert "bed-" not in written and "icu-export" not in written
    # --site without --out is refused before anything is read.
    refused = subprocess.run(command[:-8], cwd=ROOT, check=False, capture_output=True, text=True)
    assert refused.returncode == 2 and "--out" in refused.stderr


def test_cli_refuses_an_unknown_model(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "training", "evaluate", "--site", str(tmp_path), "--model", "nope", "--out", str(tmp_path / "r")]  # fmt: skip
    refused = subprocess.run(command, cwd=ROOT, check=False, capture_output=True, text=True)
    assert refused.returncode != 0 and "nope is not in the manifest" in refused.stderr
    assert not (tmp_path / "r").exists()
