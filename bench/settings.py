"""Where the bench's files are, and what one run of bench/run.py measures (``Settings``, from its command line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PERF_ANALYZER = ROOT / "scripts" / "perf_analyzer"
RESULTS = BENCH / "RESULTS.md"


@dataclass(frozen=True)
class Settings:
    models: tuple[str, ...]
    concurrency: tuple[int, ...]
    repeats: int
    measurement_ms: int  # perf_analyzer -p
    stability_pct: int  # perf_analyzer -s
    max_trials: int  # perf_analyzer -r
    open_loop_s: float
    open_loop_warmup_s: float
    rate_fractions: tuple[float, ...]
    arrival: str  # "poisson" or "uniform"
    raw_seconds: float  # raw ORT timing per batch size
    repo: Path
    results: Path | None
    quick: bool
    peer: bool  # also sweep the bare grpc.aio echo (bench/echo_server.py) when identity is measured
    metrics_ab: bool  # only the metrics on / off comparison (bench/metrics_ab.py)
    http_models: tuple[str, ...] = ()  # also swept with perf_analyzer -i http (the server's HTTP/REST port)
    http_concurrency: tuple[int, ...] = ()  # the concurrencies of those HTTP sweeps (each also swept over gRPC)
    triton_models: tuple[str, ...] = ()  # also served by Triton's Python backend (bench/triton_python.py), same sweeps
