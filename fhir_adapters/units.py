"""Unit conversion: a value in the unit an export sent, to its variable's canonical UCUM unit.

Every conversion is linear, ``canonical = value * factor + offset`` (the offset is only for
temperatures), precomputed per variable and per accepted unit spelling, so a conversion is one
dict read and one multiply. A unit we do not know for that variable raises ``UnitError``; nothing
is ever guessed from the value, with one documented exception (a bare FiO2/SpO2/SaO2, below).

Why a table and not a UCUM library: the conversions that matter here are mass <-> substance
concentrations, which need a molar mass per analyte that UCUM does not carry; real exports send
non-UCUM spellings (``K/uL``, ``mm Hg``, ``bpm``, ``mEq/L``, MIMIC's ``ml``) that a UCUM parser
rejects; and the set of units per variable is small and closed. The candidates on PyPI were
``ucumvert`` (a UCUM grammar on top of pint) and ``ucumate`` (needs a JVM); neither removes the
table. Unit definitions follow UCUM 2.1 (https://ucum.org/ucum): ``mm[Hg]`` = 133.322 Pa, so
1 kPa = 7.50062 mm[Hg]; ``[degF]`` = 5/9 K with 0 °F = 255.372 K; ``10*3/uL`` = ``10*9/L``;
``kat`` = mol/s, so 1 µkat/L = 60 U/L (U = µmol/min).

Molar masses (g/mol; IUPAC standard atomic weights): glucose C6H12O6 180.16; creatinine C4H7N3O
113.12; lactate (lactic acid) 90.08; calcium 40.08; magnesium 24.305; phosphate reported as
phosphorus 30.97; bilirubin 584.66; urea nitrogen 28.014 (two N per urea, so 1 mmol/L urea =
2.8014 mg/dL BUN); haemoglobin 16.114 kg/mol per haem monomer (the mmol/L used in the Netherlands,
ICSH). Divalent ions: 1 mEq/L Ca or Mg = 0.5 mmol/L; monovalent: mEq/L = mmol/L.

Bare values. A value with no unit converts only where the canonical unit cannot be mistaken:
rates per minute, blood pressure (mm[Hg] everywhere in practice), pH and scores. FiO2, SpO2 and
SaO2 arrive both as fractions and as percents; with no unit, FiO2 > 1 is a percent and <= 1 a
fraction, and SpO2/SaO2 <= 1 is a fraction (neither is ever truly 1 % in a living patient).
Everything else without a unit raises ``UnitError``; a site map can name the unit its codes imply.
"""

from __future__ import annotations

from typing import Final

from fhir_adapters.variables import VARIABLES, Variable


class UnitError(ValueError):
    """A unit we cannot convert for this variable (unknown, missing, or of another dimension)."""


# Spellings seen in real exports (FHIR valueQuantity.unit/code, MIMIC valueuom, HL7 v2 OBX-6),
# keyed in lower case, each mapped to one UCUM code. Lower-casing is safe because a spelling is
# only accepted for variables whose table lists its UCUM code (no "F" farad for a temperature).
_SPELLINGS: Final[dict[str, tuple[str, ...]]] = {
    "/min": (
        "/min",
        "1/min",
        "min-1",
        "{beats}/min",
        "beats/min",
        "beats/minute",
        "bpm",
        "beat/min",
        "{breaths}/min",
        "breaths/min",
        "breaths/minute",
        "breath/min",
        "insp/min",
        "rpm",
        "/minute",
        "per minute",
    ),
    "%": ("%", "percent", "pct", "%{saturation}"),
    "1": ("1", "{ratio}", "{fraction}", "fraction", "ratio", "l/l"),
    "Cel": ("cel", "°c", "degc", "deg c", "c", "celsius", "oc", "℃"),
    "[degF]": ("[degf]", "°f", "degf", "deg f", "f", "fahrenheit", "of", "℉"),
    "K": ("k", "kelvin"),
    "mm[Hg]": ("mm[hg]", "mmhg", "mm hg", "mm(hg)", "millimeter of mercury"),
    "kPa": ("kpa",),
    "mmol/L": ("mmol/l", "mmol per l"),
    "meq/L": ("meq/l", "mequiv/l", "meq per l"),
    "umol/L": ("umol/l", "µmol/l", "μmol/l", "micromol/l"),
    "mg/dL": ("mg/dl", "mg%", "mg per dl"),
    "g/dL": ("g/dl",),
    "g/L": ("g/l",),
    "U/L": ("u/l", "iu/l", "[iu]/l", "units/l", "unit/l"),
    "ukat/L": ("ukat/l", "µkat/l", "μkat/l"),
    "ng/mL": ("ng/ml", "ug/l", "µg/l", "μg/l", "mcg/l"),
    "ng/L": ("ng/l", "pg/ml"),
    "10*3/uL": (
        "10*3/ul",
        "10^3/ul",
        "10³/µl",
        "10^3/µl",
        "10*3/µl",
        "x10*3/ul",
        "x10^3/ul",
        "k/ul",
        "k/µl",
        "thou/ul",
        "10*3/mm3",
        "10^3/mm3",
        "10*9/l",
        "10^9/l",
        "x10*9/l",
        "x10^9/l",
        "10⁹/l",
        "/nl",
        "10*3/mcl",
        "10^3/mcl",
        "k/mcl",
        # "G/L" (giga per litre) is how French laboratories report counts; it is accepted only
        # for count variables, so it never meets the mass unit g/L of haemoglobin.
        "g/l",
    ),
    "/uL": ("/ul", "/µl", "/mm3", "cells/ul", "/mcl", "10*6/l", "10^6/l"),
    "s": ("s", "sec", "secs", "second", "seconds"),
    "[pH]": ("[ph]", "ph", "{ph}", "units", "ph units"),
    "{score}": ("{score}", "score", "{points}", "points", "{total}"),
    "L/min": ("l/min", "lpm", "l/minute", "liters/min", "litres/min"),
    "mL/min": ("ml/min",),
    "mL": ("ml", "cc", "cm3", "milliliter", "millilitre"),
    "kg": ("kg", "kilogram", "kilograms", "kgs"),
    "g": ("g", "gram", "grams"),
    "[lb_av]": ("[lb_av]", "lb", "lbs", "pound", "pounds"),
    "L": ("l",),
}

