"""Formatting for the report: medians that skip missing values, numbers as the tables print them, markdown
tables, batch-size shares, and :class:`RunInfo`, the header every section of bench/RESULTS.md starts with."""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import onnxruntime as ort
from processes import cpu_model


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


def load_average() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


@dataclass
class RunInfo:
    """The command, the machine, the code and the machine's load: the first lines of a RESULTS.md section."""

    command: str
    code: str  # git_state() when the run started, before the server imported the code
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc))
    load_before: str = field(default_factory=load_average)
    load_after: str = ""
    seconds: float = 0.0
    _t0: float = field(default_factory=time.monotonic)

    def finish(self) -> None:
        self.seconds = time.monotonic() - self._t0
        self.load_after = load_average()

    def header(self, title: str) -> list[str]:
        uname = platform.uname()
        return [
            f"## {self.started:%Y-%m-%d %H:%M} UTC{title}",
            "",
            f"- command: `{self.command}`",
            f"- machine: {cpu_model()}, {os.cpu_count()} cores, Linux {uname.release}; "
            f"Python {platform.python_version()}, onnxruntime {ort.__version__}, grpcio {grpc.__version__}, "
            f"numpy {np.__version__}",
            f"- code: {self.code}",
            f"- load average before the run: {self.load_before}, after: {self.load_after}; "
            f"run took {self.seconds / 60:.1f} min",
        ]
