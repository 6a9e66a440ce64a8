"""Live drift counts in the real Redis: one round trip per batch, window sums, expiry, counts only,
and a unit error (°F labelled °C) caught on the real reference of a model version."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cds_service.drift import Reference, Thresholds, classify
from cds_service.drift.live import LiveStats, hour_of, report
from cds_service.errors import DependencyUnavailable
from cds_service.features import FEATURE_NAMES
from cds_service.redis_server import EmbeddedRedis, free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")

NOW = datetime(2026, 11, 30, 12, 30, tzinfo=UTC)
REFERENCE_JSON = Path(__file__).parents[2] / "model_artifacts/sepsis-gbdt-AB-1/reference.json"
REFERENCE = Reference.from_json(json.loads(REFERENCE_JSON.read_text()), FEATURE_NAMES)
_VERSIONS = count()

#: What a temperature fed in °F but labelled °C does to each temperature feature.
FAHRENHEIT = {
    **{
        name: (lambda v: v * 1.8 + 32)
        for name in FEATURE_NAMES
        if name.startswith("temperature_")
        and name.split("_", 1)[1].startswith(("last", "mean", "min", "max"))
    },
    "temperature_delta_6h": lambda v: v * 1.8,
    "news2_temperature": lambda v: np.where(np.isnan(v), v, 2.0),  # every reading above 39.1
}


class Harness:
    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.Redis.from_url(url)

    def stats(self, **options: Any) -> LiveStats:
        return LiveStats(self.client, f"test-{next(_VERSIONS)}", REFERENCE, **options)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@pytest.fixture
def harness(redis_server: EmbeddedRedis) -> Iterator[Harness]:
    h = Harness(redis_server.url)
    yield h
    h.close()


def sample_bins(
    rng: np.random.Generator, edges: np.ndarray, shares: np.ndarray, size: int
) -> np.ndarray:
    """Values drawn from the binned reference: a bin by its share, then a point inside it."""
    inner = edges[1:-1]
    if inner.size == 0:
        return rng.normal(size=size)
    k = rng.choice(len(shares), size=size, p=shares / shares.sum())
    u = 1.0 - rng.random(size)  # (0, 1]: bins are right-closed
    width = max(float(inner[-1] - inner[0]), 1.0)
    lo = np.concatenate([[inner[0] - width], inner])
    hi = np.concatenate([inner, [inner[-1] + width]])
    return lo[k] + (hi[k] - lo[k]) * u


def distinct(n: int) -> list[str]:
    """One pseudonym per row: sampled rows are independent patients."""
    return [f"p{i:06d}" for i in range(n)]


def reference_rows(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores sampled from the reference quantiles and missing rates."""
    rows = np.empty((size, len(REFERENCE.features)), dtype=np.float32)
    for j, feature in enumerate(REFERENCE.features):
        column = sample_bins(rng, feature.bins.edges, feature.bins.expected, size)
        column[rng.random(size) < feature.missing] = np.nan
        rows[:, j] = column
    scores = sample_bins(rng, REFERENCE.score.edges, REFERENCE.score.expected, size)
    return rows, np.clip(scores, 0.0, 1.0)


def test_record_twice_then_the_window_sums(harness: Harness, redis_client: redis.Redis) -> None:
    stats = harness.stats()
    rng = np.random.default_rng(1)
    first, first_scores = reference_rows(rng, 50)
    second, second_scores = reference_rows(rng, 30)
    harness.run(stats.record(first, first_scores, alerts=2, patient_hours=50.0, now=NOW))
    later = NOW + timedelta(hours=1)
    harness.run(stats.record(second, second_scores, alerts=1, patient_hours=30.5, now=later))

    counts = harness.run(stats.window(2, later))
    assert (counts.rows, counts.alerts, counts.patient_hours) == (80, 3, 80.5)
    both = np.vstack([first, second])
    for j in range(len(FEATURE_NAMES)):
        assert counts.feature_missing[j] == int(np.isnan(both[:, j]).sum())
        assert counts.feature_counts[j].sum() + counts.feature_missing[j] == 80
    temperature = FEATURE_NAMES.index("temperature_last")
    expected = np.bincount(
        np.searchsorted(
            REFERENCE.features[temperature].bins.inner,
            both[:, temperature][~np.isnan(both[:, temperature])].astype(np.float64),
        ),
        minlength=REFERENCE.features[temperature].bins.size,
    )
    assert counts.feature_counts[temperature].tolist() == expected.tolist()
    assert counts.score_counts.sum() == 80

    only_last = harness.run(stats.window(1, later))
    assert (only_last.rows, only_last.alerts) == (30, 1)
    assert harness.run(stats.window(1, NOW + timedelta(hours=3))).rows == 0


