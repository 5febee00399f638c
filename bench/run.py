"""The batching benchmark: tensorgate under Triton's perf_analyzer, an open-loop generator, and raw ONNX Runtime.

    python bench/run.py [--quick] [--models identity,mlp,...] [--concurrency 1,4,16,64] [--repeats 3]
    python bench/run.py --metrics-ab [--models identity,mlp] [--concurrency 16] [--repeats 3]

One run builds the model repository (bench/make_models.py), starts ``tensorgate serve`` on a free port,
checks that every model answers exactly what raw ONNX Runtime answers, sweeps closed-loop load with
perf_analyzer (``--repeats`` times, medians reported; ``--http-models`` also through the server's HTTP/REST port,
``perf_analyzer -i http`` at c1 and c16, printed beside gRPC in a ratio table), drives open-loop (fixed-rate)
load with a tritonclient.grpc.aio generator, stops the server with SIGTERM (it must exit 0), sweeps the same
concurrencies on a bare grpc.aio echo of ``identity`` (bench/echo_server.py, the peer baseline: what any
Python gRPC server does on the day's machine), measures raw in-process ONNX Runtime with nothing else
running, prints the tables and appends them to bench/RESULTS.md.

``--metrics-ab`` runs only the metrics on / off comparison instead (bench/metrics_ab.py): per round, one server
with metrics on and scraped once a second and one with metrics off, same flags otherwise, in alternating order.

It is a benchmark, not a test: missed targets are reported, not failed. The exit status is 1 only when
the server answered differently from ONNX Runtime, a perf_analyzer run failed, a server did not start, or a
server did not exit 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules below import each other by name
import make_models
import metrics_ab
import onnxruntime as ort
import triton_python
from load import (
    PaRun,
    check_model,
    formed_batch,
    log,
    log_pa,
    open_loop,
    perf_analyzer,
    raw_ort,
    raw_session,
    raw_throughput,
)
from processes import CpuDelta, CpuSample, Server
from report import EchoSweep, Report, TritonPeer, cell_median
from settings import PERF_ANALYZER, RESULTS, ROOT, Settings
from tables import RunInfo, fmt_int, fmt_ms, fmt_x, table
from tensorgate.frontend import grpc_experiments

HTTP_MODELS = ("identity", "cnn")  # swept over HTTP/REST too, by default
HTTP_CONCURRENCY = (1, 16)
TRITON_MODELS = ("identity", "mlp", "cnn")  # served by Triton's Python backend too, by default


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run: c1 and c16, one repeat, short windows")
    p.add_argument(
        "--metrics-ab",
        action="store_true",
        help="only compare metrics on (scraped every second) with metrics off, servers started alternately "
        "(default models identity,mlp, concurrency 16)",
    )
    p.add_argument(
        "--models",
        help=f"comma-separated models (default: {','.join(make_models.DEFAULT_MODELS)}; also: cnn_small)",
    )
    p.add_argument(
        "--concurrency",
        help="comma-separated closed-loop concurrencies (default 1,4,16,64; quick 1,16; --metrics-ab 16)",
    )
    p.add_argument(
        "--repeats", type=int, help="closed-loop sweeps (--metrics-ab: rounds), medians reported (default 3; quick 1)"
    )
    p.add_argument("--measurement-ms", type=int, help="perf_analyzer -p (default 1500; quick 500)")
    p.add_argument("--stability", type=int, help="perf_analyzer -s percent (default 25; quick 40)")
    p.add_argument("--max-trials", type=int, help="perf_analyzer -r (default 6; quick 4)")
    p.add_argument("--open-loop-seconds", type=float, help="open-loop run length per rate (default 5; quick 2)")
    p.add_argument(
        "--rates",
        default="0.5,0.9",
        help="open-loop rates as fractions of closed-loop c16 infer/s (the highest c when 16 is not run)",
    )
    p.add_argument("--arrival", choices=("poisson", "uniform"), default="poisson", help="open-loop spacing")
    p.add_argument("--repo", type=Path, default=make_models.DEFAULT_REPO, help="model repository to (re)write")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file the run is appended to")
    p.add_argument("--no-results", action="store_true", help="do not append to the results file")
    p.add_argument(
        "--no-peer", action="store_true", help="skip the bare grpc.aio echo peer baseline (bench/echo_server.py)"
    )
    p.add_argument(
        "--http-models",
        default=",".join(HTTP_MODELS),
        help="comma-separated models (of --models) also swept with perf_analyzer -i http at c1 and c16 (those of "
        "--concurrency), beside gRPC in the same run; empty: none",
    )
    p.add_argument(
        "--triton-models",
        default=",".join(TRITON_MODELS),
        help="comma-separated models (of --models) also served by Triton's Python backend (bench/triton_python.py, "
        "installed by scripts/install_triton_python.sh) and swept right after tensorgate in every sweep; empty: none",
    )
    a = p.parse_args(argv)
    quick, ab = bool(a.quick), bool(a.metrics_ab)
    default_models = ("identity", "mlp") if ab else tuple(make_models.DEFAULT_MODELS)
    models = tuple(m for m in a.models.split(",") if m) if a.models else default_models
    unknown = [m for m in models if m not in make_models.MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; choose from {', '.join(make_models.MODELS)}")
    conc = a.concurrency or ("16" if ab else "1,16" if quick else "1,4,16,64")
    concurrency = tuple(int(c) for c in conc.split(",") if c)
    return Settings(
        models=models,
        concurrency=concurrency,
        repeats=a.repeats or (1 if quick else 3),
        measurement_ms=a.measurement_ms or (500 if quick else 1500),
        stability_pct=a.stability or (40 if quick else 25),
        max_trials=a.max_trials or (4 if quick else 6),
        open_loop_s=a.open_loop_seconds or (2.0 if quick else 5.0),
        open_loop_warmup_s=0.3 if quick else 0.5,
        rate_fractions=tuple(float(r) for r in a.rates.split(",") if r),
        arrival=a.arrival,
        raw_seconds=0.4 if quick else 1.0,
        repo=a.repo,
        results=None if a.no_results else a.results,
        quick=quick,
        peer=not a.no_peer,
        metrics_ab=ab,
        http_models=() if ab else tuple(m for m in a.http_models.split(",") if m in models),
        http_concurrency=tuple(c for c in HTTP_CONCURRENCY if c in concurrency),
        triton_models=() if ab else tuple(m for m in a.triton_models.split(",") if m in models),
    )


def git_state() -> str:
    """The commit, and when the server's code has uncommitted changes, a digest of them (runs on the same
    digest ran the same code)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        sha = git("rev-parse", "--short", "HEAD").strip()
        diff = git("diff", "HEAD", "--", "server")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    if not diff:
        return f"git {sha}"
    files = sum(1 for line in diff.splitlines() if line.startswith("diff --git"))
    digest = hashlib.sha1(diff.encode()).hexdigest()[:10]
    return f"git {sha} + uncommitted changes to {files} file(s) under server/ (diff sha1 {digest})"


