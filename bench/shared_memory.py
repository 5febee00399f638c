"""What Triton's system shared memory extension buys a client on the same host: perf_analyzer at one
concurrency against one tensorgate server, each model swept with its tensors in the gRPC messages and
with ``--shared-memory system`` (inputs and outputs in regions it registers), in alternating order, in
interleaved rounds; raw ONNX Runtime at batch 16 (its default threads) timed after each round as the
baseline of the issue-14 target for cnn.

    .venv/bin/python bench/shared_memory.py                       # cnn and identity, c16, 4 rounds (~6 min)
    .venv/bin/python bench/shared_memory.py --models cnn --rounds 2 --no-results

Prints a table per model (medians over the rounds, and each round's ratio of shared memory to messages)
and appends it to bench/RESULTS.md with the machine, the commit and the command.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import make_models
from load import PaRun, log, log_pa, perf_analyzer, raw_ort
from processes import Server
from run import append_results, git_state
from run import parse_args as bench_settings
from settings import RESULTS
from tables import RunInfo, fmt_int, fmt_ms, fmt_x, median, table

TRANSFERS = {"messages": (), "system shared memory": ("--shared-memory", "system")}


@dataclass
class Sweep:
    model: str
    transfer: str
    runs: list[PaRun]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="cnn,identity", help="comma-separated models of bench/make_models.py")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--measurement-ms", type=int, default=3000, help="perf_analyzer -p")
    p.add_argument("--raw-seconds", type=float, default=2.0, help="raw ONNX Runtime timing a round (cnn, batch 16)")
    p.add_argument("--no-results", action="store_true", help=f"print only; do not append to {RESULTS}")
    return p.parse_args(argv)


def _ratios(a: list[PaRun], b: list[PaRun]) -> list[float]:
    return [x.infer_per_s / y.infer_per_s if x.ok and y.ok else math.nan for x, y in zip(a, b, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    info = RunInfo(shlex.join([sys.executable, *sys.argv]), git_state())
    c = args.concurrency
    s = bench_settings(
        ["--models", ",".join(models), "--concurrency", str(c), "--measurement-ms", str(args.measurement_ms)]
    )
    sweeps = {(m, t): Sweep(m, t, []) for m in models for t in TRANSFERS}
    raw: dict[str, list[float]] = {m: [] for m in models if make_models.MODELS[m].file.startswith("cnn")}
    with tempfile.TemporaryDirectory(prefix="tg-shm-") as tmp_name:
        tmp = Path(tmp_name)
        repo = make_models.build(tmp / "repo", models)
        server = Server.tensorgate(repo, tmp / "server.log")
        try:
            server.wait_ready(models=models)
            for n in range(args.rounds):
                for model in models:
                    order = list(TRANSFERS) if n % 2 == 0 else list(reversed(TRANSFERS))
                    for transfer in order:
                        label = "shm-" if TRANSFERS[transfer] else "msg-"
                        run = perf_analyzer(server, model, c, n, s, tmp, label=label, extra=TRANSFERS[transfer])
                        log_pa(f"round {n + 1} {model} ({transfer})", run)
                        sweeps[model, transfer].runs.append(run)
                for model, rates in raw.items():
                    info_m = make_models.MODELS[model]
                    rates.append(
                        raw_ort(
                            make_models.model_file(repo, model), info_m.input_dims, 16, 0, args.raw_seconds
                        ).samples_per_s
                    )
                    log(f"round {n + 1} raw ONNX Runtime {model} b16: {rates[-1]:,.0f} samples/s")
        finally:
            code = server.stop()
        if code != 0:
            log(f"the server exited with {code}:\n{server.log_tail()}")
    info.finish()
    rows = []
    for (model, transfer), sweep in sweeps.items():
        runs = sweep.runs
        base = sweeps[model, "messages"].runs
        rates = [r.infer_per_s for r in runs]
        row = [
            model,
            transfer,
            " / ".join(fmt_int(r) for r in rates),
            fmt_int(median(rates)),
            " / ".join(fmt_x(x) for x in _ratios(runs, base)),
            fmt_x(median([r.avg_batch for r in runs])),
            fmt_int(median([r.server_cpu_us for r in runs])),
            fmt_int(median([r.client_cpu_us for r in runs])),
            fmt_ms(median([r.p50_us for r in runs])),
        ]
        if model in raw:
            row.append(" / ".join(fmt_x(r.infer_per_s / b) for r, b in zip(runs, raw[model], strict=True)))
        else:
            row.append("-")
        rows.append(row)
    headers = [
        "model",
        "tensors travel in",
        "infer/s by round",
        "median",
        "vs messages, by round",
        "avg batch",
        "server CPU µs/req",
        "perf_analyzer CPU µs/req",
        "p50 ms",
        "vs raw ORT b16, by round",
    ]
    raw_lines = [
        f"- raw ONNX Runtime {m} batch 16 (default threads), samples/s by round: "
        + " / ".join(fmt_int(r) for r in rates)
        for m, rates in raw.items()
    ]
    failures = [
        f"- {k[0]} ({k[1]}) round {r.repeat + 1}: {r.error}" for k, w in sweeps.items() for r in w.runs if not r.ok
    ]
    text = "\n".join(
        [
            *info.header(": tensors in gRPC messages vs system shared memory (bench/shared_memory.py, issue 14)"),
            f"- load: perf_analyzer -i grpc, concurrency {c}, one sample per request, -p {args.measurement_ms}, on "
            f"the same cores; {args.rounds} interleaved rounds, the two transfers in alternating order",
            *raw_lines,
            "",
            table(headers, rows),
            "",
            *(["Failed runs:", *failures, ""] if failures else []),
        ]
    )
    print(text)
    if not args.no_results:
        append_results(RESULTS, text)
    return 0 if code == 0 and not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
