"""Site code maps: the shipped MIMIC-IV map, the loader's errors, and the combined index."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest

from fhir_adapters.site_codes import (
    BUILTIN_MAPS,
    CodeIndex,
    CodeMapping,
    SiteMap,
    SiteMapError,
    default_index,
    load_builtin_site_map,
    load_site_map,
    parse_site_map,
)
from fhir_adapters.units import to_canonical
from fhir_adapters.variables import LOINC_SYSTEM, VARIABLES

from support import SHARED

CHART = "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-chartevents-d-items"
LAB = "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-d-labitems"
ITEMS = "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-d-items"

MIMIC_DEMO = SHARED / "data" / "mimic-iv-demo"

GOOD = """
name = "test-site"
[systems]
flow = "urn:example:flowsheet"
[[code]]
system = "flow"
code = "HR1"
variable = "heart_rate"
[[code]]
system = "urn:example:lab"
code = 4711
variable = "temperature"
unit = "[degF]"
scale = 0.1
"""


@pytest.fixture(scope="module")
def mimic() -> SiteMap:
    return load_builtin_site_map("mimic-iv")


@pytest.mark.parametrize(
    ("system", "code", "name"),
    [
        (CHART, "220045", "heart_rate"),
        (CHART, "220210", "resp_rate"),
        (CHART, "220277", "spo2"),
        (CHART, "223761", "temperature"),
        (CHART, "223762", "temperature"),
        (CHART, "220179", "sbp"),
        (CHART, "220180", "dbp"),
        (CHART, "220181", "map"),
        (CHART, "220050", "sbp"),
        (CHART, "220051", "dbp"),
        (CHART, "220052", "map"),
        (CHART, "223835", "fio2"),
        (LAB, "50813", "lactate"),
        (LAB, "51301", "wbc"),
        (LAB, "51265", "platelets"),
        (LAB, "50912", "creatinine"),
        (LAB, "51006", "bun"),
        (LAB, "50885", "bilirubin_total"),
        (LAB, "50931", "glucose"),
        (LAB, "50882", "hco3"),
        (LAB, "50971", "potassium"),
        (LAB, "51222", "hemoglobin"),
        (LAB, "51221", "hematocrit"),
        (LAB, "50820", "ph"),
        (LAB, "50818", "paco2"),
        (LAB, "50821", "pao2"),
        (LAB, "50802", "base_excess"),
        (ITEMS, "226559", "urine_output"),
        (ITEMS, "226560", "urine_output"),
    ],
)
def test_mimic_map(mimic: SiteMap, system: str, code: str, name: str) -> None:
    assert mimic.codes[(system, code)].variable is VARIABLES[name]
    assert default_index().lookup(system, code) is VARIABLES[name]


def test_mimic_temperature_units(mimic: SiteMap) -> None:
    fahrenheit = mimic.codes[(CHART, "223761")]
    assert fahrenheit.unit == "[degF]"
    assert to_canonical(fahrenheit.variable, 98.6, fahrenheit.unit) == pytest.approx(37.0)
    assert mimic.codes[(CHART, "223762")].unit == "Cel"


def test_mimic_gcs_parts(mimic: SiteMap) -> None:
    for code in ("220739", "223900", "223901"):
        mapping = mimic.codes[(CHART, code)]
        assert mapping.component and mapping.variable is VARIABLES["gcs_total"]
        assert default_index().lookup(CHART, code) is None  # a part is not the total
        assert default_index().resolve(CHART, code) == mapping


def test_troponin_t_is_not_troponin_i(mimic: SiteMap) -> None:
    assert (LAB, "51003") not in mimic.codes


@pytest.mark.skipif(not MIMIC_DEMO.is_dir(), reason="shared/data/mimic-iv-demo is not present")
def test_mimic_map_labels_match_the_demo_dictionaries(mimic: SiteMap) -> None:
    """Every mapped item id exists in the demo's d_items / d_labitems (read in place)."""
    labels: dict[tuple[str, str], str] = {}
    with gzip.open(MIMIC_DEMO / "icu" / "d_items.csv.gz", "rt", newline="") as f:
        for row in csv.DictReader(f):
            system = CHART if row["linksto"] == "chartevents" else ITEMS
            labels[(system, row["itemid"])] = row["label"]
    with gzip.open(MIMIC_DEMO / "hosp" / "d_labitems.csv.gz", "rt", newline="") as f:
        for row in csv.DictReader(f):
            labels[(LAB, row["itemid"])] = row["label"]
    for key in mimic.codes:
        assert key in labels, f"{key} is not in the MIMIC-IV demo dictionaries"
    assert labels[(CHART, "220045")] == "Heart Rate"
    assert labels[(LAB, "50813")] == "Lactate"
    assert labels[(ITEMS, "226559")] == "Foley"