def append_results(path: Path, text: str) -> None:
    if not path.exists():
        path.write_text(
            "# Batching benchmark results\n\nOne section per run of `bench/run.py`, newest last. "
            "See bench/README.md for how to read them.\n\n"
        )
    with path.open("a") as f:
        f.write(text + "\n")


# ---------------------------------------------------------------------------------------------------------------
# HTTP/REST beside gRPC


@dataclass
class RunReport(Report):
    """The run's :class:`Report` and its HTTP/REST sweeps (perf_analyzer -i http on the same server, in the same
    sweeps as gRPC), printed under the closed-loop table as their ratio to gRPC."""

    http_runs: list[PaRun] = field(default_factory=list)

    def http_med(self, model: str, c: int, attr: Callable[[PaRun], float]) -> float:
        return cell_median(self.http_runs, model, c, attr)

    def http_table(self) -> str:
        rows = []
        for model in self.settings.http_models:
            for c in self.settings.http_concurrency:
                grpc_ips = self.med(model, c, lambda r: r.infer_per_s)
                http_ips = self.http_med(model, c, lambda r: r.infer_per_s)
                grpc_p50 = self.med(model, c, lambda r: r.p50_us)
                http_p50 = self.http_med(model, c, lambda r: r.p50_us)
                _, rawb = self.raw_at(model, self.http_med(model, c, lambda r: r.avg_batch))
                rows.append(
                    [
                        model,
                        str(c),
                        fmt_int(grpc_ips),
                        fmt_int(http_ips) if not math.isnan(http_ips) else "failed",
                        fmt_x(http_ips / grpc_ips),
                        fmt_ms(grpc_p50),
                        fmt_ms(http_p50),
                        fmt_x(http_p50 / grpc_p50),
                        fmt_ms(self.http_med(model, c, lambda r: r.p99_us)),
                        fmt_x(self.http_med(model, c, lambda r: r.avg_batch)),
                        fmt_int(self.med(model, c, lambda r: r.server_cpu_us)),
                        fmt_int(self.http_med(model, c, lambda r: r.server_cpu_us)),
                        fmt_int(self.http_med(model, c, lambda r: r.client_cpu_us)),
                        fmt_x(http_ips / rawb),
                    ]
                )
        return table(
            [
                "model",
                "c",
                "gRPC infer/s",
                "HTTP infer/s",
                "HTTP/gRPC infer/s",
                "gRPC p50 ms",
                "HTTP p50 ms",
                "HTTP/gRPC p50",
                "HTTP p99 ms",
                "HTTP avg batch",
                "gRPC server CPU µs/req",
                "HTTP server CPU µs/req",
                "HTTP client CPU µs/req",
                "HTTP server/raw(formed)",
            ],
            rows,
        )

    def closed_loop_table(self) -> str:
        grpc_table = super().closed_loop_table()
        if not self.settings.http_models or not self.settings.http_concurrency:
            return grpc_table
        return "\n".join(
            [
                grpc_table,
                "",
                "### HTTP/REST beside gRPC (perf_analyzer -i http, same server, same sweeps; medians)",
                "",
                self.http_table(),
                "",
                "HTTP/gRPC infer/s below 1 means HTTP serves fewer requests a second than gRPC; HTTP/gRPC p50 above "
                "1, that its median request is slower. Server and client CPU per request are over the whole "
                "perf_analyzer call.",
            ]
        )

    def failures(self) -> list[str]:
        out = super().failures()
        return out + [
            f"{r.model} http c{r.concurrency} repeat {r.repeat}: {r.error}" for r in self.http_runs if not r.ok
        ]


