"""Unit conversion to canonical units; every expected number below was worked out by hand."""

from __future__ import annotations

import pytest

from fhir_adapters.units import UnitError, conversion, is_known, to_canonical
from fhir_adapters.variables import VARIABLES


def convert(name: str, value: float, unit: str | None) -> float:
    return to_canonical(VARIABLES[name], value, unit)


@pytest.mark.parametrize(
    ("name", "value", "unit", "expected"),
    [
        # Temperature: (F - 32) * 5/9; K - 273.15.
        ("temperature", 98.6, "[degF]", 37.0),
        ("temperature", 98.6, "degF", 37.0),
        ("temperature", 212.0, "°F", 100.0),
        ("temperature", 101.3, "F", 38.5),  # MIMIC ED vitals send unit "F", code "[degF]"
        ("temperature", 310.15, "K", 37.0),
        ("temperature", 37.2, "Cel", 37.2),
        ("temperature", 37.2, "°C", 37.2),
        # Glucose 180.16 g/mol: 1 mmol/L = 18.016 mg/dL.
        ("glucose", 5.0, "mmol/L", 90.08),
        ("glucose", 100.0, "mg/dL", 100.0),
        # Creatinine 113.12 g/mol: 88.4 umol/L = 1.0000 mg/dL (88.4 * 0.011312).
        ("creatinine", 88.4, "umol/L", 0.9999808),
        ("creatinine", 100.0, "µmol/L", 1.1312),
        ("creatinine", 0.1, "mmol/L", 1.1312),
        # Urea 7.14 mmol/L -> BUN 20.0 mg/dL (x 2.8014).
        ("bun", 7.14, "mmol/L", 20.001996),
        # Lactate 90.08 g/mol: 18.016 mg/dL = 2.0 mmol/L.
        ("lactate", 18.016, "mg/dL", 2.0),
        ("lactate", 2.0, "mmol/L", 2.0),
        ("lactate", 2.0, "mEq/L", 2.0),
        # Calcium 40.08: 2.5 mmol/L = 10.02 mg/dL; 5 mEq/L (divalent) = 2.5 mmol/L.
        ("calcium", 2.5, "mmol/L", 10.02),
        ("calcium", 5.0, "mEq/L", 10.02),
        # Magnesium 24.305: 1 mmol/L = 2.4305 mg/dL; 2 mEq/L = 1 mmol/L.
        ("magnesium", 1.0, "mmol/L", 2.4305),
        ("magnesium", 2.0, "meq/L", 2.4305),
        # Phosphate as phosphorus 30.97: 1 mmol/L = 3.097 mg/dL.
        ("phosphate", 1.0, "mmol/L", 3.097),
        # Bilirubin 584.66: 17.1 umol/L = 0.99977 mg/dL; 100 umol/L = 5.8466 mg/dL.
        ("bilirubin_total", 100.0, "umol/L", 5.8466),
        ("bilirubin_direct", 17.1, "µmol/L", 0.9997686),
        # Hemoglobin: g/L / 10; mmol/L (monomer) x 1.6114.
        ("hemoglobin", 135.0, "g/L", 13.5),
        ("hemoglobin", 8.0, "mmol/L", 12.8912),
        # Fibrinogen: 3 g/L = 300 mg/dL.
        ("fibrinogen", 3.0, "g/L", 300.0),
        # Cell counts: 10^9/L is 10^3/uL.
        ("wbc", 12.3, "10*9/L", 12.3),
        ("wbc", 12.3, "10^9/L", 12.3),
        ("wbc", 12.3, "K/uL", 12.3),
        ("wbc", 12.3, "10^3/uL", 12.3),
        ("wbc", 12300.0, "/uL", 12.3),
        ("platelets", 250.0, "10*3/uL", 250.0),
        ("platelets", 250.0, "G/L", 250.0),
        # FiO2 and saturations: percent <-> fraction.
        ("fio2", 40.0, "%", 0.4),
        ("fio2", 0.4, "1", 0.4),
        ("spo2", 0.97, "1", 97.0),
        ("spo2", 97.0, "%", 97.0),
        ("sao2", 0.95, "1", 95.0),
        ("hematocrit", 0.42, "L/L", 42.0),
        # Pressures: 1 kPa = 1000/133.322 mm[Hg] = 7.500637 mm[Hg].
        ("paco2", 5.3, "kPa", 39.75337),
        ("pao2", 13.3322, "kPa", 100.0),
        ("sbp", 120.0, "mmHg", 120.0),
        ("sbp", 120.0, "mm Hg", 120.0),
        ("map", 70.0, "mm[Hg]", 70.0),
        # Troponin: 1 ng/mL = 1000 ng/L = 1000 pg/mL; ug/L = ng/mL.
        ("troponin_i", 45.0, "ng/L", 0.045),
        ("troponin_i", 45.0, "pg/mL", 0.045),
        ("troponin_i", 0.045, "ug/L", 0.045),
        # Monovalent ions: mEq/L = mmol/L.
        ("potassium", 4.1, "mEq/L", 4.1),
        ("chloride", 101.0, "meq/L", 101.0),
        ("hco3", 24.0, "mmol/L", 24.0),
        # Enzymes: U/L = IU/L; 1 ukat/L = 60 U/L.
        ("ast", 40.0, "IU/L", 40.0),
        ("alkaline_phosphatase", 1.5, "ukat/L", 90.0),
        # Rates, as real exports spell them.
        ("heart_rate", 72.0, "beats/minute", 72.0),
        ("heart_rate", 72.0, "/min", 72.0),
        ("heart_rate", 72.0, "bpm", 72.0),
        ("resp_rate", 18.0, "breaths/min", 18.0),
        ("resp_rate", 18.0, "insp/min", 18.0),
        ("ph", 7.38, "units", 7.38),  # MIMIC labevents' spelling
        ("ptt", 33.4, "sec", 33.4),
        ("oxygen_flow_rate", 2000.0, "mL/min", 2.0),
        ("urine_output", 0.35, "L", 350.0),
        ("urine_output", 175.0, "ml", 175.0),  # MIMIC outputevents' spelling
        ("gcs_total", 14.0, "{score}", 14.0),
        # Weight: 1 [lb_av] = 0.45359237 kg exactly (UCUM); Synthea sends "kg".
        ("weight", 154.0, "[lb_av]", 69.85322498),
        ("weight", 3250.0, "g", 3.25),
        ("weight", 70.2, "kg", 70.2),
    ],
)
def test_conversion(name: str, value: float, unit: str, expected: float) -> None:
    assert convert(name, value, unit) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("fio2", 40.0, 0.4),  # a bare FiO2 > 1 is a percent
        ("fio2", 0.4, 0.4),
        ("fio2", 1.0, 1.0),  # 1 is pure oxygen, not 1 %
        ("spo2", 0.97, 97.0),
        ("spo2", 97.0, 97.0),
        ("sao2", 98.0, 98.0),
        ("heart_rate", 80.0, 80.0),
        ("sbp", 110.0, 110.0),
        ("ph", 7.4, 7.4),
        ("gcs_total", 15.0, 15.0),
        ("consciousness", 2.0, 2.0),
        ("supplemental_oxygen", 1.0, 1.0),
    ],
)
def test_bare_values_where_the_unit_cannot_be_mistaken(
    name: str, value: float, expected: float
) -> None:
    assert convert(name, value, None) == pytest.approx(expected)
    assert convert(name, value, "") == pytest.approx(expected)
    assert is_known(VARIABLES[name], None)