def test_loader_reads_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(GOOD, encoding="utf-8")
    site = load_site_map(path)
    assert site.name == "test-site"
    assert site.codes[("urn:example:flowsheet", "HR1")] == CodeMapping(VARIABLES["heart_rate"])
    temp = site.codes[("urn:example:lab", "4711")]  # TOML integer kept as text
    assert (temp.unit, temp.scale) == ("[degF]", 0.1)


def _bad(entry: str, header: str = 'name = "bad"\n') -> str:
    return header + "[[code]]\n" + entry


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "not valid TOML"),
        ('[[code]]\nsystem = "urn:x"\ncode = "1"\nvariable = "heart_rate"\n', "'name'"),
        ('name = "bad"\n', "at least one"),
        ('name = "bad"\nnotes = "x"\n' + '[[code]]\nsystem="urn:x"\ncode="1"\nvariable="map"\n',
         "unknown key"),
        (_bad('system = "urn:x"\ncode = "1"\nvariable = "hr"\n'), "unknown variable 'hr'"),
        (_bad('system = "urn:x"\ncode = "1"\n'), "missing required field 'variable'"),
        (_bad('code = "1"\nvariable = "map"\n'), "missing required field 'system'"),
        (_bad('system = "urn:x"\nvariable = "map"\n'), "missing required field 'code'"),
        (_bad('system = "urn:x"\ncode = "1"\nvariable = "map"\nvaraible = "x"\n'),
         "unknown field"),
        (_bad('system = "chart"\ncode = "1"\nvariable = "map"\n'), "neither an alias nor a URI"),
        (_bad('system = "urn:x"\ncode = ""\nvariable = "map"\n'), "'code'"),
        (_bad('system = "urn:x"\ncode = "1"\nvariable = "glucose"\nunit = "parsecs"\n'),
         "unit 'parsecs'"),
        (_bad('system = "urn:x"\ncode = "1"\nvariable = "map"\nscale = 0\n'), "positive"),
        (_bad('system = "urn:x"\ncode = "1"\nvariable = "map"\nscale = "2"\n'), "number"),
        (_bad('system = "urn:x"\ncode = "1"\nvariable = "map"\ncomponent = true\n'),
         "not a sum of parts"),
        (_bad('system = "http://loinc.org"\ncode = "8867-4"\nvariable = "map"\n'),
         "cannot remap"),
        (_bad('system = "urn:x"\ncode = "1"\nvariable = "map"\n')
         + '[[code]]\nsystem = "urn:x"\ncode = "1"\nvariable = "sbp"\n', "listed twice"),
    ],
)  # fmt: skip
def test_bad_files_give_clear_errors(text: str, message: str) -> None:
    with pytest.raises(SiteMapError, match=message) as caught:
        parse_site_map(text, "site.toml")
    assert str(caught.value).startswith("site.toml")


def test_errors_name_the_entry() -> None:
    text = _bad('system = "urn:x"\ncode = "1"\nvariable = "map"\n') + (
        '[[code]]\nsystem = "urn:x"\ncode = "2"\nvariable = "nope"\n'
    )
    with pytest.raises(SiteMapError, match=r"entry 2 \(code '2'\)"):
        parse_site_map(text, "site.toml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SiteMapError, match="cannot read"):
        load_site_map(tmp_path / "absent.toml")


def test_unknown_builtin() -> None:
    with pytest.raises(SiteMapError, match="no built-in"):
        load_builtin_site_map("nowhere")
    assert "mimic-iv" in BUILTIN_MAPS


def test_index_combines_loinc_and_site_maps() -> None:
    site = parse_site_map(GOOD)
    index = CodeIndex([site])
    assert index.lookup(LOINC_SYSTEM, "8867-4") is VARIABLES["heart_rate"]
    assert index.lookup("urn:example:flowsheet", "HR1") is VARIABLES["heart_rate"]
    assert index.resolve("urn:example:lab", "4711") == site.codes[("urn:example:lab", "4711")]
    assert index.lookup("urn:example:flowsheet", "nope") is None
    # Without the site map, the site's codes are unknown.
    assert CodeIndex().lookup("urn:example:flowsheet", "HR1") is None


def test_index_refuses_conflicting_maps() -> None:
    one = parse_site_map(_bad('system = "urn:x"\ncode = "1"\nvariable = "map"\n'))
    other = parse_site_map(_bad('system = "urn:x"\ncode = "1"\nvariable = "sbp"\n'))
    CodeIndex([one, one])  # the same mapping twice is no conflict
    with pytest.raises(SiteMapError, match="already mapped"):
        CodeIndex([one, other])