# ---------------------------------------------------------------------------------------------------------------
# the run


def sweep_echo(
    name: str, slug: str, concurrency: Sequence[int], s: Settings, tmp: Path, experiments: str = ""
) -> EchoSweep:
    """bench/echo_server.py of identity alone on the machine (tensorgate has exited; ``experiments``: its
    GRPC_EXPERIMENTS), swept with perf_analyzer at ``concurrency`` in each of the repeats: its runs, why it failed
    (if it did) and its exit status on SIGTERM. A failure is reported, never fatal to the run."""
    echo = Server.echo(tmp / f"{slug}.log", grpc_experiments=experiments)
    sweep = EchoSweep(name, "identity", experiments)
    try:
        echo.wait_ready(timeout=30)
        log(f"{slug} server ready on {echo.url} (pid {echo.pid})")
        for rep in range(s.repeats):
            for c in concurrency:
                run = perf_analyzer(echo, "identity", c, rep, s, tmp, label=f"{slug}-")
                sweep.runs.append(run)
                log_pa(f"peer sweep {rep + 1}/{s.repeats} {slug} identity", run)
    except Exception as exc:  # the echo did not start or answer: the tensorgate results still stand
        sweep.error = f"{type(exc).__name__}: {exc}"
        log(f"{slug} server failed: {sweep.error}")
    finally:
        rc = echo.stop()
        log(f"{slug} server stopped with SIGTERM: exit status {rc}")
        if rc != 0:
            print(echo.log_tail(), file=sys.stderr)
        sweep.stopped(rc)
    return sweep


def run_peer(report: Report, s: Settings, tmp: Path) -> None:
    """The same-run peer: the bare echo at identity's concurrencies, with gRPC's defaults; then, when c16 is swept,
    the same echo at c16 with the gRPC core experiments tensorgate sets for itself: the baseline that differs from
    tensorgate in nothing but the server."""
    report.peer = sweep_echo("echo", "echo", s.concurrency, s, tmp)
    if 16 not in s.concurrency:
        return
    name = "The same echo with tensorgate's gRPC core experiments"
    report.same_grpc = sweep_echo(name, "echo-same-grpc", (16,), s, tmp, grpc_experiments.DEFAULT)


