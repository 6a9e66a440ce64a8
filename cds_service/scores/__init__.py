"""Bedside clinical scores computed from a patient's most recent canonical values.

The scores are pure functions: the caller picks each variable's most recent value inside a
look-back window it chose and passes them in as :class:`TimedValue`; nothing here reads a clock,
Redis or FHIR. ``news2`` is the trigger for the deterioration card; ``qsofa`` is context only.

This package module holds only what both scores share, so that importing a score never imports
the other one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["TimedValue", "Vitals", "iso_utc", "require_aware", "round_half_up"]


@dataclass(frozen=True, slots=True)
class TimedValue:
    """One variable's most recent value, in its canonical UCUM unit, and when it was taken."""

    value: float
    time: datetime


#: canonical variable name (the catalogue's, e.g. ``resp_rate``) → its most recent value.
Vitals = Mapping[str, TimedValue]


def round_half_up(value: float, decimals: int = 0) -> Decimal:
    """Round a charted value the way a person reads it: halves go up, on its decimal digits.

    Python's ``round`` rounds halves to even and works on the binary float, so ``round(38.05, 1)``
    gives 38.0 because the float is 38.04999…; a nurse writing 38.05 on a one-decimal chart
    writes 38.1. Going through ``str`` (the shortest repr that round-trips) keeps the digits the
    value was recorded with, and ``ROUND_HALF_UP`` moves halves away from zero.
    """
    quantum = Decimal(1).scaleb(-decimals)
    return Decimal(str(value)).quantize(quantum, rounding=ROUND_HALF_UP)


def require_aware(moment: datetime, what: str) -> None:
    """Refuse a naive datetime: a card shows times in UTC and a naive time has no defined UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {moment.isoformat()}")


def iso_utc(moment: datetime) -> str:
    """An aware time as ISO 8601 in UTC to the second, e.g. ``2026-03-01T08:15:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
