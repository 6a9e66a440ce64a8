"""PhysioNet 2019 PSV reading: the archives in place, canonical observations, FHIR round trip."""

from __future__ import annotations

import re
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fhir.resources.R4B.observation import Observation

from fhir_adapters.binning import bin_of, bin_start
from fhir_adapters.canonical import CanonicalObservation
from fhir_adapters.observations import MappingStats, map_observations
from fhir_adapters.variables import BY_PHYSIONET, VARIABLES
from training.challenge_rows import (
    HEADER,
    PSV_COLUMNS,
    PSV_UNITS,
    PSV_VARIABLES,
    PsvFormatError,
    PsvPatient,
    iter_patients,
    synthetic_icu_start,
    to_canonical,
    to_fhir_observations,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "physionet2019"
SET_A = DATA / "training_setA.zip"
SET_B = DATA / "training_setB.zip"
needs_data = pytest.mark.skipif(
    not (SET_A.is_file() and SET_B.is_file()),
    reason=f"PhysioNet 2019 archives not found in {DATA} (see shared/data/README.md)",
)
START = datetime(2019, 1, 1, 0, 7, tzinfo=UTC)  # off the clock hour on purpose


def without_source(observations: list[CanonicalObservation]) -> list[tuple[object, ...]]:
    return sorted((o.patient, o.variable, o.time, o.value) for o in observations)


def hand_made(rows: dict[int, dict[str, float]]) -> PsvPatient:
    """A patient with the given cells (ICULOS -> column -> value), NaN elsewhere."""
    hours = sorted(rows)
    values = np.full((len(hours), 34), np.nan)
    for r, hour in enumerate(hours):
        for column, value in rows[hour].items():
            values[r, PSV_COLUMNS.index(column)] = value
    return PsvPatient(
        patient="B/p999999",
        hospital="B",
        iculos=np.array(hours, dtype=np.int64),
        values=values,
        labels=np.zeros(len(hours), dtype=np.int64),
        age=100.0,
        sex="male",
        unit=None,
        hosp_adm_hours=None,
    )


def test_psv_variables_follow_the_header() -> None:
    assert len(PSV_COLUMNS) == len(PSV_VARIABLES) == 34
    assert PSV_COLUMNS[0] == "HR" and PSV_COLUMNS[-1] == "Platelets"
    assert tuple(BY_PHYSIONET[c].name for c in PSV_COLUMNS) == PSV_VARIABLES
    assert set(PSV_UNITS) == set(PSV_COLUMNS)
    assert PSV_UNITS["FiO2"] == "1" and VARIABLES["fio2"].unit == "1"


def test_synthetic_start_is_off_the_hour() -> None:
    assert synthetic_icu_start("A/p000012") == datetime(2019, 1, 1, 0, 12, tzinfo=UTC)
    assert synthetic_icu_start("B/p100001").tzinfo is UTC


def write_zip(path: Path, text: str) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("training_setA/", "")
        zipped.writestr("training_setA/p000001.psv", text)
    return path


def row(*cells: str) -> str:
    """A PSV row: the given leading cells, NaN up to Age, then fixed demographics."""
    vitals = [*cells, *["NaN"] * (34 - len(cells))]
    return "|".join([*vitals, "65", "1", "0", "1", "-2.5"])


def test_reads_a_hand_made_archive(tmp_path: Path) -> None:
    text = f"{HEADER}\n{row('80', '97')}|3|0\n{row('-0.5')}|4|1"  # no final newline
    (patient,) = iter_patients(write_zip(tmp_path / "a.zip", text))
    assert patient.patient == "A/p000001" and patient.hospital == "A"
    assert patient.iculos.tolist() == [3, 4] and patient.labels.tolist() == [0, 1]
    assert patient.values.shape == (2, 34)
    assert patient.values[0, :2].tolist() == [80.0, 97.0] and patient.values[1, 0] == -0.5
    assert (patient.age, patient.sex, patient.unit, patient.hosp_adm_hours) == (
        65.0,
        "male",
        "SICU",
        -2.5,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEADER.replace("HR", "Heart") + "\n", "header"),
        (f"{HEADER}\n{row('80', 'x')}|1|0\n", "not a number"),
        (f"{HEADER}\n{row('80')}|1\n", "cells in 1 rows"),
        (f"{HEADER}\n{row('80')}|NaN|0\n", "ICULOS"),
    ],
)
def test_refuses_malformed_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PsvFormatError, match=message):
        list(iter_patients(write_zip(tmp_path / "bad.zip", text)))


def test_implausible_values_are_counted_not_emitted() -> None:
    # The README's artefacts: FiO2 -50 and 4000 (set B), Temp 20.9 °C.
    patient = hand_made(
        {
            1: {"FiO2": -50, "Temp": 20.9, "HR": 88},
            2: {"FiO2": 4000, "Temp": 37.2},
            3: {"FiO2": 0.4},
            4: {},
        }
    )
    found, stats = to_canonical(patient, START)
    assert {(o.source, o.value) for o in found} == {
        ("B/p999999#1:HR", 88.0),
        ("B/p999999#2:Temp", 37.2),
        ("B/p999999#3:FiO2", 0.4),
    }
    assert stats.implausible == {"fio2": 2, "temperature": 1}
    assert (stats.rows, stats.empty_rows, stats.cells, stats.mapped) == (4, 1, 6, 3)
    # The FHIR form carries the implausible cells too, so the FHIR reader drops the same ones.
    fhir_stats = MappingStats()
    read = map_observations(to_fhir_observations(patient, START, "Patient/x"), fhir_stats)
    assert without_source(read) == without_source(
        [CanonicalObservation("x", o.variable, o.time, o.value, o.source) for o in found]
    )
    assert fhir_stats.implausible == stats.implausible