# Per canonical unit: the UCUM units accepted and (factor, offset) to the canonical unit.
_IDENTITY: Final = (1.0, 0.0)
_MMHG_PER_KPA: Final = 1000 / 133.322


def _molar(mg_per_mmol: float) -> dict[str, tuple[float, float]]:
    """mg/dL from mmol/L (x molar mass / 10) and from µmol/L (x molar mass / 10000)."""
    return {
        "mg/dL": _IDENTITY,
        "mmol/L": (mg_per_mmol / 10, 0.0),
        "umol/L": (mg_per_mmol / 10_000, 0.0),
    }


_PRESSURE: Final = {"mm[Hg]": _IDENTITY, "kPa": (_MMHG_PER_KPA, 0.0)}
_MONOVALENT: Final = {"mmol/L": _IDENTITY, "meq/L": _IDENTITY}
_ENZYME: Final = {"U/L": _IDENTITY, "ukat/L": (60.0, 0.0)}
_COUNT: Final = {"10*3/uL": _IDENTITY, "/uL": (0.001, 0.0)}
_SCORE: Final = {"{score}": _IDENTITY, "1": _IDENTITY}

_TABLES: Final[dict[str, dict[str, tuple[float, float]]]] = {
    "heart_rate": {"/min": _IDENTITY},
    "resp_rate": {"/min": _IDENTITY},
    "spo2": {"%": _IDENTITY, "1": (100.0, 0.0)},
    "sao2": {"%": _IDENTITY, "1": (100.0, 0.0)},
    "temperature": {
        "Cel": _IDENTITY,
        "[degF]": (5 / 9, -32 * 5 / 9),
        "K": (1.0, -273.15),
    },
    "sbp": _PRESSURE,
    "dbp": _PRESSURE,
    "map": _PRESSURE,
    "etco2": _PRESSURE,
    "paco2": _PRESSURE,
    "pao2": _PRESSURE,
    "base_excess": _MONOVALENT,
    "hco3": _MONOVALENT,
    "chloride": _MONOVALENT,
    "potassium": _MONOVALENT,
    "fio2": {"1": _IDENTITY, "%": (0.01, 0.0)},
    "ph": {"[pH]": _IDENTITY, "1": _IDENTITY},
    "ast": _ENZYME,
    "alkaline_phosphatase": _ENZYME,
    # BUN: urea mmol/L -> urea-nitrogen mg/dL with 28.014 g/mol of N2 per urea.
    "bun": {"mg/dL": _IDENTITY, "mmol/L": (2.8014, 0.0)},
    "glucose": _molar(180.16),
    "creatinine": _molar(113.12),
    "bilirubin_total": _molar(584.66),
    "bilirubin_direct": _molar(584.66),
    # Divalent: 1 mEq/L = 0.5 mmol/L.
    "calcium": {**_molar(40.08), "meq/L": (40.08 / 20, 0.0)},
    "magnesium": {**_molar(24.305), "meq/L": (24.305 / 20, 0.0)},
    "phosphate": _molar(30.97),
    # Canonical mmol/L: mg/dL -> mmol/L divides by molar mass / 10.
    "lactate": {"mmol/L": _IDENTITY, "mg/dL": (10 / 90.08, 0.0), "meq/L": _IDENTITY},
    "troponin_i": {"ng/mL": _IDENTITY, "ng/L": (0.001, 0.0)},
    "hematocrit": {"%": _IDENTITY, "1": (100.0, 0.0)},
    "hemoglobin": {"g/dL": _IDENTITY, "g/L": (0.1, 0.0), "mmol/L": (1.6114, 0.0)},
    "fibrinogen": {"mg/dL": _IDENTITY, "g/L": (100.0, 0.0)},
    "ptt": {"s": _IDENTITY},
    "wbc": _COUNT,
    "platelets": _COUNT,
    "gcs_total": _SCORE,
    "consciousness": _SCORE,
    "supplemental_oxygen": {"1": _IDENTITY},
    "oxygen_flow_rate": {"L/min": _IDENTITY, "mL/min": (0.001, 0.0)},
    "urine_output": {"mL": _IDENTITY, "L": (1000.0, 0.0)},
    # UCUM: [lb_av] = 453.59237 g exactly (the international avoirdupois pound).
    "weight": {"kg": _IDENTITY, "g": (0.001, 0.0), "[lb_av]": (0.45359237, 0.0)},
}

