"""Coverage of the variable catalogue on the shared FHIR data: what was seen, mapped, rejected.

    .venv/bin/python bench/fhir_coverage.py [--top 12]

Reads ../shared/data/synthea (Synthea R4 bundles) and the Observation files of
../shared/data/mimic-iv-fhir-demo in place, runs the request path's lean reader over every
Observation and prints a Markdown table per data set.
"""

from __future__ import annotations

import argparse
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from fhir_adapters.observations import MappingStats, canonicalise, extract, observations_in

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def synthea() -> Iterator[tuple[dict[str, Any], str | None]]:
    for path in sorted((DATA / "synthea").glob("**/*.json.gz")):
        yield from observations_in(orjson.loads(gzip.decompress(path.read_bytes())))


def mimic() -> Iterator[tuple[dict[str, Any], str | None]]:
    for path in sorted((DATA / "mimic-iv-fhir-demo" / "fhir").glob("MimicObservation*.ndjson.gz")):
        with gzip.open(path) as lines:
            for line in lines:
                yield orjson.loads(line), None


def report(name: str, pairs: Iterator[tuple[dict[str, Any], str | None]], top: int) -> None:
    stats = MappingStats()
    per_variable: dict[str, int] = {}
    for resource, full_url in pairs:
        for obs in canonicalise(extract(resource, full_url), stats):
            per_variable[obs.variable] = per_variable.get(obs.variable, 0) + 1
    unmapped_obs = sum(stats.unmapped.values())
    print(f"\n### {name}\n")
    print(
        "| Observations | with a code we read | values mapped | implausible | unit not accepted "
        "| no value | entered-in-error/cancelled | no usable time | unmapped |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {stats.observations:,} | {stats.observations - unmapped_obs:,} | {stats.mapped:,} | "
        f"{sum(stats.implausible.values()):,} | {sum(stats.bad_unit.values()):,} | "
        f"{stats.no_value:,} | {stats.skipped_status:,} | {stats.no_time:,} | {unmapped_obs:,} |"
    )
    print(
        "\nMapped by variable: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(per_variable.items(), key=lambda kv: -kv[1]))
    )
    if stats.implausible:
        print(
            "\nImplausible by variable: "
            + ", ".join(f"{k} {v}" for k, v in stats.implausible.most_common())
        )
    if stats.bad_unit:
        print(
            "\nUnit not accepted: "
            + ", ".join(f"{k[0]} '{k[1]}' {v}" for k, v in stats.bad_unit.most_common())
        )
    print(f"\nTop {top} unmapped codes:\n")
    print("| system | code | Observations |")
    print("| --- | --- | --- |")
    for (system, code), count in stats.unmapped.most_common(top):
        print(f"| {system.rsplit('/', 1)[-1] or '(none)'} | {code or '(none)'} | {count:,} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    report("Synthea (181 bundles)", synthea(), args.top)
    report("MIMIC-IV FHIR demo (Observation files)", mimic(), args.top)


if __name__ == "__main__":
    main()