@pytest.mark.parametrize("name", ["temperature", "glucose", "creatinine", "lactate", "wbc"])
def test_no_unit_is_refused_where_it_matters(name: str) -> None:
    # 37 could be °C; 98.6 is °F. 5 could be mmol/L or mg/dL. No guessing.
    with pytest.raises(UnitError, match=name):
        convert(name, 5.0, None)
    assert not is_known(VARIABLES[name], None)


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("temperature", "mm[Hg]"),  # another dimension
        ("glucose", "furlongs"),
        ("heart_rate", "Hz"),
        ("etco2", "%"),  # would need the barometric pressure
        ("hemoglobin", "g/mol"),
        ("wbc", "mg/dL"),
        ("fio2", "L/min"),  # a flow is not a fraction
    ],
)
def test_unknown_unit_raises(name: str, unit: str) -> None:
    with pytest.raises(UnitError, match=name):
        convert(name, 1.0, unit)
    assert not is_known(VARIABLES[name], unit)


def test_unit_error_is_a_value_error() -> None:
    assert issubclass(UnitError, ValueError)


def test_spellings_are_case_and_space_tolerant() -> None:
    assert convert("glucose", 5.0, " MMOL/L ") == pytest.approx(90.08)
    assert convert("sbp", 120.0, "MMHG") == 120.0
    assert convert("creatinine", 1.0, "mg/dl") == 1.0


def test_canonical_unit_is_identity_for_every_variable() -> None:
    for variable in VARIABLES.values():
        assert conversion(variable, variable.unit) == (1.0, 0.0)


def test_a_percent_labelled_fraction_is_not_silently_fixed() -> None:
    # "0.5 %" converts to 0.005, which the caller's plausible range then rejects and counts.
    assert convert("fio2", 0.5, "%") == pytest.approx(0.005)