def start_loop_runs(report: Report, s: Settings, tmp: Path) -> list[tuple[EchoSweep, Server]]:
    """The echo with tensorgate's gRPC experiments serving identity and mlp (those measured, when the peer is run
    and c16 swept), each request through ONNX Runtime's session of the model on its loop: the most a server that
    runs the model on its event loop can serve. Swept at c16 right after tensorgate's sweep of the model; one that
    does not start is reported and left out."""
    if not s.peer or 16 not in s.concurrency:
        return []
    servers: list[tuple[EchoSweep, Server]] = []
    for model in (m for m in ("identity", "mlp") if m in s.models):
        name = (
            "The echo with tensorgate's gRPC core experiments running each request through ONNX Runtime's "
            f"{model} session on its loop"
        )
        sweep = EchoSweep(name, model, grpc_experiments.DEFAULT)
        report.loop_runs.append(sweep)
        echo: Server | None = None
        try:
            echo = Server.echo(
                tmp / f"echo-{model}-run.log",
                make_models.model_file(s.repo, make_models.MODELS[model].file),
                grpc_experiments=grpc_experiments.DEFAULT,
            )
            echo.wait_ready(timeout=30, models=(model,))
            log(f"echo + {model} run ready on {echo.url} (pid {echo.pid})")
            servers.append((sweep, echo))
        except Exception as exc:  # it did not start or answer: the other results still stand
            sweep.error = f"{type(exc).__name__}: {exc}"
            log(f"echo + {model} run failed: {sweep.error}")
            if echo is not None:
                echo.stop()
    return servers


def start_tritons(
    report: Report, s: Settings, sessions: dict[str, ort.InferenceSession], tmp: Path
) -> list[tuple[TritonPeer, Server]]:
    """Each form of Triton's Python path serving ``s.triton_models``, checked against raw ORT like tensorgate; one
    that cannot be installed or started is reported and left out: the tensorgate results still stand."""
    reason = triton_python.install()
    if reason:
        report.triton_error = reason
        log(f"Triton's Python path not run: {reason}")
        return []
    report.triton_version = triton_python.described()
    servers: list[tuple[TritonPeer, Server]] = []
    for name in triton_python.PEERS:
        peer = TritonPeer(name)
        report.tritons.append(peer)
        server = triton_python.start(name, s.repo, s.triton_models, tmp)
        try:
            server.wait_ready(models=s.triton_models)
            log(f"{name} ready on {server.url} (pid {server.pid})")
            for i, model in enumerate(s.triton_models):
                check = check_model(server, sessions[model], model, seed=100 + i)
                peer.checks.append(check)
                log(f"check {name} {model}: {'identical' if check.exact else 'DIFFERENT'} to raw ORT")
            servers.append((peer, server))
        except Exception as exc:  # it did not start or answer
            peer.error = f"{type(exc).__name__}: {exc}"
            log(f"{name} failed: {peer.error}")
            peer.exit = server.stop()
    return servers


