"""The :class:`Report` of one run: every measurement, and the markdown it prints and appends to bench/RESULTS.md
(header, targets, closed loop, peer, batching on/off, where the time goes, open loop, raw ORT, correctness);
:class:`RunInfo`, the header every section of RESULTS.md starts with."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import make_models
from load import CheckResult, OpenLoopRun, PaRun, formed_batch
from settings import Settings
from tables import RunInfo, fmt_int, fmt_ms, fmt_x, median, table, top_batches


def cell(runs: list[PaRun], model: str, c: int) -> list[PaRun]:
    """The successful runs of ``model`` at concurrency ``c``."""
    return [r for r in runs if r.model == model and r.concurrency == c and r.ok]


def cell_median(runs: list[PaRun], model: str, c: int, attr: Callable[[PaRun], float]) -> float:
    """The median of ``attr`` over :func:`cell`'s runs."""
    return median([attr(r) for r in cell(runs, model, c)])


@dataclass
class TritonPeer:
    """One form of Triton's Python path (bench/triton_python.py's PEERS) and what it measured."""

    name: str
    runs: list[PaRun] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    exit: int | None = None  # None: not started
    error: str = ""  # it did not start or answer

    def med(self, model: str, c: int, attr: Callable[[PaRun], float]) -> float:
        return cell_median(self.runs, model, c, attr)


@dataclass
class EchoSweep:
    """bench/echo_server.py swept: the bare echo at identity's concurrencies (the peer), or once more at c16 (after
    the peer's sweep, or beside tensorgate's of its model)."""

    name: str  # as the tables and failure lines say it
    model: str  # the model it serves: identity, or the one whose ONNX file it runs each request through
    experiments: str  # its GRPC_EXPERIMENTS ("": gRPC's defaults)
    runs: list[PaRun] = field(default_factory=list)
    error: str = ""  # it did not start, answer or exit 0
    exit: int | None = None  # its exit status on SIGTERM (None: not stopped, e.g. it never started)

    @property
    def ok(self) -> bool:
        return any(r.ok for r in self.runs)

    def med(self, attr: Callable[[PaRun], float]) -> float:
        return median([attr(r) for r in self.runs if r.ok])

    def stopped(self, rc: int) -> None:
        """Its server exited with ``rc`` on SIGTERM: a failure unless 0 (the first error found is kept)."""
        self.exit = rc
        if rc != 0 and not self.error:
            self.error = f"exit status {rc} on SIGTERM"

    def failures(self) -> list[str]:
        out = [f"{self.name} c{r.concurrency} repeat {r.repeat}: {r.error}" for r in self.runs if not r.ok]
        return out + ([f"{self.name}: {self.error}"] if self.error else [])