def test_keys_hold_counts_only_and_expire(harness: Harness, redis_client: redis.Redis) -> None:
    stats = harness.stats(retention=timedelta(days=8))
    rows, scores = reference_rows(np.random.default_rng(2), 40)
    harness.run(stats.record(rows, scores, alerts=1, patient_hours=40.0, now=NOW))
    keys = redis_client.keys(f"cds:drift:{stats.version}:*")
    assert keys == [f"cds:drift:{stats.version}:{hour_of(NOW)}".encode()]
    assert 0 < redis_client.pttl(keys[0]) <= timedelta(days=8).total_seconds() * 1000
    field = re.compile(rb"f\d+:(b\d+|nan)|score:b\d+|n|alerts|patient_hours")
    for name, value in redis_client.hgetall(keys[0]).items():
        assert field.fullmatch(name), name
        assert re.fullmatch(rb"\d+(\.\d+)?", value), (name, value)
    # No feature value or score is stored, only how many fell in each bin.
    assert int(redis_client.hget(keys[0], "n") or 0) == 40

    short = harness.stats(retention=timedelta(milliseconds=300))
    harness.run(short.record(rows, scores, alerts=0, patient_hours=1.0, now=NOW))
    assert redis_client.exists(short.key(hour_of(NOW)))
    time.sleep(0.5)
    assert not redis_client.exists(short.key(hour_of(NOW)))


def test_bad_input_is_refused(harness: Harness) -> None:
    stats = harness.stats()
    rows, scores = reference_rows(np.random.default_rng(3), 5)
    with pytest.raises(ValueError, match="rows must be"):
        harness.run(stats.record(rows[:, :3], scores, 0, 1.0, NOW))
    with pytest.raises(ValueError, match="one score per row"):
        harness.run(stats.record(rows, scores[:2], 0, 1.0, NOW))
    with pytest.raises(ValueError, match="timezone-aware"):
        harness.run(stats.record(rows, scores, 0, 1.0, NOW.replace(tzinfo=None)))
    with pytest.raises(ValueError, match="longer than the counts are kept"):
        harness.run(stats.window(24 * 9, NOW))
    with pytest.raises(ValueError, match="model version"):
        LiveStats(harness.client, "bad version:*", REFERENCE)


def test_redis_down_is_a_dependency_error() -> None:
    loop = asyncio.new_event_loop()
    client = aioredis.Redis(
        port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    stats = LiveStats(client, "down", REFERENCE)
    rows, scores = reference_rows(np.random.default_rng(4), 3)
    try:
        with pytest.raises(DependencyUnavailable):
            loop.run_until_complete(stats.record(rows, scores, 0, 3.0, NOW))
        with pytest.raises(DependencyUnavailable):
            loop.run_until_complete(stats.window(1, NOW))
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


def test_reference_traffic_is_ok(harness: Harness) -> None:
    stats = harness.stats()
    rows, scores = reference_rows(np.random.default_rng(5), 5000)
    # The validation alert rate: 55.8 per 100 patient-days.
    harness.run(stats.record(rows, scores, 116, 5000.0, NOW, patients=distinct(len(rows))))
    drift = report(harness.run(stats.window(24, NOW)), REFERENCE)
    verdict = classify(drift, Thresholds())
    # Nothing acts. Rare labs (bilirubin_direct: about 220 of 5000 rows present) sit near
    # min_rows, where the sampling noise of the Wasserstein figure alone can reach a warning.
    acting = [name for name, level in verdict.features.items() if level == "act"]
    assert acting == []
    assert verdict.inputs in {"ok", "warn"}
    assert verdict.behaviour == "ok"
    # PSI above its sampling floor, (bins - 1) / n: rare labs have ~220 values in 14 bins.
    assert max(f.psi - (f.bins - 1) / f.n for f in drift.features.values() if f.n) < 0.1
    assert drift.score_psi < 0.1
    assert drift.alert_rate == pytest.approx(55.68, abs=0.01)


def test_fahrenheit_labelled_celsius_breaks_the_inputs_only(harness: Harness) -> None:
    stats = harness.stats()
    rows, scores = reference_rows(np.random.default_rng(6), 5000)
    for name, convert in FAHRENHEIT.items():
        j = FEATURE_NAMES.index(name)
        rows[:, j] = convert(rows[:, j])
    earlier = NOW - timedelta(hours=5)
    patients = distinct(len(rows))
    harness.run(stats.record(rows[:2500], scores[:2500], 58, 2500.0, earlier, patients[:2500]))
    harness.run(stats.record(rows[2500:], scores[2500:], 58, 2500.0, NOW, patients[2500:]))
    drift = report(harness.run(stats.window(24, NOW)), REFERENCE)
    verdict = classify(drift, Thresholds())
    assert drift.features["temperature_last"].psi >= 0.25
    assert verdict.features["temperature_last"] == "act"
    assert all(
        verdict.features[name] == "act" for name in FAHRENHEIT if name != "temperature_delta_6h"
    )
    others = {name: level for name, level in verdict.features.items() if name not in FAHRENHEIT}
    assert "act" not in others.values()
    assert max(drift.features[n].psi - (drift.features[n].bins - 1) / drift.features[n].n
               for n in others if drift.features[n].n) < 0.1  # fmt: skip
    assert (verdict.inputs, verdict.behaviour) == ("act", "ok")


def test_without_patient_sketches_no_distribution_is_judged(harness: Harness) -> None:
    """Rows whose patients are unknown could be one patient's hours: nothing is judged."""
    stats = harness.stats()
    rows, scores = reference_rows(np.random.default_rng(7), 3000)
    rows[:, FEATURE_NAMES.index("temperature_last")] = np.nan  # a silent feed
    harness.run(stats.record(rows, scores, 30, 3000.0, NOW))
    counts = harness.run(stats.window(24, NOW))
    assert counts.stays == 0
    verdict = classify(report(counts, REFERENCE), Thresholds())
    assert verdict.inputs == "ok" and verdict.score_psi == "ok"
