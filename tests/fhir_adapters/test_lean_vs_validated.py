"""The lean reader and fhir.resources give identical canonical observations on all shared data."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_adapters.observations import MappingStats, canonicalise, extract, observations_in
from fhir_adapters.validated import extract_validated

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SYNTHEA = DATA / "synthea"
MIMIC = DATA / "mimic-iv-fhir-demo" / "fhir"


def synthea_files() -> list[Path]:
    return sorted(SYNTHEA.glob("**/*.json.gz"))


def mimic_files() -> list[Path]:
    return sorted(MIMIC.glob("MimicObservation*.ndjson.gz"))


def mimic_observations(path: Path) -> Iterator[tuple[dict[str, Any], str | None]]:
    with gzip.open(path) as lines:
        for line in lines:
            yield orjson.loads(line), None


def compare(pairs: Iterator[tuple[dict[str, Any], str | None]]) -> tuple[MappingStats, int]:
    lean_stats, validated_stats = MappingStats(), MappingStats()
    produced = 0
    for resource, full_url in pairs:
        lean = canonicalise(extract(resource, full_url), lean_stats)
        validated = canonicalise(extract_validated(resource, full_url), validated_stats)
        assert lean == validated, resource.get("id")
        produced += len(lean)
    assert lean_stats == validated_stats
    return lean_stats, produced


@pytest.mark.skipif(not synthea_files(), reason=f"no Synthea bundles under {SYNTHEA}")
def test_every_synthea_bundle() -> None:
    pairs = (
        pair
        for path in synthea_files()
        for pair in observations_in(orjson.loads(gzip.decompress(path.read_bytes())))
    )
    stats, produced = compare(pairs)
    assert stats.observations > 10_000
    assert produced > 5_000  # vital signs and labs of 181 adults over 3 years


@pytest.mark.skipif(not mimic_files(), reason=f"no MIMIC-IV FHIR demo Observations under {MIMIC}")
@pytest.mark.parametrize("name", [p.name for p in mimic_files()] or ["none"])
def test_every_mimic_observation(name: str) -> None:
    stats, produced = compare(mimic_observations(MIMIC / name))
    assert stats.observations > 0
    if name == "MimicObservationVitalSignsED.ndjson.gz":
        assert produced > 4_000  # HR, RR, temperature, SpO2 and both BP components
