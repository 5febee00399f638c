"""Formatting for the report: medians that skip missing values, numbers as the tables print them, markdown
tables, and batch-size shares."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterator, Sequence


def median(values: Iterator[float] | Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def fmt_int(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:,.0f}"


def fmt_ms(us: float) -> str:
    if math.isnan(us):
        return "-"
    ms = us / 1000
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_x(v: float, digits: int = 2) -> str:
    return "-" if math.isnan(v) or math.isinf(v) else f"{v:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    right = [i > 0 for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))
        return "| " + " | ".join(padded) + " |"

    rules = (("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right, strict=True))
    sep = "|" + "|".join(rules) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def top_batches(batches: Counter[int], k: int = 3) -> str:
    total = sum(batches.values())
    if not total:
        return "-"
    return ", ".join(f"{b}:{100 * n / total:.0f}%" for b, n in batches.most_common(k))
