"""Small-cell suppression for the site report: primary and complementary, one partition at a time.

A site report leaves the hospital, so no figure in it may describe fewer than ``MIN_CELL`` (10)
patients, or, for what depends on the positives, fewer than 10 septic patients. Hiding the small
cell is not enough when the cells of a partition add up to a published total (the sexes to the
cohort, the risk bins to the patient-hours): the one hidden cell would be the total minus the
others. So, within one partition:

1. *primary*: every cell counting 1 to ``minimum - 1`` is hidden. A cell of 0 describes nobody
   and is shown; hiding zeros would hide the totals of every cohort that lacks a category.
2. *complementary*: while exactly one cell is hidden, or the hidden cells together count fewer
   than ``minimum`` (so that "the rest" would itself be a small cell), the smallest shown cell
   that counts someone is hidden too (zeros only when nothing else is left).

This is the rule of thumb of statistical agencies' table suppression, applied per partition. It
does not defend against every combination of partitions with each other (sex by age is never
published, which keeps that attack small); the report says so.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Final, Literal, TypeVar

MIN_CELL: Final = 10
"""The smallest number of patients (or of septic patients) a published figure may describe."""

Reason = Literal[
    "small-cell-patients",
    "small-cell-septic-patients",
    "complementary",
    "undefined",
]
"""Why a value is null: a cell of fewer than ``MIN_CELL`` patients (or septic patients, for what
depends on the positives), hidden to protect a small cell, or not defined (AUROC of a group
without positives)."""


#: a partition's cell names (a subgroup's level, a risk bin, an exclusion reason)
Cell = TypeVar("Cell", bound=str)


def small_cells(counts: Mapping[Cell, int], minimum: int = MIN_CELL) -> set[Cell]:
    """The cells counting at least one and fewer than ``minimum``."""
    return {cell for cell, count in counts.items() if 0 < count < minimum}


def complementary(
    counts: Mapping[Cell, int], hidden: Collection[Cell], minimum: int = MIN_CELL
) -> set[Cell]:
    """The further cells to hide so that no hidden cell of ``counts`` can be recovered from the
    partition's total and the shown cells (and the hidden ones together are not a small cell).

    ``hidden`` is what is hidden already, for any reason; the result excludes it."""
    concealed = set(hidden) & set(counts)
    added: set[Cell] = set()

    def needs_more() -> bool:
        if not concealed:
            return False
        return len(concealed) == 1 or sum(counts[c] for c in concealed) < minimum

    while needs_more():
        shown = [c for c in counts if c not in concealed]
        if not shown:
            break
        # Smallest first, counting cells before zeros, then by name for a stable choice.
        choice = min(shown, key=lambda c: (counts[c] == 0, counts[c], c))
        concealed.add(choice)
        added.add(choice)
    return added


def suppress(
    counts: Mapping[Cell, int],
    minimum: int = MIN_CELL,
    hidden: Mapping[Cell, Reason] | None = None,
    small: Reason = "small-cell-patients",
) -> dict[Cell, Reason]:
    """Every cell of one partition to hide, with its reason: those already ``hidden`` (kept with
    their reason), the small cells (``small``) and the complementary ones."""
    reasons: dict[Cell, Reason] = dict(hidden or {})
    for cell in sorted(small_cells(counts, minimum)):
        reasons.setdefault(cell, small)
    for cell in complementary(counts, reasons.keys(), minimum):
        reasons[cell] = "complementary"
    return reasons
