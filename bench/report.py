"""Numbers and verdicts of a bench report: medians and PASS/MISS against a target."""

from __future__ import annotations

import statistics


def median(values: list[float]) -> float:
    """The median of ``values`` (NaN when there are none)."""
    return float(statistics.median(values)) if values else float("nan")


def status(ok: bool) -> str:
    """A verdict's word in the report: PASS or MISS."""
    return "PASS" if ok else "MISS"