def run_full(s: Settings, report: RunReport) -> bool:
    """The batching benchmark, steps 2-7 of bench/README.md; True when something failed."""
    sessions = {m: raw_session(s.repo, m) for m in s.models}

    with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        tritons = start_tritons(report, s, sessions, tmp) if s.triton_models else []
        loop_runs = start_loop_runs(report, s, tmp)
        server: Server | None = None
        try:  # the peers are stopped whatever happens from here on
            server = Server.tensorgate(s.repo, tmp / "server.log")
            server.wait_ready()
            log(f"server ready on {server.url} (pid {server.pid})")
            for i, model in enumerate(s.models):
                check = check_model(server, sessions[model], model, seed=100 + i)
                report.checks.append(check)
                log(
                    f"check {model}: {'identical' if check.exact else 'DIFFERENT'} to raw ORT ({check.requests} "
                    f"requests in {check.executions} executions, largest batch {check.largest_batch})"
                )
            for rep in range(s.repeats):
                for model in s.models:
                    for c in s.concurrency:
                        run = perf_analyzer(server, model, c, rep, s, tmp)
                        report.runs.append(run)
                        log_pa(f"sweep {rep + 1}/{s.repeats} {model}", run)
                    # right after tensorgate's, so a drift of the machine falls on both (the idle one waits)
                    for peer, triton in tritons if model in s.triton_models else ():
                        for c in s.concurrency:
                            run = perf_analyzer(triton, model, c, rep, s, tmp, label=f"{triton.pid}-")
                            peer.runs.append(run)
                            log_pa(f"sweep {rep + 1}/{s.repeats} {peer.name} {model}", run)
                    for sweep, echo in loop_runs:  # (only when c16 is swept)
                        if sweep.model == model:
                            run = perf_analyzer(echo, model, 16, rep, s, tmp, label=f"echo-{model}-run-")
                            sweep.runs.append(run)
                            log_pa(f"sweep {rep + 1}/{s.repeats} echo + {model} run", run)
                for model in s.http_models:  # in the same sweep, so a drift of the machine falls on both
                    for c in s.http_concurrency:
                        run = perf_analyzer(server, model, c, rep, s, tmp, protocol="http")
                        report.http_runs.append(run)
                        log_pa(f"sweep {rep + 1}/{s.repeats} {model} over HTTP", run)
            base_c = report.open_loop_base_c = 16 if 16 in s.concurrency else max(s.concurrency)
            for i, model in enumerate(s.models):
                base = report.med(model, base_c, lambda r: r.infer_per_s)
                if math.isnan(base):
                    continue
                for fraction in s.rate_fractions:
                    run_ol = open_loop(server, model, fraction, fraction * base, s, seed=1000 + i)
                    report.open_runs.append(run_ol)
                    log(
                        f"open loop {model} {fraction:.0%} of c{base_c} ({run_ol.target_rate:,.0f}/s): achieved "
                        f"{run_ol.achieved:,.0f}/s p50 {run_ol.p50_ms:.3f} ms p99 {run_ol.p99_ms:.3f} ms "
                        f"lag p99 {run_ol.lag_p99_ms:.3f} ms avg batch {run_ol.avg_batch:.2f}"
                    )
        finally:
            if server is not None:
                report.server_exit = server.stop()
                log(f"server stopped with SIGTERM: exit status {report.server_exit}")
                if report.server_exit != 0:
                    print(server.log_tail(), file=sys.stderr)
            for peer, triton in tritons:
                peer.exit = triton.stop()
                log(f"{peer.name} stopped with SIGTERM: exit status {peer.exit}")
            for sweep, echo in loop_runs:
                rc = echo.stop()
                log(f"echo + {sweep.model} run stopped with SIGTERM: exit status {rc}")
                sweep.stopped(rc)
        if s.peer and "identity" in s.models:
            run_peer(report, s, tmp)

    # Raw ORT with nothing else of ours running: batch 1, 16, and every batch size the server formed.
    wanted: set[tuple[str, int]] = set()
    for model in s.models:
        file = make_models.MODELS[model].file
        wanted |= {(file, 1), (file, 16)}
        for c in s.concurrency:
            wanted.add((file, formed_batch(report.med(model, c, lambda r: r.avg_batch))))
        for c in s.http_concurrency if model in s.http_models else ():
            wanted.add((file, formed_batch(report.http_med(model, c, lambda r: r.avg_batch))))
        for peer in report.tritons if model in s.triton_models else ():
            for c in s.concurrency if peer.runs else ():
                wanted.add((file, formed_batch(peer.med(model, c, lambda r: r.avg_batch))))
    for file, b in sorted(wanted):
        model = next(m for m in s.models if make_models.MODELS[m].file == file)
        before = CpuSample.take(None)
        report.raw[(file, b)] = raw_throughput(sessions[model], make_models.MODELS[model].input_dims, b, s.raw_seconds)
        foreign = CpuDelta.between(before, CpuSample.take(None), client_is_self=True).foreign_pct
        report.raw_foreign_pct = max(report.raw_foreign_pct, foreign)
        log(f"raw ORT {file} b{b}: {report.raw[(file, b)]:,.0f} samples/s (other processes {foreign:.0f}%)")
    for model in s.triton_models if report.tritons else ():  # the compute in the ceiling of any grpc.aio server
        path = make_models.model_file(s.repo, make_models.MODELS[model].file)
        dims = make_models.MODELS[model].input_dims
        report.raw_core_us[model] = raw_ort(path, dims, 16, os.cpu_count() or 1, s.raw_seconds).core_us_per_sample
        log(f"raw ORT {model} b16, servers' session settings: {report.raw_core_us[model]:,.0f} core-µs a sample")
    return report.server_exit != 0 or any(not c.exact for c in report.checks) or bool(report.failures())


def main(argv: Sequence[str] | None = None) -> int:
    s = parse_args(argv)
    if subprocess.run([str(PERF_ANALYZER), "--version"], capture_output=True).returncode != 0:
        print(f"perf_analyzer is not installed ({PERF_ANALYZER}): scripts/install_perf_analyzer.sh", file=sys.stderr)
        return 2
    info = RunInfo(shlex.join([sys.executable, *sys.argv]), git_state())
    log(f"building the model repository in {s.repo}")
    make_models.build(s.repo, list(s.models))
    if s.metrics_ab:
        ab = metrics_ab.MetricsAb(s, info)
        with tempfile.TemporaryDirectory(prefix="tg-bench-") as tmp_name:
            metrics_ab.measure(ab, Path(tmp_name))
        bad, markdown = bool(ab.failures()), ab.markdown
    else:
        report = RunReport(s, info)
        bad, markdown = run_full(s, report), report.markdown
    info.finish()
    text = markdown()
    print(text)
    if s.results is not None:
        append_results(s.results, text)
        log(f"appended to {s.results}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