# Variables whose value may come with no unit at all, and the unit it is then in (see docstring).
_BARE: Final[dict[str, str]] = {
    "heart_rate": "/min",
    "resp_rate": "/min",
    "sbp": "mm[Hg]",
    "dbp": "mm[Hg]",
    "map": "mm[Hg]",
    "ph": "[pH]",
    "gcs_total": "{score}",
    "consciousness": "{score}",
    "supplemental_oxygen": "1",
}
_BY_MAGNITUDE: Final = frozenset({"fio2", "spo2", "sao2"})


def _flatten() -> dict[tuple[str, str], tuple[float, float]]:
    missing = VARIABLES.keys() - _TABLES.keys()
    if missing:
        raise RuntimeError(f"no unit table for {sorted(missing)}")
    spelling_of: dict[str, list[str]] = {}
    for ucum, spellings in _SPELLINGS.items():
        for spelling in (ucum, *spellings):
            spelling_of.setdefault(ucum, []).append(spelling.lower())
    flat: dict[tuple[str, str], tuple[float, float]] = {}
    for name, table in _TABLES.items():
        if VARIABLES[name].unit not in table:
            raise RuntimeError(f"{name}: canonical unit {VARIABLES[name].unit} not in its table")
        for ucum, factors in table.items():
            for spelling in (ucum, *spelling_of.get(ucum, ())):
                if flat.setdefault((name, spelling), factors) != factors:
                    raise RuntimeError(f"{name}: spelling {spelling!r} means two units")
    return flat


_FLAT: Final = _flatten()


def conversion(variable: Variable, unit: str) -> tuple[float, float]:
    """``(factor, offset)`` from ``unit`` to the canonical unit of ``variable``, else UnitError."""
    found = _FLAT.get((variable.name, unit))
    if found is None:
        found = _FLAT.get((variable.name, unit.strip().lower()))
    if found is None:
        raise UnitError(f"unit {unit!r} is not one we convert for {variable.name}")
    return found


def is_known(variable: Variable, unit: str | None) -> bool:
    """True when ``to_canonical`` accepts ``unit`` (or no unit) for ``variable``."""
    if unit is None or not unit.strip():
        return variable.name in _BARE or variable.name in _BY_MAGNITUDE
    try:
        conversion(variable, unit)
    except UnitError:
        return False
    return True


def to_canonical(variable: Variable, value: float, unit: str | None) -> float:
    """``value`` in ``unit`` (UCUM code or a common spelling; None/"" for none) in canonical units.

    Raises ``UnitError`` for a unit not accepted for this variable, or a missing unit where the
    canonical unit cannot be assumed. Range checks are the caller's (``Variable.low``/``high``).
    """
    if unit is None or not unit.strip():
        name = variable.name
        if name in _BY_MAGNITUDE:
            if name == "fio2":
                return value / 100 if value > 1 else value
            return value * 100 if value <= 1 else value
        bare = _BARE.get(name)
        if bare is None:
            raise UnitError(f"{name} needs a unit (canonical {variable.unit}); none was given")
        unit = bare
    factor, offset = conversion(variable, unit)
    return value * factor + offset
