"""Site code maps: a hospital's local codes (flowsheet rows, lab item ids) -> catalogue variables.

A site map is a TOML file (read with the standard library's ``tomllib``), so a new site needs a
file, not a code change. Its shape::

    name = "mimic-iv"                       # required: a short name for messages
    description = "..."                     # optional

    [systems]                               # optional: aliases for long code-system URIs
    chart = "http://mimic.mit.edu/fhir/mimic/CodeSystem/mimic-chartevents-d-items"

    [[code]]                                # one table per local code
    system = "chart"                        # an alias above, or a full URI
    code = "223761"                         # a string (a TOML integer is accepted too)
    variable = "temperature"                # a name from fhir_adapters.variables.VARIABLES
    unit = "[degF]"                         # optional: the unit to assume when none is sent
    scale = 1.0                             # optional: multiply the value before conversion
    component = false                       # optional: true for a summand (a GCS sub-score)

Errors name the file, the entry and the field (``SiteMapError``). An unknown key is an error
too, so a misspelt ``varaible`` is caught at load, not silently ignored. A unit must be one that
``fhir_adapters.units`` converts for the variable.

``CodeIndex`` joins the LOINC index of the catalogue with any number of site maps into one dict
keyed by ``(system, code)``. A site map may not remap a LOINC code, and two maps may not map the
same code to different things: both are load-time errors, never a silent override.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fhir_adapters.units import is_known
from fhir_adapters.variables import (
    LOINC_INDEX,
    LOINC_OID_SYSTEM,
    LOINC_PARTS,
    LOINC_SYSTEM,
    VARIABLES,
    Variable,
    is_loinc,
)

BUILTIN_MAPS = ("mimic-iv",)
"""Site maps shipped in ``fhir_adapters/site_maps/`` (file ``NAME.toml``)."""

_SITE_MAPS = Path(__file__).resolve().parent / "site_maps"
_ENTRY_KEYS = frozenset({"system", "code", "variable", "unit", "scale", "component"})
_TOP_KEYS = frozenset({"name", "description", "systems", "code"})


class SiteMapError(ValueError):
    """A site map file that cannot be used: bad TOML, a missing or unknown field, a conflict."""


@dataclass(frozen=True, slots=True)
class CodeMapping:
    """What one ``(system, code)`` means.

    ``unit`` is assumed when the observation carries no unit; ``scale`` multiplies the raw value
    before unit conversion; ``component`` marks a summand of ``variable`` (see
    ``Variable.components``) rather than the variable itself.
    """

    variable: Variable
    unit: str | None = None
    scale: float = 1.0
    component: bool = False


@dataclass(frozen=True, slots=True)
class SiteMap:
    """A loaded site map: its name and its codes."""

    name: str
    codes: Mapping[tuple[str, str], CodeMapping]


def _fail(source: str, where: str, message: str) -> SiteMapError:
    return SiteMapError(f"{source}: {where}: {message}")


_Fail = Callable[[str], SiteMapError]


def _key(raw: dict[str, Any], systems: Mapping[str, str], fail: _Fail) -> tuple[str, str]:
    """The ``(system, code)`` of one entry, with a system alias resolved."""
    system, code = raw["system"], raw["code"]
    if not isinstance(system, str) or not system:
        raise fail("'system' must be a non-empty string")
    system = systems.get(system, system)
    if ":" not in system:
        raise fail(f"'system' {system!r} is neither an alias nor a URI")
    if is_loinc(system):
        raise fail("LOINC codes come from the catalogue; a site map cannot remap them")
    # Item ids are numbers in most exports; TOML integers are accepted and kept as text.
    if isinstance(code, int) and not isinstance(code, bool):
        code = str(code)
    if not isinstance(code, str) or not code.strip():
        raise fail("'code' must be a non-empty string")
    return system, code.strip()


def _mapping(raw: dict[str, Any], fail: _Fail) -> CodeMapping:
    """The ``CodeMapping`` of one entry: its variable, assumed unit, scale and part flag."""
    name = raw["variable"]
    if not isinstance(name, str) or name not in VARIABLES:
        raise fail(f"unknown variable {name!r}")
    variable = VARIABLES[name]
    unit = raw.get("unit")
    if unit is not None and (not isinstance(unit, str) or not is_known(variable, unit)):
        raise fail(f"unit {unit!r} is not one we convert for {name}")
    scale = raw.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise fail("'scale' must be a number")
    if not math.isfinite(scale) or scale <= 0:
        raise fail("'scale' must be a positive finite number")
    component = raw.get("component", False)
    if not isinstance(component, bool):
        raise fail("'component' must be true or false")
    if component and not variable.components:
        raise fail(f"{name} is not a sum of parts; 'component' cannot be true")
    return CodeMapping(variable, unit, float(scale), component)


def _entry(
    source: str, index: int, raw: Any, systems: Mapping[str, str]
) -> tuple[tuple[str, str], CodeMapping]:
    where = f"[[code]] entry {index + 1}"
    if not isinstance(raw, dict):
        raise _fail(source, where, "must be a table")
    if unknown := raw.keys() - _ENTRY_KEYS:
        raise _fail(source, where, f"unknown field(s) {sorted(unknown)}")
    for field in ("system", "code", "variable"):
        if field not in raw:
            raise _fail(source, where, f"missing required field {field!r}")
    where = f"{where} (code {raw['code']!r})"

    def fail(message: str) -> SiteMapError:
        return _fail(source, where, message)

    return _key(raw, systems, fail), _mapping(raw, fail)


def parse_site_map(text: str, source: str = "<site map>") -> SiteMap:
    """A ``SiteMap`` from TOML text; ``source`` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SiteMapError(f"{source}: not valid TOML: {exc}") from exc
    if unknown := data.keys() - _TOP_KEYS:
        raise _fail(source, "top level", f"unknown key(s) {sorted(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(source, "top level", "missing required string 'name'")
    systems = data.get("systems", {})
    if not isinstance(systems, dict) or not all(
        isinstance(v, str) and ":" in v for v in systems.values()
    ):
        raise _fail(source, "[systems]", "each alias must name a URI string")
    entries = data.get("code", [])
    if not isinstance(entries, list) or not entries:
        raise _fail(source, "top level", "needs at least one [[code]] entry")
    codes: dict[tuple[str, str], CodeMapping] = {}
    for index, raw in enumerate(entries):
        key, mapping = _entry(source, index, raw, systems)
        if key in codes:
            raise _fail(
                source, f"[[code]] entry {index + 1}", f"{key[1]} in {key[0]} is listed twice"
            )
        codes[key] = mapping
    return SiteMap(name, codes)


def load_site_map(path: str | Path) -> SiteMap:
    """Read and check a site map file (see the module docstring for its format)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteMapError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_site_map(text, str(path))


def load_builtin_site_map(name: str) -> SiteMap:
    """One of the site maps shipped with the package, by name (``BUILTIN_MAPS``)."""
    if name not in BUILTIN_MAPS:
        raise SiteMapError(f"no built-in site map {name!r}; there are {list(BUILTIN_MAPS)}")
    # Beside this module, not importlib.resources: under pytest the tests/fhir_adapters folder
    # shadows the package for resources.files(), and the package is never zipped.
    path = _SITE_MAPS / f"{name}.toml"
    return parse_site_map(path.read_text(encoding="utf-8"), f"site_maps/{name}.toml")


class CodeIndex:
    """LOINC plus site maps, as one ``(system, code) -> CodeMapping`` dict (O(1) per lookup)."""

    def __init__(self, site_maps: Iterable[SiteMap] = ()) -> None:
        index: dict[tuple[str, str], CodeMapping] = {}
        for system in (LOINC_SYSTEM, LOINC_OID_SYSTEM):
            for code, variable in LOINC_INDEX.items():
                index[(system, code)] = CodeMapping(variable)
            for code, variable in LOINC_PARTS.items():
                index[(system, code)] = CodeMapping(variable, component=True)
        owner: dict[tuple[str, str], str] = {}
        for site_map in site_maps:
            for key, mapping in site_map.codes.items():
                earlier = index.get(key)
                if earlier is not None and earlier != mapping:
                    raise SiteMapError(
                        f"{site_map.name}: {key[1]} in {key[0]} is already mapped by "
                        f"{owner.get(key, 'LOINC')} to {earlier.variable.name}"
                    )
                index[key] = mapping
                owner.setdefault(key, site_map.name)
        self._index = index

    def resolve(self, system: str, code: str) -> CodeMapping | None:
        """The mapping for a coding, or None when we do not read it."""
        return self._index.get((system, code))

    def lookup(self, system: str, code: str) -> Variable | None:
        """The whole variable a coding means; None for unknown codes and for part codes."""
        mapping = self._index.get((system, code))
        if mapping is None or mapping.component:
            return None
        return mapping.variable

    def __len__(self) -> int:
        return len(self._index)


@cache
def default_index() -> CodeIndex:
    """LOINC plus every built-in site map; built once, on first use."""
    return CodeIndex(load_builtin_site_map(name) for name in BUILTIN_MAPS)


def site_index(extra_maps: Iterable[Path]) -> CodeIndex:
    """The built-in site maps plus a site's own files: what the API and the workers both read."""
    return CodeIndex(
        [
            *(load_builtin_site_map(name) for name in BUILTIN_MAPS),
            *(load_site_map(path) for path in extra_maps),
        ]
    )
