"""PhysioNet/CinC 2019 PSV files: read in place from the zip archives, turned into canonical data.

The two archives in ``shared/data/physionet2019`` (``training_setA.zip``, ``training_setB.zip``)
hold one pipe-separated file per patient and one row per ICU hour (see that folder's README,
section 1). ``iter_patients`` reads them without extracting anything to disk; ``to_canonical``
turns one patient into ``CanonicalObservation``s by the same rules as the FHIR reader
(``fhir_adapters.observations``): catalogue variable, canonical unit, plausible range, drops
counted; ``to_fhir_observations`` writes the same cells as FHIR R4 Observations, so a test can
prove that a patient read from PSV and the same patient sent as FHIR give identical features.

**Times.** PhysioNet has no dates, only ``ICULOS`` (hours since ICU admission). One PSV row is
hourly bin ``ICULOS`` (``fhir_adapters.binning``), so its values are timed at
``bin_start(icu_start, ICULOS)``. The caller chooses ``icu_start``; ``synthetic_icu_start`` gives a
fixed, documented one per patient.

**Measured in the data** (all 40,336 files): set B's Calcium column mixes in what look like
ionised calcium values in mmol/L (19 % of its values lie in 1.0-1.44, total calcium in mg/dL
above 2); they fall below the catalogue's total-calcium range and are dropped and counted
(9,897), never rescaled by guess. Set A ages stop at 89; only set B codes 90+ as 100.
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

from fhir_adapters.binning import bin_start
from fhir_adapters.canonical import CanonicalObservation
from fhir_adapters.observations import UCUM
from fhir_adapters.units import conversion
from fhir_adapters.variables import BY_PHYSIONET, LOINC_SYSTEM, Variable

HEADER: Final = (
    "HR|O2Sat|Temp|SBP|MAP|DBP|Resp|EtCO2|BaseExcess|HCO3|FiO2|pH|PaCO2|SaO2|AST|BUN|Alkalinephos|"
    "Calcium|Chloride|Creatinine|Bilirubin_direct|Glucose|Lactate|Magnesium|Phosphate|Potassium|"
    "Bilirubin_total|TroponinI|Hct|Hgb|PTT|WBC|Fibrinogen|Platelets|Age|Gender|Unit1|Unit2|"
    "HospAdmTime|ICULOS|SepsisLabel"
)
"""The header line of every PSV file (checked in all 40,336; a file with another is refused)."""

COLUMNS: Final = tuple(HEADER.split("|"))
_N_COLUMNS: Final = len(COLUMNS)
PSV_COLUMNS: Final = COLUMNS[:34]
"""The 34 vital-sign and laboratory columns, HR ... Platelets, in PSV order."""

PSV_VARIABLES: Final[tuple[str, ...]] = tuple(BY_PHYSIONET[c].name for c in PSV_COLUMNS)
"""Catalogue names of ``PSV_COLUMNS``, in the same order: the columns of ``PsvPatient.values``."""

_AGE, _GENDER, _UNIT1, _UNIT2, _HOSP_ADM, _ICULOS, _LABEL = range(34, 41)

# The unit each column's values are really in, as UCUM. This is the challenge's Table 1 except
# where the data contradict it (shared/data/physionet2019/README.md and fhir_adapters.variables):
# FiO2 is a fraction, not %, Lactate mmol/L, not mg/dL, Magnesium mg/dL, not mmol/dL. Converting
# through fhir_adapters.units rather than assuming identity keeps PSV and FHIR on the same
# arithmetic, and keeps this module right if a canonical unit in the catalogue ever changes.
_UNIT_OF_COLUMNS: Final = {
    "/min": "HR Resp",
    "%": "O2Sat SaO2 Hct",
    "Cel": "Temp",
    "mm[Hg]": "SBP MAP DBP EtCO2 PaCO2",
    "mmol/L": "BaseExcess HCO3 Chloride Potassium Lactate",
    "1": "FiO2",
    "[pH]": "pH",
    "U/L": "AST Alkalinephos",
    "mg/dL": "BUN Calcium Creatinine Bilirubin_direct Glucose Magnesium Phosphate "
    "Bilirubin_total Fibrinogen",
    "ng/mL": "TroponinI",
    "g/dL": "Hgb",
    "s": "PTT",
    "10*3/uL": "WBC Platelets",
}
PSV_UNITS: Final[dict[str, str]] = {c: u for u, cs in _UNIT_OF_COLUMNS.items() for c in cs.split()}
"""PSV column -> the UCUM unit its values are in."""

_VARIABLES: Final[tuple[Variable, ...]] = tuple(BY_PHYSIONET[c] for c in PSV_COLUMNS)
_FACTORS = np.array(
    [conversion(v, PSV_UNITS[c]) for v, c in zip(_VARIABLES, PSV_COLUMNS, strict=True)]
)
_SCALE: Final = _FACTORS[:, 0]
_OFFSET: Final = _FACTORS[:, 1]
_LOW: Final = np.array([v.low for v in _VARIABLES])
_HIGH: Final = np.array([v.high for v in _VARIABLES])

SYNTHETIC_EPOCH: Final = datetime(2019, 1, 1, tzinfo=UTC)
_MEMBER = re.compile(r"(?:.*/)?training_set([AB])/(p\d+)\.psv")
_CATEGORY: Final = {"vital": "vital-signs", "lab": "laboratory"}
_CATEGORY_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/observation-category"


class PsvFormatError(ValueError):
    """A PSV file that is not in the challenge's format (header, column count, numbers)."""