def test_fhir_output_is_valid_r4_for_every_column() -> None:
    patient = hand_made({5: {c: 1.0 for c in PSV_COLUMNS}})
    resources = to_fhir_observations(patient, START, "Patient/abc")
    assert len(resources) == 34
    for resource in resources:
        Observation.model_validate(resource)  # R4B is R4 for Observation (fhir_adapters.validated)
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", resource["id"])
        assert resource["effectiveDateTime"] == "2019-01-01T04:07:00Z"
    hr = resources[PSV_COLUMNS.index("HR")]
    assert hr["code"]["coding"][0]["code"] == "8867-4"
    assert hr["category"][0]["coding"][0]["code"] == "vital-signs"
    assert hr["valueQuantity"]["code"] == "/min"
    fio2 = resources[PSV_COLUMNS.index("FiO2")]
    assert fio2["category"][0]["coding"][0]["code"] == "laboratory"
    assert fio2["valueQuantity"]["code"] == "1"


@needs_data
@pytest.mark.parametrize(("archive", "hospital"), [(SET_A, "A"), (SET_B, "B")])
def test_first_patients_of_each_set(archive: Path, hospital: str) -> None:
    patients = list(iter_patients(archive, limit=200))
    assert len(patients) == 200
    assert len({p.patient for p in patients}) == 200
    for p in patients:
        assert re.fullmatch(rf"{hospital}/p\d{{6}}", p.patient) and p.hospital == hospital
        assert p.values.ndim == 2 and p.values.shape == (len(p.iculos), 34)
        assert len(p.labels) == len(p.iculos) >= 8  # the challenge excluded shorter stays
        assert (np.diff(p.iculos) == 1).all() and p.iculos[0] >= 1
        assert set(p.labels.tolist()) <= {0, 1} and (np.diff(p.labels) >= 0).all()
        assert p.sex in {"female", "male"}


@needs_data
def test_known_cells_checked_by_hand() -> None:
    # unzip -p training_setA.zip training_setA/p000001.psv: 54 rows, ICULOS 1-54; the row with
    # ICULOS 4 is 90|95|NaN|NaN|NaN|NaN|30|NaN|24|NaN|NaN|7.36|100|..., Age 83.14, Gender 0,
    # Unit1/Unit2 NaN, HospAdmTime -0.03. training_setB/p100001.psv: 73|1|1|0|-214.64.
    a, b = (
        next(iter_patients(SET_A, ids={"p000001"})),
        next(iter_patients(SET_B, ids={"B/p100001"})),
    )
    assert a.patient == "A/p000001" and a.iculos.tolist() == list(range(1, 55))
    cells = dict(zip(PSV_COLUMNS, a.values[3].tolist(), strict=True))
    assert (cells["HR"], cells["O2Sat"], cells["Resp"], cells["pH"], cells["PaCO2"]) == (
        90.0,
        95.0,
        30.0,
        7.36,
        100.0,
    )
    assert np.isnan(cells["Temp"])
    assert (a.age, a.sex, a.unit, a.hosp_adm_hours) == (83.14, "female", None, -0.03)
    assert (b.age, b.sex, b.unit, b.hosp_adm_hours) == (73.0, "male", "MICU", -214.64)
    found, _ = to_canonical(a, START)
    ph = next(o for o in found if o.source == "A/p000001#4:pH")
    assert (ph.variable, ph.value, ph.time) == ("ph", 7.36, bin_start(START, 4))
    assert all(bin_of(o.time, START) == int(o.source.split("#")[1].split(":")[0]) for o in found)


@needs_data
def test_filters_by_id_and_limit() -> None:
    picked = [p.patient for p in iter_patients(SET_A, ids={"p000002", "A/p000001", "B/p100001"})]
    assert picked == ["A/p000001", "A/p000002"]
    assert list(iter_patients(SET_A, limit=0)) == []
    assert len(list(iter_patients(SET_B, limit=3))) == 3


@needs_data
def test_real_implausible_fio2_is_dropped() -> None:
    # training_setB/p101215.psv charts FiO2 1 at ICULOS 7 and FiO2 2 (impossible) at ICULOS 10.
    patient = next(iter_patients(SET_B, ids={"p101215"}))
    found, stats = to_canonical(patient, START)
    sources = {o.source for o in found}
    assert "B/p101215#7:FiO2" in sources and "B/p101215#10:FiO2" not in sources
    assert stats.implausible["fio2"] >= 1
    assert stats.cells == stats.mapped + sum(stats.implausible.values())


@needs_data
def test_fhir_and_psv_give_the_same_canonical_observations() -> None:
    ids = {"p000001", "p000002", "p000009", "p100001", "p100002", "p101215"}
    patients = [*iter_patients(SET_A, ids=ids), *iter_patients(SET_B, ids=ids)]
    assert len(patients) >= 5
    for patient in patients:
        start = synthetic_icu_start(patient.patient)
        from_psv, psv_stats = to_canonical(patient, start)
        resources = to_fhir_observations(patient, start, f"Patient/{patient.patient[2:]}")
        fhir_stats = MappingStats()
        bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
        from_fhir = map_observations([bundle], fhir_stats, patient=patient.patient)
        assert from_psv and without_source(from_fhir) == without_source(from_psv)
        assert fhir_stats.implausible == psv_stats.implausible
        assert fhir_stats.mapped == psv_stats.mapped == len(from_psv)
        assert fhir_stats.observations == psv_stats.cells == len(resources)
