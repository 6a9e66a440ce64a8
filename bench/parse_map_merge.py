"""Parse + map + merge of a 200-Observation prefetch Bundle, as a hook call does it.

    .venv/bin/python bench/parse_map_merge.py [--observations 200] [--repeat 2000]

The Bundle is made of real vital-sign and laboratory Observations from the shared Synthea data
(../shared/data/synthea), one patient's, repeated with fresh ids if that patient has fewer. Three
timings per repetition, on one core: ``orjson.loads`` of the bytes; lean extract + canonicalise
(``fhir_adapters.observations.map_observations``); the timeline merge into a real redis-server on
loopback (one Lua call, one round trip). For comparison the same Bundle through fhir.resources.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from fhir.resources.R4B.bundle import Bundle
from pydantic import SecretStr

from cds_service.redis_server import EmbeddedRedis
from cds_service.security.pseudonym import Pseudonymiser
from cds_service.store.timeline import TimelineStore
from fhir_adapters.observations import MappingStats, map_observations
from fhir_adapters.variables import VARIABLES

SYNTHEA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea"


def bundle_of(count: int) -> dict[str, Any]:
    observations: list[dict[str, Any]] = []
    for path in sorted(SYNTHEA.glob("**/*.json.gz")):
        document = orjson.loads(gzip.decompress(path.read_bytes()))
        for entry in document["entry"]:
            resource = entry["resource"]
            categories = str(resource.get("category"))
            if resource["resourceType"] == "Observation" and (
                "vital-signs" in categories or "laboratory" in categories
            ):
                observations.append(resource)
        if len(observations) >= count:
            break
    if not observations:
        raise SystemExit(f"no Synthea data under {SYNTHEA}")
    entries = []
    for i in range(count):
        resource = dict(observations[i % len(observations)], id=f"bench-{i}")
        resource["subject"] = {"reference": "Patient/bench"}
        entries.append(
            {"fullUrl": f"https://ehr.example.org/fhir/Observation/bench-{i}", "resource": resource}
        )
    return {"resourceType": "Bundle", "type": "searchset", "total": count, "entry": entries}


def quantiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return f"median {statistics.median(ordered):.3f} ms, p99 {p99:.3f} ms"


async def merge_timings(mapped: list[Any], repeat: int) -> list[float]:
    with EmbeddedRedis() as server:
        client = aioredis.Redis.from_url(server.url)
        store = TimelineStore(client, Pseudonymiser(SecretStr("b" * 40)), VARIABLES, 72 * 3600)
        now = max(o.time for o in mapped)
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            await store.merge("bench", mapped, now)
            timings.append((time.perf_counter() - started) * 1000)
        await client.aclose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--observations", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    raw = orjson.dumps(bundle_of(args.observations))
    parse, mapping, both = [], [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        document = orjson.loads(raw)
        t1 = time.perf_counter()
        stats = MappingStats()
        mapped = map_observations([document], stats, patient="bench")
        t2 = time.perf_counter()
        parse.append((t1 - t0) * 1000)
        mapping.append((t2 - t1) * 1000)
        both.append((t2 - t0) * 1000)
    validated = []
    for _ in range(20):
        t0 = time.perf_counter()
        Bundle.model_validate(orjson.loads(raw))
        validated.append((time.perf_counter() - t0) * 1000)
    merge = asyncio.run(merge_timings(mapped, min(args.repeat, 500)))
    print(f"{args.observations} Observations, {len(raw) / 1024:.0f} KiB, {len(mapped)} values")
    print(f"  orjson.loads:            {quantiles(parse)}")
    print(f"  extract + canonicalise:  {quantiles(mapping)}")
    print(f"  parse + map:             {quantiles(both)}")
    print(f"  timeline merge (Redis):  {quantiles(merge)}")
    print(f"  fhir.resources Bundle:   {quantiles(validated)}")
    print(f"  measured {datetime.now(UTC):%Y-%m-%d}")


if __name__ == "__main__":
    main()