@dataclass(frozen=True, slots=True, eq=False)
class PsvPatient:
    """One patient's PSV file. ``eq=False``: numpy arrays have no single truth value to compare.

    ``values`` has one row per ICU hour and the columns of ``PSV_VARIABLES``, in the units of
    ``PSV_UNITS``, NaN where nothing was measured and with implausible values kept as recorded.
    Demographics come from the first row. ``age`` 100 means 90 or older (set B only);
    ``hosp_adm_hours`` is HospAdmTime, hours from hospital to ICU admission, usually negative.
    """

    patient: str
    hospital: Literal["A", "B"]
    iculos: NDArray[np.int64]
    values: NDArray[np.float64]
    labels: NDArray[np.int64]
    age: float
    sex: Literal["female", "male"] | None
    unit: Literal["MICU", "SICU"] | None
    hosp_adm_hours: float | None


@dataclass
class PsvStats:
    """What happened to every PSV row and cell; ``implausible`` is keyed like ``MappingStats``'."""

    rows: int = 0
    empty_rows: int = 0  # rows with no vital sign or lab value at all
    cells: int = 0  # non-NaN vital-sign and lab cells
    mapped: int = 0
    implausible: Counter[str] = field(default_factory=Counter)

    def add(self, other: PsvStats) -> None:
        """Add another patient's counts to these."""
        self.rows += other.rows
        self.empty_rows += other.empty_rows
        self.cells += other.cells
        self.mapped += other.mapped
        self.implausible.update(other.implausible)


def _parse(data: bytes, name: str) -> NDArray[np.float64]:
    """The [rows, 41] table of one PSV file."""
    newline = data.find(b"\n")
    if newline < 0 or data[:newline].decode("ascii", "replace") != HEADER:
        raise PsvFormatError(f"{name}: not the PhysioNet 2019 header")
    body = data[newline + 1 :]
    if body and not body.endswith(b"\n"):
        body += b"\n"
    rows = body.count(b"\n")
    # np.fromstring in text mode is C strtod over the whole file: 2.5x faster than np.loadtxt,
    # 4x faster than float() per cell and than a vectorised numpy digit parser on files this
    # small (measured). On bad text it stops early with a DeprecationWarning; as an error, and
    # with the size checked, nothing passes silently.
    text = body.replace(b"\n", b"|")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            flat = np.fromstring(text, dtype=np.float64, sep="|")
        except (ValueError, DeprecationWarning) as exc:
            raise PsvFormatError(f"{name}: a cell is not a number") from exc
    if flat.size != rows * _N_COLUMNS:
        raise PsvFormatError(f"{name}: {flat.size} cells in {rows} rows of {_N_COLUMNS}")
    return flat.reshape(rows, _N_COLUMNS)


def _sex(gender: float) -> Literal["female", "male"] | None:
    return "female" if gender == 0 else "male" if gender == 1 else None


def _unit(unit1: float, unit2: float) -> Literal["MICU", "SICU"] | None:
    # The flags are exclusive where present; both NaN (a third of set B) means not recorded.
    if unit1 == 1 and unit2 != 1:
        return "MICU"
    if unit2 == 1 and unit1 != 1:
        return "SICU"
    return None


def _patient(table: NDArray[np.float64], hospital: Literal["A", "B"], stem: str) -> PsvPatient:
    name = f"{hospital}/{stem}"
    if table.shape[0] == 0:
        raise PsvFormatError(f"{name}: no rows")
    counters = table[:, _ICULOS:].T  # ICULOS and SepsisLabel, as rows
    if np.isnan(counters).any():
        raise PsvFormatError(f"{name}: ICULOS or SepsisLabel missing")
    iculos, labels = counters.astype(np.int64)
    age, gender, unit1, unit2, hosp_adm = table[0, _AGE:_ICULOS].tolist()
    return PsvPatient(
        patient=name,
        hospital=hospital,
        iculos=iculos,
        values=np.ascontiguousarray(table[:, :34]),
        labels=labels,
        age=age,
        sex=_sex(gender),
        unit=_unit(unit1, unit2),
        hosp_adm_hours=None if math.isnan(hosp_adm) else hosp_adm,
    )


def iter_patients(
    archive: Path, limit: int | None = None, ids: set[str] | None = None
) -> Iterator[PsvPatient]:
    """The patients of one archive, in file order, read in place (nothing is extracted to disk).

    ``ids`` keeps only those patients, named ``"A/p000001"`` or ``"p000001"``; ``limit`` stops
    after that many patients (after the ``ids`` filter).
    """
    if limit is not None and limit <= 0:
        return
    found = 0
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            match = _MEMBER.fullmatch(info.filename)
            if match is None:  # the folder entry
                continue
            hospital: Literal["A", "B"] = "A" if match[1] == "A" else "B"
            stem = match[2]
            if ids is not None and stem not in ids and f"{hospital}/{stem}" not in ids:
                continue
            table = _parse(zipped.read(info), info.filename)
            yield _patient(table, hospital, stem)
            found += 1
            if limit is not None and found >= limit:
                return


