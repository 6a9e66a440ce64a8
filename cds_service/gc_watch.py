"""Garbage-collector pauses as a metric, and freezing what start-up allocated.

CPython's cyclic collector stops the process while it walks the tracked objects of a generation;
a full (generation 2) collection over a large long-lived heap took tens of milliseconds here,
which is a p99 outlier on a 10 ms budget. ``gc.freeze()`` after start-up moves everything
allocated so far (model, code index, settings, imported modules) out of the collector's reach.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Histogram


def freeze_startup_heap() -> None:
    gc.collect()
    gc.freeze()


def watch_pauses(histogram: Histogram) -> Callable[[], None]:
    """Observe every collection's duration by generation; returns a function that stops it."""
    started: list[float] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            histogram.labels(generation=str(info.get("generation"))).observe(
                time.perf_counter() - started.pop()
            )

    gc.callbacks.append(callback)
    return lambda: gc.callbacks.remove(callback)
