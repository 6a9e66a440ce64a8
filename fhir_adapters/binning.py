"""Hourly binning: how timed observations become one value per variable per hour.

The rule, used by every flow (FHIR on the request path, the Redis timeline, training):

* **Bins.** Hours are counted from the encounter's start: the ICU admission when it is known,
  else the start of the encounter. Bin ``k`` (``k >= 1``) covers the half-open interval
  ``[start + (k - 1) h, start + k h)``. So an observation exactly at ``start`` is in bin 1, one
  at ``start + 1 h`` is in bin 2 (each hour owns its opening edge, not its closing one), and one
  a microsecond before ``start`` is in bin 0.
* **Before the start.** An observation before ``start`` gets a bin ``<= 0`` (``0`` for the hour
  just before, ``-1`` for the one before that, ...). This module keeps them; the caller decides
  whether pre-admission values (an ED lactate, say) are carried in or dropped.
* **Several values in one bin.** The last one wins: the value with the latest time; at equal
  times, the one whose ``source`` sorts last, so the result never depends on input order.

**PhysioNet 2019 rows follow the same rule.** ``ICULOS`` is hours since ICU admission and one PSV
row holds that hour's values (Reyna et al., Crit Care Med 2020;48:210), so *one PSV row is bin
ICULOS*. Code that turns a row into ``CanonicalObservation``s must give them a time inside that
bin, ``bin_start(start, ICULOS)``, so ``bin_of`` maps them back to ``ICULOS`` and a patient read
from PSV and the same patient sent as FHIR give identical hourly values.

Times must be timezone-aware (canonical observations are UTC); naive datetimes are refused, since
mixing them with aware ones would shift values by a time-zone offset without any error.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from fhir_adapters.canonical import CanonicalObservation

HOUR = timedelta(hours=1)

HourlyValues = dict[int, dict[str, float]]
"""Bin number -> variable name -> value, bins in ascending order."""


def _require_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (got a naive datetime)")


def bin_of(time: datetime, start: datetime) -> int:
    """The bin of ``time``: ``k`` such that ``start + (k-1) h <= time < start + k h``."""
    _require_aware(time, "observation time")
    _require_aware(start, "start")
    # timedelta // timedelta floors, so times before start give 0, -1, ... as intended.
    return (time - start) // HOUR + 1


def bin_start(start: datetime, k: int) -> datetime:
    """The first instant of bin ``k``, ``start + (k-1) h``: e.g. the time of a PSV row's values."""
    _require_aware(start, "start")
    return start + (k - 1) * HOUR


def hourly_values(observations: Iterable[CanonicalObservation], start: datetime) -> HourlyValues:
    """Per bin, per variable, the last value (see the module docstring), for one patient.

    Bins ``<= 0`` (before ``start``) are included; drop them with ``{k: v for k, v in ... if k >
    0}`` where pre-start values are not wanted. Observations of several patients are not told
    apart: pass one patient's observations.
    """
    _require_aware(start, "start")
    best: dict[tuple[int, str], tuple[datetime, str, float]] = {}
    for obs in observations:
        k = bin_of(obs.time, start)
        key = (k, obs.variable)
        candidate = (obs.time, obs.source, obs.value)
        held = best.get(key)
        # Compare (time, source) only: the value must not decide a tie.
        if held is None or candidate[:2] > held[:2]:
            best[key] = candidate
    result: HourlyValues = {}
    for (k, variable), (_, _, value) in sorted(best.items(), key=lambda item: item[0]):
        result.setdefault(k, {})[variable] = value
    return result
