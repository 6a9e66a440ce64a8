"""The variable catalogue: every clinical variable the service reads, with its canonical unit.

One ``Variable`` per name. Names are the project's vocabulary (FHIR parsing, the Redis timeline,
features and training all use them); canonical units are UCUM codes (https://ucum.org, UCUM 2.1).
Where the PhysioNet/CinC 2019 challenge has the variable, the canonical unit is the unit its PSV
values are in (Reyna et al., Crit Care Med 2020;48:210, Table 1, checked against the values in
``shared/data/physionet2019``), so PSV rows convert with identity. Two columns are mislabelled in
that table and we follow the data, not the label: FiO2 is a fraction (median 0.5), Lactate is
mmol/L (median 1.8), and Magnesium, labelled "mmol/dL", is mg/dL (median 2.0).

LOINC codes (https://loinc.org) were checked against the long common names in the NLM LHC
flowsheet table (LHNCBC/flowsheet-lhc), the HL7 FHIR R4 vital-signs profile, the Synthea QI-Core
bundles and the MIMIC-IV FHIR demo in ``shared/data``, and the MIMIC code repository's
``outputevents_to_loinc.csv`` (9187-6 urine output). ``2708-6`` ("Oxygen saturation in Arterial
blood") is mapped to ``spo2``, not ``sao2``: the FHIR R4 vital-signs profile uses it as the oxygen
saturation vital sign, US Core sends it beside 59408-5, and MIMIC codes pulse oximetry with it
alone. Arterial-blood-gas SaO2 arrives as 2713-6 / 20564-1 or a site code.

Plausible ranges (``low``/``high``) are *not* reference ranges. They are limits chosen by us to
reject unit mistakes, typos and device artefacts (a caller drops and counts values outside them,
it never clamps). Each is set just beyond the most extreme values reported in survivors or the
measuring range of common analysers, and was checked against the spread of the PhysioNet 2019
training data (which keeps artefacts such as Temp 20.9 °C or K 27.5 mmol/L). The reason for each
is beside it.

Lookups are O(1) dict reads: the request path maps ~200 observations per hook call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Literal

Kind = Literal["vital", "lab", "observation"]

LOINC_SYSTEM = "http://loinc.org"
# The LOINC OID as a URI; C-CDA-derived FHIR exports sometimes carry it instead of the URL.
LOINC_OID_SYSTEM = "urn:oid:2.16.840.1.113883.6.1"
_LOINC_SYSTEMS = frozenset({LOINC_SYSTEM, LOINC_OID_SYSTEM})


@dataclass(frozen=True, slots=True)
class Variable:
    """One clinical variable.

    ``loinc`` are the codes an Observation.code (or a panel component) may carry for it.
    ``components`` are LOINC codes of the *parts* the variable is the sum of, for sources that
    send only the parts (GCS eye + verbal + motor); the parser sums parts taken at one time.
    ``physionet`` is the PhysioNet 2019 PSV column, or None where the challenge has no such column.
    """

    name: str
    label: str
    unit: str
    low: float
    high: float
    loinc: tuple[str, ...]
    kind: Kind
    physionet: str | None
    components: tuple[str, ...] = ()


_CATALOGUE: tuple[Variable, ...] = (
    # --- vital signs -----------------------------------------------------------------------------
    # 0-300/min: 0 is a charted arrest; ~300 is 1:1 atrial flutter, above it is artefact.
    Variable(
        "heart_rate",
        "Heart rate",
        "/min",
        0,
        300,
        # 8867-4 heart rate; 68999-2 supine; 8891-4 apex by palpation; 76282-3 beat-to-beat by EKG.
        ("8867-4", "68999-2", "8891-4", "76282-3"),
        "vital",
        "HR",
    ),
    # A percentage: 0-100 are the physical limits.
    Variable(
        "spo2",
        "Oxygen saturation by pulse oximetry",
        "%",
        0,
        100,
        # 59408-5 by pulse oximetry; 2708-6 arterial (FHIR vital sign, MIMIC); 59417-6 resting;
        # 59410-1 on room air; 2710-2 capillary blood by oximetry (NEMSIS vital sign).
        ("59408-5", "2708-6", "59417-6", "59410-1", "2710-2"),
        "vital",
        "O2Sat",
    ),
    # 25-45 °C: a probe out of the patient reads room temperature (~20-25 °C); above 45 °C is
    # beyond all but isolated case reports of survival.
    Variable(
        "temperature",
        "Body temperature",
        "Cel",
        25,
        45,
        # 8310-5 body; 8331-1 oral; 8332-9 rectal; 8328-7 axillary; 8333-7 tympanic; 8329-5 core.
        ("8310-5", "8331-1", "8332-9", "8328-7", "8333-7", "8329-5"),
        "vital",
        "Temp",
    ),
    # Blood pressure limits sit outside what a cuff or an arterial line reports in a living
    # patient; PhysioNet's larger values (MAP 295, DBP 287) are line flushes.
    Variable(
        "sbp",
        "Systolic blood pressure",
        "mm[Hg]",
        20,
        300,
        # 8480-6 systolic; 8459-0 sitting; 8460-8 standing; 8461-6 supine.
        ("8480-6", "8459-0", "8460-8", "8461-6"),
        "vital",
        "SBP",
    ),
    Variable(
        "dbp",
        "Diastolic blood pressure",
        "mm[Hg]",
        5,
        200,
        # 8462-4 diastolic; 8453-3 sitting; 8454-1 standing; 8455-8 supine.
        ("8462-4", "8453-3", "8454-1", "8455-8"),
        "vital",
        "DBP",
    ),
    Variable("map", "Mean arterial pressure", "mm[Hg]", 10, 250, ("8478-0",), "vital", "MAP"),
    # 0-80/min: apnoea is real; adult and paediatric rates above ~80 are counting errors.
    Variable("resp_rate", "Respiratory rate", "/min", 0, 80, ("9279-1",), "vital", "Resp"),
    # 0-150 mmHg: ETCO2 above ~150 is not seen even in severe hypercapnia.
    Variable(
        "etco2",
        "End-tidal CO2",
        "mm[Hg]",
        0,
        150,
        ("19889-5",),  # Carbon dioxide [Partial pressure] in Exhaled gas (at end expiration)
        "vital",
        "EtCO2",
    ),
    # --- laboratory values -----------------------------------------------------------------------
    # ±40 mmol/L: beyond the reportable range of blood-gas analysers.
    Variable(
        "base_excess",
        "Base excess",
        "mmol/L",
        -40,
        40,
        ("1925-7", "11555-0"),  # arterial blood by calculation; blood by calculation
        "lab",
        "BaseExcess",
    ),
    # 0-60 mmol/L. 2028-9/20565-8 are total CO2, which chemistry panels report as "bicarbonate"
    # (MIMIC's labitem 50882 "Bicarbonate" is that measurement).
    Variable(
        "hco3",
        "Bicarbonate",
        "mmol/L",
        0,
        60,
        ("1959-6", "1960-4", "14627-4", "1963-8", "2028-9", "20565-8"),
        "lab",
        "HCO3",
    ),
    # A fraction: 0.2 (room air, 0.21, allowing for rounding) to 1.0 (pure oxygen).
    Variable(
        "fio2",
        "Inspired oxygen fraction",
        "1",
        0.2,
        1.0,
        # 3150-0 inhaled oxygen concentration; 19994-3 ventilator setting.
        ("3150-0", "19994-3"),
        "lab",
        "FiO2",
    ),
    # 6.5-8.0: survival has been reported only just below 6.5 and above 7.8.
    Variable(
        "ph",
        "pH",
        "[pH]",
        6.5,
        8.0,
        ("2744-1", "11558-4", "2746-6"),  # arterial; blood; venous
        "lab",
        "pH",
    ),
    Variable(
        "paco2",
        "Arterial CO2 partial pressure",
        "mm[Hg]",
        5,
        200,
        ("2019-8", "11557-6"),  # arterial blood; blood
        "lab",
        "PaCO2",
    ),
    # 10-800 mmHg: PaO2 on FiO2 1.0 at sea level tops out near 670 mmHg.
    Variable(
        "pao2",
        "Arterial O2 partial pressure",
        "mm[Hg]",
        10,
        800,
        ("2703-7", "11556-8"),  # arterial blood; blood
        "lab",
        None,  # PhysioNet 2019 has no PaO2 column
    ),
    Variable(
        "sao2",
        "Arterial oxygen saturation (blood gas)",
        "%",
        0,
        100,
        # 2713-6 calculated from pO2; 20564-1 oxygen saturation in blood (see module docstring
        # for why 2708-6 is spo2).
        ("2713-6", "20564-1"),
        "lab",
        "SaO2",
    ),
    # Enzyme limits allow massive hepatic necrosis (AST into the tens of thousands).
    Variable("ast", "Aspartate aminotransferase", "U/L", 0, 40000, ("1920-8",), "lab", "AST"),
    Variable(
        "bun",
        "Urea nitrogen",
        "mg/dL",
        0,
        300,
        # 3094-0 serum/plasma; 6299-2 blood; 22664-7 urea [Moles/volume] (converted as urea N).
        ("3094-0", "6299-2", "22664-7"),
        "lab",
        "BUN",
    ),
    Variable(
        "alkaline_phosphatase",
        "Alkaline phosphatase",
        "U/L",
        0,
        10000,
        ("6768-6",),
        "lab",
        "Alkalinephos",
    ),
    # Total calcium, 2-20 mg/dL (0.5-5 mmol/L). Ionised calcium is a different quantity and is
    # deliberately not mapped here.
    Variable(
        "calcium",
        "Calcium (total)",
        "mg/dL",
        2,
        20,
        ("17861-6", "49765-1", "2000-8"),  # serum/plasma mass; blood mass; serum/plasma moles
        "lab",
        "Calcium",
    ),
    Variable(
        "chloride",
        "Chloride",
        "mmol/L",
        50,
        160,
        ("2075-0", "2069-3"),  # serum/plasma; blood
        "lab",
        "Chloride",
    ),
    Variable(
        "creatinine",
        "Creatinine",
        "mg/dL",
        0,
        40,
        ("2160-0", "38483-4", "14682-9"),  # serum/plasma mass; blood mass; serum/plasma moles
        "lab",
        "Creatinine",
    ),
    Variable(
        "bilirubin_direct",
        "Bilirubin (direct)",
        "mg/dL",
        0,
        50,
        ("1968-7", "14629-0"),  # serum/plasma mass; moles
        "lab",
        "Bilirubin_direct",
    ),
    # 5-3000 mg/dL: hyperosmolar states above 2000 mg/dL have been survived.
    Variable(
        "glucose",
        "Glucose",
        "mg/dL",
        5,
        3000,
        # 2345-7 serum/plasma; 2339-0 blood; 41653-7 capillary by glucometer; 14749-6 and
        # 15074-8 serum/plasma and blood in moles.
        ("2345-7", "2339-0", "41653-7", "14749-6", "15074-8"),
        "lab",
        "Glucose",
    ),
    Variable(
        "lactate",
        "Lactate",
        "mmol/L",
        0,
        40,
        ("2524-7", "32693-4", "2518-9"),  # serum/plasma; blood; arterial blood (all moles)
        "lab",
        "Lactate",
    ),
    Variable(
        "magnesium",
        "Magnesium",
        "mg/dL",
        0,
        20,
        ("19123-9", "21377-7", "2601-3"),  # serum/plasma mass; blood mass; serum/plasma moles
        "lab",
        "Magnesium",
    ),
    Variable(
        "phosphate",
        "Phosphate (as phosphorus)",
        "mg/dL",
        0,
        30,
        ("2777-1", "14879-1"),  # serum/plasma mass; moles
        "lab",
        "Phosphate",
    ),
    # 1-12 mmol/L: higher values are haemolysed samples (PhysioNet holds a 27.5).
    Variable(
        "potassium",
        "Potassium",
        "mmol/L",
        1,
        12,
        ("2823-3", "6298-4"),  # serum/plasma; blood
        "lab",
        "Potassium",
    ),
    Variable(
        "bilirubin_total",
        "Bilirubin (total)",
        "mg/dL",
        0,
        80,
        ("1975-2", "42719-5", "14631-6"),  # serum/plasma mass; blood mass; serum/plasma moles
        "lab",
        "Bilirubin_total",
    ),
    Variable(
        "troponin_i",
        "Troponin I (cardiac)",
        "ng/mL",
        0,
        1000,
        # 10839-9 serum/plasma; 42757-5 blood; 49563-0 detection limit <= 0.01 ng/mL;
        # 89579-7 high-sensitivity method (usually reported in ng/L or pg/mL).
        ("10839-9", "42757-5", "49563-0", "89579-7"),
        "lab",
        "TroponinI",
    ),
    Variable(
        "hematocrit",
        "Hematocrit",
        "%",
        5,
        80,
        ("4544-3", "20570-8"),  # automated count; blood
        "lab",
        "Hct",
    ),
    Variable(
        "hemoglobin",
        "Hemoglobin",
        "g/dL",
        1,
        25,
        ("718-7", "20509-6", "30313-1"),  # blood; by calculation; arterial blood
        "lab",
        "Hgb",
    ),
    Variable(
        "ptt",
        "Activated partial thromboplastin time",
        "s",
        5,
        300,
        ("14979-9", "3173-2"),  # platelet-poor plasma; blood
        "lab",
        "PTT",
    ),
    # 0-1000 x10^3/uL: hyperleukocytosis in leukaemia passes 500.
    Variable(
        "wbc",
        "Leukocytes",
        "10*3/uL",
        0,
        1000,
        ("6690-2", "26464-8", "804-5"),  # automated count; blood; manual count
        "lab",
        "WBC",
    ),
    Variable(
        "fibrinogen",
        "Fibrinogen",
        "mg/dL",
        0,
        2000,
        ("3255-7",),  # platelet-poor plasma by coagulation assay (Clauss)
        "lab",
        "Fibrinogen",
    ),
    Variable(
        "platelets",
        "Platelets",
        "10*3/uL",
        0,
        3000,
        ("777-3", "26515-7", "778-1"),  # automated count; blood; manual count
        "lab",
        "Platelets",
    ),
    # --- observations for NEWS2 / qSOFA / SOFA ---------------------------------------------------
    # The scale's own limits (Teasdale & Jennett, Lancet 1974;2:81).
    Variable(
        "gcs_total",
        "Glasgow coma score total",
        "{score}",
        3,
        15,
        ("9269-2",),
        "observation",
        None,
        # Eye opening, verbal, motor: summed when a source sends only the parts (MIMIC-IV does).
        components=("9267-6", "9270-0", "9268-4"),
    ),
    # ACVPU as a number: 0 alert, 1 new confusion, 2 voice, 3 pain, 4 unresponsive (the NEWS2
    # order, Royal College of Physicians, NEWS2 report 2017). 67775-7 "Level of responsiveness"
    # carries a coded answer; the parser maps the answer to this number.
    Variable(
        "consciousness",
        "Level of consciousness (ACVPU)",
        "{score}",
        0,
        4,
        ("67775-7",),
        "observation",
        None,
    ),
    # 1 on supplemental oxygen, 0 room air. No LOINC code states this on its own; the parser
    # derives it (device, flow rate, FiO2) or a site map supplies a local code.
    Variable(
        "supplemental_oxygen",
        "On supplemental oxygen",
        "1",
        0,
        1,
        (),
        "observation",
        None,
    ),
    # 0-80 L/min: high-flow nasal cannula runs up to 60-80 L/min.
    Variable(
        "oxygen_flow_rate",
        "Oxygen flow rate",
        "L/min",
        0,
        80,
        ("3151-8",),  # inhaled oxygen flow rate
        "observation",
        None,
    ),
    # Per observation (one void or one bag emptied): above 5 L is a charting error.
    Variable("urine_output", "Urine output", "mL", 0, 5000, ("9187-6",), "observation", None),
    # Body weight (29463-7; 3141-9 "measured"), for weight-based doses such as 30 mL/kg of fluid.
    # 0.2-500 kg spans the smallest preterm infants to the heaviest adults recorded: our limits.
    Variable("weight", "Body weight", "kg", 0.2, 500, ("29463-7", "3141-9"), "observation", None),
)

VARIABLES: dict[str, Variable] = {v.name: v for v in _CATALOGUE}
"""Every variable by name."""

BY_PHYSIONET: dict[str, Variable] = {v.physionet: v for v in _CATALOGUE if v.physionet}
"""Variables by PhysioNet 2019 PSV column name (``HR``, ``O2Sat``, ...)."""

PANELS: dict[str, tuple[str, ...]] = {
    # Blood pressure panel with all children optional; components systolic 8480-6, diastolic
    # 8462-4 (FHIR R4 vital-signs profile; MIMIC ED vitals and Synthea send this).
    "85354-9": ("8480-6", "8462-4"),
    # Blood pressure systolic and diastolic (the older panel code, FHIR DSTU2/STU3 examples).
    "55284-4": ("8480-6", "8462-4"),
}
"""Panel LOINC code -> the LOINC codes of its components (read from Observation.component)."""


def _build_loinc_index() -> tuple[dict[str, Variable], dict[str, Variable]]:
    whole: dict[str, Variable] = {}
    parts: dict[str, Variable] = {}
    for variable in _CATALOGUE:
        for code in variable.loinc:
            if code in whole:
                raise RuntimeError(
                    f"LOINC {code} is mapped to both {whole[code].name} and {variable.name}"
                )
            whole[code] = variable
        for code in variable.components:
            parts[code] = variable
    if clash := whole.keys() & parts.keys():
        raise RuntimeError(f"LOINC codes both whole and part: {sorted(clash)}")
    return whole, parts


LOINC_INDEX, LOINC_PARTS = _build_loinc_index()
"""LOINC code -> variable; and LOINC part code (a summand, e.g. GCS eye) -> the total it sums to."""


def lookup(system: str, code: str) -> Variable | None:
    """The variable a coding means, or None when it is not one we read.

    LOINC (``http://loinc.org`` or its OID) is answered from ``LOINC_INDEX``; any other system from
    the built-in site code maps (``fhir_adapters.site_codes.default_index``). A part code (a GCS
    sub-score) is not a whole variable and gives None here; ``CodeIndex.resolve`` reports it.
    """
    if system in _LOINC_SYSTEMS:
        return LOINC_INDEX.get(code)
    return _site_lookup()(system, code)


@cache
def _site_lookup() -> Callable[[str, str], Variable | None]:
    # Imported on first use because site_codes imports this module; cached so that the request
    # path pays one dict read per coding, not an import statement.
    from fhir_adapters.site_codes import default_index  # noqa: PLC0415

    return default_index().lookup


def is_loinc(system: str) -> bool:
    """True when ``system`` names LOINC (its URL or its OID)."""
    return system in _LOINC_SYSTEMS


def plausible(variable: Variable, value: float) -> bool:
    """True when ``value`` (canonical units) lies within the variable's plausible range.

    NaN is never plausible. Callers drop and count implausible values; they never clamp them.
    """
    return variable.low <= value <= variable.high
