"""A dependency-free progress bar for the long steps of `make train` (written to stderr)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Prints ``label [#####.....] done/total, rate/s, ~eta`` about every 5 % and at the end."""

    def __init__(self, label: str, total: int, unit: str = "items") -> None:
        self._label, self._total, self._unit = label, max(total, 1), unit
        self._done = 0
        self._next = 0.0
        self._started = time.perf_counter()

    def step(self, count: int = 1) -> None:
        self._done += count
        fraction = min(self._done / self._total, 1.0)
        if fraction < self._next and self._done < self._total:
            return
        self._next = fraction + 0.05
        elapsed = time.perf_counter() - self._started
        rate = self._done / elapsed if elapsed > 0 else 0.0
        eta = (self._total - self._done) / rate if rate > 0 else 0.0
        bar = "#" * int(fraction * 20)
        sys.stderr.write(
            f"{self._label} [{bar:<20}] {self._done:,}/{self._total:,} {self._unit}, "
            f"{rate:,.0f}/s, ~{eta:.0f} s left\n"
        )
        sys.stderr.flush()