def synthetic_icu_start(patient: str) -> datetime:
    """A made-up ICU admission time, 2019-01-01T00:00Z plus the patient number in minutes.

    PhysioNet 2019 has no dates. Any fixed start gives the same hourly bins; offsetting each
    patient by minutes keeps starts off the clock hour, so code that bins by clock hour instead
    of by ``fhir_adapters.binning`` fails visibly (``"A/p000012"`` -> 2019-01-01T00:12Z).
    """
    number = int(patient.rsplit("/", 1)[-1].lstrip("p"))
    return SYNTHETIC_EPOCH + timedelta(minutes=number)


def _cells(
    patient: PsvPatient,
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.bool_]]:
    """Values in canonical units, where a cell has a value, and where that value is plausible."""
    # Elementwise multiply then add, as units.to_canonical does for one value: bit-identical.
    canonical = patient.values * _SCALE + _OFFSET
    present = ~np.isnan(canonical)
    with np.errstate(invalid="ignore"):
        plausible = (canonical >= _LOW) & (canonical <= _HIGH)
    return canonical, present, plausible


def to_canonical(
    patient: PsvPatient, icu_start: datetime
) -> tuple[list[CanonicalObservation], PsvStats]:
    """One canonical observation per non-NaN, plausible cell, and the counts of what was dropped.

    Cells come row by row, columns in PSV order. ``source`` is ``"A/p000001#12:HR"``: patient,
    ICULOS, column, stable across runs. Implausible values (FiO2 4000, Temp 20.9) are counted per
    variable in ``PsvStats.implausible`` and not emitted, as the FHIR reader does.
    """
    canonical, present, plausible = _cells(patient)
    stats = PsvStats(rows=int(canonical.shape[0]))
    stats.empty_rows = int((~present.any(axis=1)).sum())
    stats.cells = int(present.sum())
    dropped = (present & ~plausible).sum(axis=0)
    for column in np.flatnonzero(dropped):
        stats.implausible[_VARIABLES[column].name] += int(dropped[column])
    rows, columns = np.nonzero(present & plausible)
    stats.mapped = int(rows.size)
    hours = patient.iculos.tolist()
    times = [bin_start(icu_start, k) for k in hours]
    values = canonical[rows, columns].tolist()
    who = patient.patient
    found = [
        CanonicalObservation(
            patient=who,
            variable=PSV_VARIABLES[c],
            time=times[r],
            value=v,
            source=f"{who}#{hours[r]}:{PSV_COLUMNS[c]}",
        )
        for r, c, v in zip(rows.tolist(), columns.tolist(), values, strict=True)
    ]
    return found, stats


def _instant(moment: datetime) -> str:
    # FHIR instants and dateTimes with a time need a zone; "Z" is the form FHIR examples use.
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def to_fhir_observations(
    patient: PsvPatient, icu_start: datetime, patient_ref: str
) -> list[dict[str, Any]]:
    """The same cells as FHIR R4 Observation JSON, one per non-NaN cell, implausible ones included.

    Implausible values are sent as recorded so that the FHIR reader drops and counts exactly what
    ``to_canonical`` does. Each carries the variable's first LOINC code, the canonical value with
    its UCUM unit, ``effectiveDateTime`` = ``bin_start(icu_start, ICULOS)`` and a vital-signs or
    laboratory category. Blood pressure goes as separate systolic/diastolic/mean Observations.
    """
    canonical, present, _ = _cells(patient)
    hours = patient.iculos.tolist()
    times = [_instant(bin_start(icu_start, k)) for k in hours]
    rows, columns = np.nonzero(present)
    # FHIR ids allow only [A-Za-z0-9.-]; the set letter keeps A and B patients apart.
    prefix = f"psv-{patient.patient.replace('/', '-')}"
    found: list[dict[str, Any]] = []
    values = canonical[rows, columns].tolist()
    for r, c, value in zip(rows.tolist(), columns.tolist(), values, strict=True):
        variable = _VARIABLES[c]
        kind = _CATEGORY[variable.kind]
        found.append(
            {
                "resourceType": "Observation",
                "id": f"{prefix}-{hours[r]}-{c}",
                "status": "final",
                "category": [{"coding": [{"system": _CATEGORY_SYSTEM, "code": kind}]}],
                "code": {
                    "coding": [
                        {
                            "system": LOINC_SYSTEM,
                            "code": variable.loinc[0],
                            "display": variable.label,
                        }
                    ],
                    "text": variable.label,
                },
                "subject": {"reference": patient_ref},
                "effectiveDateTime": times[r],
                "valueQuantity": {
                    "value": value,
                    "unit": variable.unit,
                    "system": UCUM,
                    "code": variable.unit,
                },
            }
        )
    return found
