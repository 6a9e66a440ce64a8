"""The variable catalogue: names, units, ranges, codes, and O(1) lookups."""

from __future__ import annotations

import math
import re

import pytest

from fhir_adapters.units import is_known
from fhir_adapters.variables import (
    BY_PHYSIONET,
    LOINC_INDEX,
    LOINC_OID_SYSTEM,
    LOINC_PARTS,
    LOINC_SYSTEM,
    PANELS,
    VARIABLES,
    lookup,
    plausible,
)

# The names other modules code against (the list); the catalogue must be exactly these.
EXPECTED = {
    "weight",
    "heart_rate", "spo2", "temperature", "sbp", "dbp", "map", "resp_rate", "etco2",
    "base_excess", "hco3", "fio2", "ph", "paco2", "pao2", "sao2", "ast", "bun",
    "alkaline_phosphatase", "calcium", "chloride", "creatinine", "bilirubin_direct", "glucose",
    "lactate", "magnesium", "phosphate", "potassium", "bilirubin_total", "troponin_i",
    "hematocrit", "hemoglobin", "ptt", "wbc", "fibrinogen", "platelets",
    "gcs_total", "consciousness", "supplemental_oxygen", "oxygen_flow_rate", "urine_output",
}  # fmt: skip

# The PhysioNet 2019 PSV header, less demographics, ICULOS and the label (shared/data README §1).
PSV_VARIABLES = [
    "HR",
    "O2Sat",
    "Temp",
    "SBP",
    "MAP",
    "DBP",
    "Resp",
    "EtCO2",
    "BaseExcess",
    "HCO3",
    "FiO2",
    "pH",
    "PaCO2",
    "SaO2",
    "AST",
    "BUN",
    "Alkalinephos",
    "Calcium",
    "Chloride",
    "Creatinine",
    "Bilirubin_direct",
    "Glucose",
    "Lactate",
    "Magnesium",
    "Phosphate",
    "Potassium",
    "Bilirubin_total",
    "TroponinI",
    "Hct",
    "Hgb",
    "PTT",
    "WBC",
    "Fibrinogen",
    "Platelets",
]

# Variables no LOINC code states on its own (see its comment in the catalogue).
NO_CODE = {"supplemental_oxygen"}

LOINC_CODE = re.compile(r"^\d{1,7}-\d$")


def loinc_check_digit_ok(code: str) -> bool:
    """LOINC's mod-10 check digit (LOINC Users' Guide, Appendix: calculating mod 10)."""
    body, check = code.split("-")
    digits = [int(d) for d in body]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 0:  # rightmost digit and every other one going left are doubled
            doubled = digit * 2
            total += doubled // 10 + doubled % 10
        else:
            total += digit
    return (10 - total % 10) % 10 == int(check)


def test_catalogue_names_are_exactly_the_agreed_ones() -> None:
    assert set(VARIABLES) == EXPECTED
    assert all(name == variable.name for name, variable in VARIABLES.items())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_variable_has_unit_range_and_code(name: str) -> None:
    variable = VARIABLES[name]
    assert variable.unit
    assert variable.label
    assert math.isfinite(variable.low) and math.isfinite(variable.high)
    assert variable.low < variable.high
    assert variable.kind in {"vital", "lab", "observation"}
    if name in NO_CODE:
        assert variable.loinc == ()
    else:
        assert variable.loinc, f"{name} has no LOINC code"
    # The canonical unit is itself accepted by the unit converter.
    assert is_known(variable, variable.unit)


def test_loinc_codes_are_well_formed_with_valid_check_digits() -> None:
    codes = [c for v in VARIABLES.values() for c in (*v.loinc, *v.components)]
    codes += [c for panel, parts in PANELS.items() for c in (panel, *parts)]
    for code in codes:
        assert LOINC_CODE.match(code), code
        assert loinc_check_digit_ok(code), f"{code} fails the LOINC check digit"


def test_no_loinc_code_means_two_variables() -> None:
    seen: dict[str, str] = {}
    for variable in VARIABLES.values():
        for code in variable.loinc:
            assert code not in seen, f"{code}: {seen.get(code)} and {variable.name}"
            seen[code] = variable.name
    assert len(LOINC_INDEX) == len(seen)