@dataclass
class Report:
    settings: Settings
    info: RunInfo
    checks: list[CheckResult] = field(default_factory=list)
    runs: list[PaRun] = field(default_factory=list)
    open_runs: list[OpenLoopRun] = field(default_factory=list)
    raw: dict[tuple[str, int], float] = field(default_factory=dict)  # (model file, batch) -> samples/s
    open_loop_base_c: int = 16  # open-loop rates are fractions of closed-loop infer/s at this concurrency
    raw_foreign_pct: float = 0.0  # the most CPU other processes took while raw ORT was timed
    raw_core_us: dict[str, float] = field(default_factory=dict)  # model -> core-µs a sample at b16, no spinning
    server_exit: int | None = None
    # The peer: the bare grpc.aio echo of identity with gRPC's defaults, at identity's concurrencies (None: not run).
    peer: EchoSweep | None = None
    # The same echo with the gRPC core experiments tensorgate sets for itself (--grpc-experiments), identity c16:
    # tensorgate's own cost read against a server that differs from it in nothing but the server.
    same_grpc: EchoSweep | None = None
    # That echo also running each request through ONNX Runtime's session of a model (identity, mlp) on its loop: the
    # most a server that runs the model on its event loop (as tensorgate does those) can serve with those settings.
    loop_runs: list[EchoSweep] = field(default_factory=list)
    tritons: list[TritonPeer] = field(default_factory=list)  # Triton's Python path (bench/triton_python.py)
    triton_error: str = ""  # Triton could not be installed
    triton_version: str = ""  # what scripts/install_triton_python.sh installed

    def cell(self, model: str, c: int) -> list[PaRun]:
        return cell(self.runs, model, c)

    def med(self, model: str, c: int, attr: Callable[[PaRun], float]) -> float:
        return cell_median(self.runs, model, c, attr)

    def peer_cell(self, c: int) -> list[PaRun]:
        return [r for r in self.peer.runs if r.concurrency == c and r.ok] if self.peer is not None else []

    def peer_med(self, c: int, attr: Callable[[PaRun], float]) -> float:
        return median([attr(r) for r in self.peer_cell(c)])

    def grpc_aio_ceiling(self, model: str, c: int) -> float:
        """The most infer/s any grpc.aio server could serve ``model`` at ``c`` on this machine with perf_analyzer
        beside it: the cores' capacity over the least a request costs: the bare echo's server CPU and its
        client's CPU per request (a Python gRPC request with no model code at all) plus the model's compute
        per sample at batch 16 (raw ORT, the servers' settings), capped at the echo's own rate."""
        echo_server = self.peer_med(c, lambda r: r.server_cpu_us)
        echo_client = self.peer_med(c, lambda r: r.client_cpu_us)
        compute = self.raw_core_us.get(model, math.nan)
        capacity = 1e6 * (os.cpu_count() or 1) / (echo_server + echo_client + compute)
        return min(capacity, self.peer_med(c, lambda r: r.infer_per_s))

    def raw_cost_text(self) -> str:
        return ", ".join(f"{m} {fmt_int(us)}" for m, us in self.raw_core_us.items()) or "not measured"

    def triton_ratio(self, peer: TritonPeer, model: str, c: int) -> float:
        return self.med(model, c, lambda r: r.infer_per_s) / peer.med(model, c, lambda r: r.infer_per_s)

    @property
    def peer_ran(self) -> bool:
        return self.peer is not None

    def raw_at(self, model: str, batch: float) -> tuple[int, float]:
        b = formed_batch(batch)
        return b, self.raw.get((make_models.MODELS[model].file, b), math.nan)

    def closed_loop_table(self) -> str:
        rows = []
        for model in self.settings.models:
            for c in self.settings.concurrency:
                runs = self.cell(model, c)
                if not runs:
                    rows.append([model, str(c), "failed", *["-"] * 9])
                    continue
                ips = self.med(model, c, lambda r: r.infer_per_s)
                spread = (max(r.infer_per_s for r in runs) - min(r.infer_per_s for r in runs)) / ips if ips else 0
                batch = self.med(model, c, lambda r: r.avg_batch)
                raw1 = self.raw.get((make_models.MODELS[model].file, 1), math.nan)
                b, rawb = self.raw_at(model, batch)
                rows.append(
                    [
                        model,
                        str(c),
                        fmt_int(ips),
                        f"{100 * spread:.0f}%" if len(runs) > 1 else "-",
                        fmt_ms(self.med(model, c, lambda r: r.p50_us)),
                        fmt_ms(self.med(model, c, lambda r: r.p99_us)),
                        fmt_x(batch),
                        fmt_int(raw1),
                        f"{fmt_int(rawb)} (b{b})",
                        fmt_x(ips / raw1),
                        fmt_x(ips / rawb),
                    ]
                )
        return table(
            [
                "model",
                "c",
                "server infer/s",
                "spread",
                "p50 ms",
                "p99 ms",
                "avg batch",
                "raw ORT b1 /s",
                "raw ORT formed /s",
                "server/raw(b1)",
                "server/raw(formed)",
            ],
            rows,
        )

    def time_table(self) -> str:
        rows = []
        for model in self.settings.models:
            for c in self.settings.concurrency:
                runs = self.cell(model, c)
                if not runs:
                    continue
                batches: Counter[int] = Counter()
                for r in runs:
                    batches.update(r.stats.batches if r.stats else {})
                rows.append(
                    [
                        model,
                        str(c),
                        fmt_int(self.med(model, c, lambda r: r.server_cpu_us)),
                        fmt_int(self.med(model, c, lambda r: r.client_cpu_us)),
                        fmt_int(self.med(model, c, lambda r: r.server_queue_us)),
                        fmt_int(self.med(model, c, lambda r: r.server_infer_us)),
                        top_batches(batches),
                        fmt_x(self.med(model, c, lambda r: r.cpu.loop_pct if r.cpu else math.nan), 0) + "%",
                        fmt_x(self.med(model, c, lambda r: r.cpu.idle_pct if r.cpu else math.nan), 0) + "%",
                        fmt_x(self.med(model, c, lambda r: r.cpu.foreign_pct if r.cpu else math.nan), 0) + "%",
                        str(sum(r.retried for r in runs)),
                    ]
                )
        return table(
            [
                "model",
                "c",
                "server CPU µs/req",
                "client CPU µs/req",
                "server queue µs",
                "compute infer µs",
                "batch sizes (share of executions)",
                "event loop busy",
                "machine idle",
                "other procs",
                "loose -s",
            ],
            rows,
        )

    @property
    def echo_sweeps(self) -> list[EchoSweep]:
        """The echo's sweeps beside the peer's: with tensorgate's gRPC experiments, then each echo + run."""
        return ([self.same_grpc] if self.same_grpc is not None else []) + self.loop_runs

    def loop_run(self, model: str) -> EchoSweep | None:
        """The echo + ONNX Runtime's run of ``model``, if it was swept and answered."""
        return next((s for s in self.loop_runs if s.model == model and s.ok), None)

    def echo_sweeps_text(self) -> list[str]:
        """The echo's sweeps at c16 after the peer's (tensorgate's gRPC settings; with a model's run), each beside the
        echo with gRPC's defaults and tensorgate's same model."""
        echo_ips = self.peer_med(16, lambda r: r.infer_per_s)
        echo_cpu = self.peer_med(16, lambda r: r.server_cpu_us)
        out: list[str] = []
        for sweep in self.echo_sweeps:
            ident_ips = self.med(sweep.model, 16, lambda r: r.infer_per_s)
            ident_cpu = self.med(sweep.model, 16, lambda r: r.server_cpu_us)
            head = f"{sweep.name} (GRPC_EXPERIMENTS={sweep.experiments}), {sweep.model} c16"
            if not sweep.ok:
                out += [f"{head}: failed ({sweep.error or 'no successful sweep'}).", ""]
                continue
            ips = sweep.med(lambda r: r.infer_per_s)
            cpu = sweep.med(lambda r: r.server_cpu_us)
            by_sweep = " / ".join(fmt_int(r.infer_per_s) for r in sweep.runs if r.ok)
            when = "after the echo" if sweep is self.same_grpc else "right after tensorgate's sweep of the model"
            out += [
                f"{head}, swept {when}: {fmt_int(ips)} infer/s ({by_sweep}; {fmt_x(ips / echo_ips)} x the "
                f"echo with gRPC's defaults), server CPU {fmt_int(cpu)} µs a request ({fmt_x(cpu / echo_cpu)} x); "
                f"tensorgate {fmt_x(ident_ips / ips)} x its infer/s and {fmt_x(ident_cpu / cpu)} x its server CPU a "
                "request.",
                "",
            ]
        if any(s.ok for s in self.loop_runs):
            out += [
                "The echo + ONNX Runtime's run does nothing else a server does (no validation against the model, "
                "no scheduler, no statistics): what it serves is the most a server that runs the model on its event "
                "loop, one request a run, can serve here with tensorgate's gRPC settings. tensorgate runs identity "
                "and mlp there because handing a batch to a thread and back costs more than the run "
                "(bench/gil-release-note.md), and batches do not form on the loop at c16 (grpc.aio hands it about "
                "one new call a loop iteration); every mlp batch on the worker served no more (RESULTS.md, "
                "2026-12-07 07:35).",
                "",
            ]
        return out

    def peer_table(self) -> str:
        rows = []
        for c in self.settings.concurrency:
            runs = self.peer_cell(c)
            echo_ips = self.peer_med(c, lambda r: r.infer_per_s)
            echo_p50 = self.peer_med(c, lambda r: r.p50_us)
            spread = (max(r.infer_per_s for r in runs) - min(r.infer_per_s for r in runs)) / echo_ips if runs else 0
            tg_ips = self.med("identity", c, lambda r: r.infer_per_s)
            tg_p50 = self.med("identity", c, lambda r: r.p50_us)
            rows.append(
                [
                    str(c),
                    fmt_int(echo_ips) if runs else "failed",
                    f"{100 * spread:.0f}%" if len(runs) > 1 else "-",
                    fmt_ms(echo_p50),
                    fmt_int(self.peer_med(c, lambda r: r.server_cpu_us)),
                    fmt_int(tg_ips),
                    fmt_ms(tg_p50),
                    fmt_int(self.med("identity", c, lambda r: r.server_cpu_us)),
                    fmt_x(tg_ips / echo_ips),
                    fmt_x(tg_p50 / echo_p50),
                ]
            )
        return table(
            [
                "c",
                "echo infer/s",
                "echo spread",
                "echo p50 ms",
                "echo server CPU µs/req",
                "tensorgate identity infer/s",
                "tensorgate p50 ms",
                "tensorgate server CPU µs/req",
                "tensorgate/echo infer/s",
                "tensorgate/echo p50",
            ],
            rows,
        )

    def triton_table(self) -> str:
        rows = []
        for model in self.settings.triton_models:
            for c in self.settings.concurrency:
                tg = {r.repeat: r.infer_per_s for r in self.cell(model, c)}
                echo = self.peer_med(c, lambda r: r.infer_per_s)
                for peer in self.tritons:
                    runs = cell(peer.runs, model, c)
                    by_sweep = [fmt_x(tg[r.repeat] / r.infer_per_s) for r in runs if r.repeat in tg]
                    ips = peer.med(model, c, lambda r: r.infer_per_s)
                    batch = peer.med(model, c, lambda r: r.avg_batch)
                    _, rawb = self.raw_at(model, batch)
                    rows.append(
                        [
                            model,
                            str(c),
                            peer.name if not peer.error else f"{peer.name}: failed",
                            fmt_int(ips),
                            fmt_int(self.med(model, c, lambda r: r.infer_per_s)),
                            fmt_x(self.triton_ratio(peer, model, c)),
                            " / ".join(by_sweep) or "-",
                            fmt_x(echo / ips),
                            fmt_ms(peer.med(model, c, lambda r: r.p50_us)),
                            fmt_ms(self.med(model, c, lambda r: r.p50_us)),
                            fmt_int(peer.med(model, c, lambda r: r.server_cpu_us)),
                            fmt_int(self.med(model, c, lambda r: r.server_cpu_us)),
                            fmt_int(peer.med(model, c, lambda r: r.client_cpu_us)),
                            fmt_x(batch),
                            fmt_x(self.med(model, c, lambda r: r.avg_batch)),
                            fmt_x(ips / rawb),
                            fmt_x(peer.med(model, c, lambda r: r.cpu.idle_pct if r.cpu else math.nan), 0) + "%",
                        ]
                    )
        return table(
            [
                "model",
                "c",
                "peer",
                "peer infer/s",
                "tensorgate infer/s",
                "tensorgate/peer",
                "by sweep",
                "bare echo/peer",
                "peer p50 ms",
                "tensorgate p50 ms",
                "peer server CPU µs/req",
                "tensorgate server CPU µs/req",
                "peer's client CPU µs/req",
                "peer avg batch",
                "tensorgate avg batch",
                "peer/raw(formed)",
                "machine idle (peer)",
            ],
            rows,
        )

    def on_off_table(self) -> str:
        rows = []
        for base in ("mlp", "cnn"):
            off = f"{base}_nobatch"
            if base not in self.settings.models or off not in self.settings.models:
                continue
            for c in self.settings.concurrency:
                on_v = self.med(base, c, lambda r: r.infer_per_s)
                off_v = self.med(off, c, lambda r: r.infer_per_s)
                rows.append([base, str(c), fmt_int(on_v), fmt_int(off_v), fmt_x(on_v / off_v)])
        return table(["model", "c", "batching on infer/s", "batching off infer/s", "on/off"], rows) if rows else ""

    def open_loop_table(self) -> str:
        rows = [
            [
                r.model,
                f"{r.fraction:.0%}",
                fmt_int(r.target_rate),
                fmt_int(r.offered),
                fmt_int(r.achieved),
                fmt_x(r.p50_ms, 3),
                fmt_x(r.p90_ms, 3),
                fmt_x(r.p99_ms, 3),
                fmt_x(r.lag_p99_ms, 3),
                fmt_x(r.avg_batch),
                r.error_codes or "0",
                fmt_int(r.client_cpu_us),
                "overloaded" if r.achieved < 0.95 * r.offered else "kept up",
            ]
            for r in self.open_runs
        ]
        return table(
            [
                "model",
                f"of c{self.open_loop_base_c}",
                "target /s",
                "offered /s",
                "achieved /s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "send lag p99 ms",
                "avg batch",
                "errors",
                "generator CPU µs/req",
                "server",
            ],
            rows,
        )

    def raw_table(self) -> str:
        files = sorted({k[0] for k in self.raw})
        sizes = sorted({k[1] for k in self.raw})
        rows = [[f, *(fmt_int(self.raw.get((f, b), math.nan)) for b in sizes)] for f in files]
        return table(["model file", *(f"b{b}" for b in sizes)], rows)

    def check_table(self) -> str:
        rows = [
            [
                c.model,
                str(c.requests),
                "yes" if c.exact else "NO",
                f"{c.max_abs_diff:.3g}",
                str(c.executions),
                str(c.largest_batch),
            ]
            for c in self.checks
        ]
        return table(["model", "requests", "identical to raw ORT", "max |diff|", "executions", "largest batch"], rows)

    def targets(self) -> list[tuple[str, str, str]]:
        out: list[tuple[str, str, str]] = []

        def verdict(value: float, ok: bool) -> str:
            return "n/a" if math.isnan(value) else ("PASS" if ok else "miss")

        cnn = self.med("cnn", 16, lambda r: r.infer_per_s)
        raw16 = self.raw.get(("cnn", 16), math.nan)
        ratio = cnn / raw16
        out.append(
            (
                "cnn c16 infer/s >= 0.8 x raw ORT b16",
                f"{fmt_int(cnn)} / {fmt_int(raw16)} = {fmt_x(ratio)}",
                verdict(ratio, ratio >= 0.8),
            )
        )
        out.append(("cnn c16 >= 0.55 x raw ORT b16 (issue 14)", fmt_x(ratio), verdict(ratio, ratio >= 0.55)))
        on_off = self.med("mlp", 16, lambda r: r.infer_per_s) / self.med("mlp_nobatch", 16, lambda r: r.infer_per_s)
        out.append(("mlp c16 batching on >= 3 x off", fmt_x(on_off), verdict(on_off, on_off >= 3)))
        ident = self.med("identity", 16, lambda r: r.infer_per_s)
        out.append(("identity c16 >= 6,000 infer/s", fmt_int(ident), verdict(ident, ident >= 6000)))
        if self.peer_ran:  # the two identity targets scaled by the bare echo measured in this run
            echo16 = self.peer_med(16, lambda r: r.infer_per_s)
            share = ident / echo16
            out.append(
                (
                    "identity c16 >= 0.75 x bare echo (6,000 / 8,000 as in the note), scaled to the day's machine",
                    f"{fmt_int(ident)} / {fmt_int(echo16)} = {fmt_x(share)}",
                    verdict(share, share >= 0.75),
                )
            )
            out.append(("identity c16 >= 0.9 x bare echo (issue 14)", fmt_x(share), verdict(share, share >= 0.9)))
            cpu = self.med("identity", 16, lambda r: r.server_cpu_us) / self.peer_med(16, lambda r: r.server_cpu_us)
            out.append(
                ("identity c16 server CPU/req <= 1.2 x bare echo's (issue 14)", fmt_x(cpu), verdict(cpu, cpu <= 1.2))
            )
        same_grpc = self.same_grpc
        if same_grpc is not None and same_grpc.ok:  # the same two against the echo with tensorgate's gRPC settings
            share = ident / same_grpc.med(lambda r: r.infer_per_s)
            cpu = self.med("identity", 16, lambda r: r.server_cpu_us) / same_grpc.med(lambda r: r.server_cpu_us)
            same = "the echo with tensorgate's gRPC experiments"
            out.append((f"identity c16 >= 0.9 x {same}", fmt_x(share), verdict(share, share >= 0.9)))
            out.append(
                ("identity c16 server CPU/req <= 1.2 x the echo's with tensorgate's gRPC experiments", fmt_x(cpu),
                 verdict(cpu, cpu <= 1.2))
            )  # fmt: skip
        loop_run = self.loop_run("identity")
        if self.peer_ran and loop_run is not None:
            share = loop_run.med(lambda r: r.infer_per_s) / self.peer_med(16, lambda r: r.infer_per_s)
            cpu = loop_run.med(lambda r: r.server_cpu_us) / self.peer_med(16, lambda r: r.server_cpu_us)
            out.append(
                (
                    "bound: a server that runs identity on its event loop, c16 (the echo + ONNX Runtime's run, "
                    "tensorgate's gRPC experiments; see below)",
                    f"{fmt_x(share)} x bare echo's infer/s, {fmt_x(cpu)} x its server CPU/req",
                    "-",
                )
            )
        p50 = self.med("identity", 1, lambda r: r.p50_us)
        out.append(("identity c1 p50 <= 0.4 ms", fmt_ms(p50), verdict(p50, p50 <= 400)))
        if self.peer_ran:
            echo_p50 = self.peer_med(1, lambda r: r.p50_us)
            slower = p50 / echo_p50
            out.append(
                (
                    "identity c1 p50 <= 1.33 x bare echo p50 (0.4 / 0.3 ms), scaled to the day's machine",
                    f"{fmt_ms(p50)} / {fmt_ms(echo_p50)} ms = {fmt_x(slower)}",
                    verdict(slower, slower <= 0.4 / 0.3),
                )
            )
        out += self.peer_targets(verdict)
        if self.checks:
            bad = [c.model for c in self.checks if not c.exact]
            out.append(
                (
                    "answers identical to raw ORT (batching on and off)",
                    "all identical" if not bad else "differ: " + ", ".join(bad),
                    "PASS" if not bad else "FAIL",
                )
            )
        return out

    def peer_targets(self, verdict: Callable[[float, bool], str]) -> list[tuple[str, str, str]]:
        """Issue 14's targets against Triton's Python path, and the bound of any grpc.aio server beside them."""
        out: list[tuple[str, str, str]] = []
        for model in ("identity", "mlp", "cnn"):
            ceiling = self.grpc_aio_ceiling(model, 16)
            if math.isnan(ceiling) or not self.tritons:
                continue
            versus = ", ".join(
                f"{fmt_x(ceiling / p.med(model, 16, lambda r: r.infer_per_s))} x {p.name}" for p in self.tritons
            )
            bound = f"bound: any grpc.aio server, {model} c16 (see below)"
            out.append((bound, f"{fmt_int(ceiling)}/s = {versus}", "-"))
            loop_run = self.loop_run(model)
            if loop_run is not None and model != "identity":
                ips = loop_run.med(lambda r: r.infer_per_s)
                versus = ", ".join(
                    f"{fmt_x(ips / p.med(model, 16, lambda r: r.infer_per_s))} x {p.name}" for p in self.tritons
                )
                bound = f"bound: a server that runs {model} on its event loop, c16 (the echo + ONNX Runtime's run)"
                out.append((bound, f"{fmt_int(ips)}/s = {versus}", "-"))
        for peer in self.tritons:
            for model in ("mlp", "cnn"):
                if model in self.settings.triton_models and not peer.error:
                    ratio = self.triton_ratio(peer, model, 16)
                    out.append(
                        (
                            f"{model} c16 >= 2 x Triton's Python path: {peer.name}",
                            fmt_x(ratio),
                            verdict(ratio, ratio >= 2),
                        )
                    )
            if peer.checks:
                bad = [c.model for c in peer.checks if not c.exact]
                out.append(
                    (
                        f"{peer.name} answers identical to raw ORT (a fair peer)",
                        "all identical" if not bad else "differ: " + ", ".join(bad),
                        "PASS" if not bad else "FAIL",
                    )
                )
        return out

    def failures(self) -> list[str]:
        out = [f"{r.model} c{r.concurrency} repeat {r.repeat}: {r.error}" for r in self.runs if not r.ok]
        for peer in self.tritons:
            out += [
                f"{peer.name} {r.model} c{r.concurrency} repeat {r.repeat}: {r.error}" for r in peer.runs if not r.ok
            ]
            out += [f"{peer.name}: {peer.error}"] if peer.error else []
        for sweep in ([self.peer] if self.peer is not None else []) + self.echo_sweeps:
            out += sweep.failures()
        return out

    def markdown(self) -> str:
        s = self.settings
        parts = [
            *self.info.header(" (quick)" if s.quick else ""),
            f"- closed loop: perf_analyzer -p {s.measurement_ms} -s {s.stability_pct} -r {s.max_trials}, "
            f"one sample per request, {s.repeats} sweep(s), medians; "
            "spread = (max - min) / median of infer/s over the sweeps",
            f"- open loop: {s.arrival} arrivals for {s.open_loop_s:g} s after {s.open_loop_warmup_s:g} s warm-up; "
            "latency from each request's scheduled send time",
            "- raw ORT: `InferenceSession.run` in process, CPUExecutionProvider, default options and threads, measured "
            "after the server exited (nothing else of ours running)",
            f"- server exit status on SIGTERM: {self.server_exit}",
        ]
        if self.peer is not None:
            parts.append(
                "- peer: bench/echo_server.py (bare grpc.aio echo, np.frombuffer / tobytes, no tensorgate code) "
                "swept like identity with the same perf_analyzer settings after the tensorgate server exited; "
                f"exit status on SIGTERM: {self.peer.exit}"
            )
        parts += [
            "",
            "### Targets",
            "",
            table(["target", "measured", "verdict"], [list(t) for t in self.targets()]),
            "",
            "### Closed loop (perf_analyzer; medians)",
            "",
            self.closed_loop_table(),
            "",
        ]
        if self.peer_ran:
            parts += [
                "### Peer: bare grpc.aio echo (same machine, same run)",
                "",
                self.peer_table(),
                "",
                "tensorgate/echo p50 above 1 means slower than the echo; the scaled targets above read identity "
                "against this table.",
                "",
                *self.echo_sweeps_text(),
            ]
        if self.settings.triton_models:
            parts += ["### Peer: Triton's Python path (same machine, same sweeps)", ""]
            if self.triton_error:
                parts += [f"Not measured: {self.triton_error}", ""]
            else:
                exits = ", ".join(f"{p.name} {p.exit}" for p in self.tritons)
                parts += [
                    self.triton_table(),
                    "",
                    f"Triton Inference Server 2.51.0 from {self.triton_version} (scripts/install_triton_python.sh). "
                    "Triton Python backend: a model.py per model (bench/triton_python_model.py) running the same ONNX "
                    "file in ONNX Runtime with tensorgate's session settings on the batch Triton's dynamic batcher "
                    "hands it (same config.pbtxt otherwise). PyTriton: an @batch function (bench/pytriton_server.py) "
                    "with the same session settings behind the same tritonserver. Each swept with the same "
                    "perf_analyzer settings right after tensorgate's sweep of the model, every server up, the others "
                    "idle; peer server CPU is all its processes' (tritonserver, backend stubs, PyTriton's). "
                    "'bare echo/peer' is the bare grpc.aio echo's identity rate over the peer's: what a Python gRPC "
                    f"server that ran no model at all would reach. Exit status on SIGTERM: {exits}.",
                    "",
                    "The Targets table's bounds: the most infer/s any grpc.aio server could reach at c16 here, the "
                    "machine's cores over the least one request costs (the bare echo's server and client CPU per "
                    "request at c16, plus raw ONNX Runtime's core-µs a sample at batch 16 with the servers' "
                    f"session settings: {self.raw_cost_text()}), and at most the echo's own rate; a bound under 2 x a "
                    "peer shows that target out of reach for any server with a grpc.aio frontend on this machine.",
                    "",
                ]
        on_off = self.on_off_table()
        if on_off:
            parts += ["### Batching on / off", "", on_off, ""]
        parts += [
            "### Where the time goes (medians; CPU per request over the whole perf_analyzer call)",
            "",
            self.time_table(),
            "",
            "### Open loop (tritonclient.grpc.aio, fixed rate)",
            "",
            self.open_loop_table(),
            "",
            "### Raw ONNX Runtime, samples/s (nothing else running)",
            "",
            self.raw_table(),
            "",
            f"Other processes took at most {self.raw_foreign_pct:.0f}% of the machine while raw ORT was timed.",
            "",
            "### Correctness (32 one-sample requests sent together + one 4-sample request, vs raw ORT per request)",
            "",
            self.check_table(),
            "",
        ]
        failures = self.failures()
        if failures:
            parts += ["### perf_analyzer failures", "", *(f"- {f}" for f in failures), ""]
        return "\n".join(parts)