def test_physionet_columns_map_one_to_one() -> None:
    assert set(BY_PHYSIONET) == set(PSV_VARIABLES)
    assert BY_PHYSIONET["O2Sat"].name == "spo2"
    assert BY_PHYSIONET["TroponinI"].name == "troponin_i"
    assert VARIABLES["pao2"].physionet is None


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("temperature", "Cel"),
        ("spo2", "%"),
        ("fio2", "1"),  # PhysioNet FiO2 values are fractions
        ("lactate", "mmol/L"),  # README caveat: the data are mmol/L whatever Table 1 says
        ("wbc", "10*3/uL"),
        ("platelets", "10*3/uL"),
        ("ph", "[pH]"),
        ("sbp", "mm[Hg]"),
        ("paco2", "mm[Hg]"),
        ("heart_rate", "/min"),
        ("resp_rate", "/min"),
        ("magnesium", "mg/dL"),
    ],
)
def test_canonical_units(name: str, unit: str) -> None:
    assert VARIABLES[name].unit == unit


def test_pulse_oximetry_dual_coding() -> None:
    # US Core sends both codings; MIMIC sends 2708-6 alone: both must mean SpO2.
    assert lookup(LOINC_SYSTEM, "59408-5") is VARIABLES["spo2"]
    assert lookup(LOINC_SYSTEM, "2708-6") is VARIABLES["spo2"]


def test_blood_pressure_panel_components() -> None:
    assert PANELS["85354-9"] == ("8480-6", "8462-4")
    assert PANELS["55284-4"] == ("8480-6", "8462-4")
    assert lookup(LOINC_SYSTEM, "8480-6") is VARIABLES["sbp"]
    assert lookup(LOINC_SYSTEM, "8462-4") is VARIABLES["dbp"]
    # The panel itself carries no value: it is not a variable.
    assert lookup(LOINC_SYSTEM, "85354-9") is None


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("8867-4", "heart_rate"),
        ("9279-1", "resp_rate"),
        ("8310-5", "temperature"),
        ("8331-1", "temperature"),
        ("8332-9", "temperature"),
        ("8478-0", "map"),
        ("9269-2", "gcs_total"),
        ("2524-7", "lactate"),
        ("32693-4", "lactate"),
        ("2160-0", "creatinine"),
        ("6690-2", "wbc"),
        ("777-3", "platelets"),
        ("1975-2", "bilirubin_total"),
        ("3150-0", "fio2"),
        ("3151-8", "oxygen_flow_rate"),
        ("9187-6", "urine_output"),
        ("2028-9", "hco3"),
        ("89579-7", "troponin_i"),
    ],
)
def test_loinc_lookup(code: str, name: str) -> None:
    assert lookup(LOINC_SYSTEM, code) is VARIABLES[name]
    assert lookup(LOINC_OID_SYSTEM, code) is VARIABLES[name]


def test_gcs_parts_are_parts_not_totals() -> None:
    assert VARIABLES["gcs_total"].components == ("9267-6", "9270-0", "9268-4")
    for code in VARIABLES["gcs_total"].components:
        assert LOINC_PARTS[code] is VARIABLES["gcs_total"]
        assert lookup(LOINC_SYSTEM, code) is None


def test_unknown_codes_and_systems() -> None:
    assert lookup(LOINC_SYSTEM, "0000-0") is None
    assert lookup("http://snomed.info/sct", "8867-4") is None
    assert lookup("", "") is None


def test_mimic_site_codes_through_lookup() -> None:
    chart = "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-chartevents-d-items"
    assert lookup(chart, "220045") is VARIABLES["heart_rate"]
    assert (
        lookup("http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-d-labitems", "50813")
        is (VARIABLES["lactate"])
    )


def test_plausible_bounds_are_inclusive_and_nan_is_not() -> None:
    hr = VARIABLES["heart_rate"]
    assert plausible(hr, hr.low) and plausible(hr, hr.high)
    assert not plausible(hr, hr.high + 1)
    assert not plausible(hr, math.nan)
    assert not plausible(VARIABLES["fio2"], 50)  # a percent left unconverted is caught
