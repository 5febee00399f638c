"""Metrics on / off in one run (``bench/run.py --metrics-ab``): what exporting metrics costs the request path.

Each round (``--repeats``) starts ``tensorgate serve`` twice, one after the other, with otherwise identical flags,
and measures every model at every concurrency (c16 unless ``--concurrency``) with perf_analyzer:

- ON: the default metrics flags with ``--metrics-interval-ms 2000`` (the CPU and GPU gauges' sampler), and a
  scraper thread in this process that GETs /metrics once a second, as Prometheus would;
- OFF: ``--metrics-port -1 --allow-cpu-metrics false --allow-gpu-metrics false``.

Rounds alternate the order (ON then OFF, then OFF then ON, ...), so a drift of the shared machine falls on both
alike, and every server runs the same copy of server/tensorgate, taken when the run starts
(:func:`processes.snapshot_code`). The issue's budget: ON infer/s >= 0.97 x OFF.
"""

from __future__ import annotations

import math
import re
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from load import PaRun, log, log_pa, perf_analyzer
from processes import CpuDelta, CpuSample, Server, free_port, snapshot_code
from settings import Settings
from tables import RunInfo, fmt_int, fmt_ms, fmt_x, median, table

BUDGET = 0.97  # ON infer/s over OFF infer/s: "keep the loss under 3%"
SCRAPE_PERIOD_S = 1.0
IDLE_S = 3.0  # each server's CPU is read over this long with no requests (after IDLE_SETTLE_S), scraped if ON
IDLE_SETTLE_S = 0.5
INTERVAL_MS = 2000
CONFIGS = ("on", "off")


def server_flags(config: str, metrics_port: int | str) -> list[str]:
    if config == "on":
        return ["--metrics-port", str(metrics_port), "--metrics-interval-ms", str(INTERVAL_MS)]
    return ["--metrics-port", "-1", "--allow-cpu-metrics", "false", "--allow-gpu-metrics", "false"]


class Scraper:
    """Prometheus in this process: GET /metrics every SCRAPE_PERIOD_S on a fixed schedule until :meth:`stop`."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.ok = self.failed = self.body_bytes = 0
        self.seconds: list[float] = []  # how long each answered scrape took
        self.error = ""
        self.counted: dict[str, float] = {}  # nv_inference_count by model in the last answered scrape
        self._body = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due += SCRAPE_PERIOD_S
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    self._body = answer.read()
            except OSError as exc:
                self.failed += 1
                self.error = f"{type(exc).__name__}: {exc}"
                continue
            self.seconds.append(time.monotonic() - t0)
            self.ok += 1
            self.body_bytes = len(self._body)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for line in self._body.decode(errors="replace").splitlines():
            label = re.match(r'nv_inference_count\{.*?model="([^"]*)".*\}\s+(\S+)', line)
            if label:
                self.counted[label[1]] = self.counted.get(label[1], 0.0) + float(label[2])


@dataclass
class MetricsAb:
    settings: Settings
    info: RunInfo
    code_digest: str = ""  # of the server/tensorgate copy every server ran
    runs: list[tuple[str, PaRun]] = field(default_factory=list)  # (config, run); run.repeat is the round
    exits: list[tuple[str, int, int]] = field(default_factory=list)  # (config, round, exit status on SIGTERM)
    scrapers: list[Scraper] = field(default_factory=list)
    idle_cpu: list[tuple[str, float]] = field(default_factory=list)  # (config, server CPU ms a second, no requests)
    errors: list[str] = field(default_factory=list)  # servers that did not start

    def cell(self, config: str, model: str, c: int) -> list[PaRun]:
        return [r for k, r in self.runs if k == config and r.model == model and r.concurrency == c and r.ok]

    def med(self, config: str, model: str, c: int, attr: Callable[[PaRun], float]) -> float:
        return median([attr(r) for r in self.cell(config, model, c)])

    def round_ratios(self, model: str, c: int) -> list[float]:
        """ON infer/s over OFF infer/s of the same round, for each round both measured."""
        off = {r.repeat: r.infer_per_s for r in self.cell("off", model, c)}
        return [r.infer_per_s / off[r.repeat] for r in self.cell("on", model, c) if r.repeat in off]

    def by_round(self, model: str, c: int) -> str:
        return ", ".join(fmt_x(x, 3) for x in self.round_ratios(model, c))

    def noise_note(self) -> str:
        """Whether the rounds agree closely enough for the verdict to resolve the budget."""
        spans = [(m, c, self.round_ratios(m, c)) for m, c, _ in self.rows()]
        wide = [
            f"{m} c{c} {min(x):.3f}-{max(x):.3f}" for m, c, x in spans if len(x) > 1 and max(x) - min(x) > 1 - BUDGET
        ]
        if not wide:
            return f"The rounds' ON/OFF ratios agree within {1 - BUDGET:.0%}."
        return (
            f"The rounds' ON/OFF ratios span {', '.join(wide)}: wider than the {1 - BUDGET:.0%} budget, so this run's "
            "noise is larger than the loss it is looking for and the verdict is only as good as the median of that "
            "many rounds; the idle and CPU-per-request figures are the steadier evidence."
        )

    def rows(self) -> list[tuple[str, int, float]]:
        """(model, c, ON/OFF of the medians) for every measured cell."""
        s = self.settings
        return [
            (m, c, self.med("on", m, c, lambda r: r.infer_per_s) / self.med("off", m, c, lambda r: r.infer_per_s))
            for m in s.models
            for c in s.concurrency
        ]

    def both(self, model: str, c: int, attr: Callable[[PaRun], float], fmt: Callable[[float], str]) -> list[str]:
        return [fmt(self.med(k, model, c, attr)) for k in CONFIGS]

    def table(self) -> str:
        out = [
            [
                model,
                str(c),
                *self.both(model, c, lambda r: r.infer_per_s, fmt_int),
                fmt_x(ratio, 3),
                self.by_round(model, c) or "-",
                *self.both(model, c, lambda r: r.p50_us, fmt_ms),
                *self.both(model, c, lambda r: r.server_cpu_us, fmt_int),
                "n/a" if math.isnan(ratio) else "PASS" if ratio >= BUDGET else "miss",
            ]
            for model, c, ratio in self.rows()
        ]
        head = ["model", "c", "ON infer/s", "OFF infer/s", "ON/OFF", "ON/OFF by round", "ON p50 ms", "OFF p50 ms"]
        return table([*head, "ON server CPU µs/req", "OFF server CPU µs/req", f"verdict (>= {BUDGET})"], out)

    def cpu(self, configs: tuple[str, ...], pick: Callable[[CpuDelta], float]) -> list[float]:
        return [pick(r.cpu) for k, r in self.runs if k in configs and r.ok and r.cpu]

    def load_note(self) -> str:
        def per_config(pick: Callable[[CpuDelta], float]) -> str:
            return " / ".join(f"{fmt_x(median(self.cpu((k,), pick)), 0)}%" for k in CONFIGS)

        foreign = self.cpu(CONFIGS, lambda d: d.foreign_pct)
        idle, other = per_config(lambda d: d.idle_pct), per_config(lambda d: d.foreign_pct)
        return (
            f"Machine during the perf_analyzer calls (medians, ON / OFF): idle {idle}, other processes {other} "
            f"(at most {fmt_x(max(foreign, default=float('nan')), 0)}%); load average before the run "
            f"{self.info.load_before}, after {self.info.load_after}."
        )

    def idle_note(self) -> str:
        on, off = (median([ms for k, ms in self.idle_cpu if k == config]) for config in CONFIGS)
        return (
            f"With no requests ({IDLE_S:g} s from {IDLE_SETTLE_S:g} s after ready, medians over the rounds) the ON "
            f"server used {on:.1f} ms of CPU a second (scrapes, sampler), the OFF server {off:.1f}: metrics cost "
            f"{on - off:.1f} ms a second whatever the traffic, {(on - off) / 10:.1f}% of one core."
        )

    def scrape_note(self) -> str:
        ok = sum(x.ok for x in self.scrapers)
        failed = sum(x.failed for x in self.scrapers)
        took = [t for x in self.scrapers for t in x.seconds]
        models = sorted({m for x in self.scrapers for m, n in x.counted.items() if n > 0})
        counted = sum(all(x.counted.get(m, 0) > 0 for m in self.settings.models) for x in self.scrapers)
        errors = sorted({x.error for x in self.scrapers if x.error})
        return (
            f"Scrapes of the ON servers: {ok:,} answered, {failed:,} failed"
            + (f" ({'; '.join(errors)})" if errors else "")
            + (
                f"; median {1e3 * median(took):.1f} ms, slowest {1e3 * max(took):.1f} ms, "
                f"{max(x.body_bytes for x in self.scrapers) / 1024:.0f} KiB a scrape"
                if took
                else ""
            )
            + f"; the last scrape of {counted} of {len(self.scrapers)} ON servers counted inferences of every model "
            f"measured (nv_inference_count > 0 for: {', '.join(models) or 'none'})."
        )

    def failures(self) -> list[str]:
        out = [
            f"metrics {k} {r.model} c{r.concurrency} round {r.repeat + 1}: {r.error}" for k, r in self.runs if not r.ok
        ]
        out += self.errors
        out += [f"metrics {k} round {n + 1}: exit status {st} on SIGTERM" for k, n, st in self.exits if st != 0]
        return out

    def markdown(self) -> str:
        s = self.settings
        exits = sorted({st for _, _, st in self.exits})
        parts = [
            *self.info.header(" (metrics on / off)"),
            f"- code under test: one copy of server/tensorgate taken when the run started (sha1 {self.code_digest}), "
            "run by every server of the run",
            f"- servers: `tensorgate serve` started twice a round, {s.repeats} round(s), order ON, OFF then OFF, ON, "
            f"...; ON: `{' '.join(server_flags('on', '<port>'))}` and a scraper in the bench process "
            f"fetching /metrics every {SCRAPE_PERIOD_S:g} s; OFF: `{' '.join(server_flags('off', -1))}`",
            f"- closed loop: perf_analyzer -p {s.measurement_ms} -s {s.stability_pct} -r {s.max_trials}, one sample "
            "per request; medians over the rounds; `by round`: ON over OFF of the same round",
            "- both configurations keep the same per-request counters and histogram buckets (ModelStatistics reads "
            "them); ON adds the /metrics endpoint, its collectors at each scrape and the gauges' sampler thread",
            f"- server exit status on SIGTERM: {', '.join(map(str, exits)) or '-'}",
            "",
            f"### Metrics on / off (budget: ON >= {BUDGET} x OFF infer/s)",
            "",
            self.table(),
            "",
            self.noise_note(),
            "",
            self.load_note(),
            "",
            self.idle_note(),
            "",
            self.scrape_note(),
            "",
        ]
        failures = self.failures()
        if failures:
            parts += ["### Failures", "", *(f"- {f}" for f in failures), ""]
        return "\n".join(parts)


def _one_server(ab: MetricsAb, config: str, round_: int, tmp: Path) -> None:
    s = ab.settings
    metrics_port = free_port()
    flags = server_flags(config, metrics_port)
    server = Server.tensorgate(s.repo, tmp / f"server-metrics-{config}-{round_}.log", flags, code=tmp / "code")
    scraper = None
    try:
        server.wait_ready()
        log(f"metrics {config.upper()} server ready on {server.url} (pid {server.pid}): {' '.join(flags)}")
        if config == "on":
            scraper = Scraper(metrics_port)
            ab.scrapers.append(scraper)
        time.sleep(IDLE_SETTLE_S)
        before = CpuSample.take(server.pid)
        time.sleep(IDLE_S)
        after = CpuSample.take(server.pid)
        ab.idle_cpu.append((config, 1e3 * (after.server - before.server) / (after.wall - before.wall)))
        log(f"metrics {config.upper()} server idle: {ab.idle_cpu[-1][1]:.1f} ms of CPU a second")
        for model in s.models:
            for c in s.concurrency:
                run = perf_analyzer(server, model, c, round_, s, tmp, label=f"metrics-{config}-")
                ab.runs.append((config, run))
                log_pa(f"round {round_ + 1}/{s.repeats} metrics {config.upper()} {model}", run)
    except (RuntimeError, TimeoutError) as exc:  # did not start: reported, the other rounds still run
        ab.errors.append(f"metrics {config} round {round_ + 1}: {exc}")
        log(f"metrics {config.upper()} server failed: {exc}")
    finally:
        if scraper is not None:
            scraper.stop()
            log(f"scraper: {scraper.ok} scrapes answered, {scraper.failed} failed {scraper.error}")
        status = server.stop()
        ab.exits.append((config, round_, status))
        log(f"metrics {config.upper()} server stopped with SIGTERM: exit status {status}")
        if status != 0:
            print(server.log_tail(), file=sys.stderr)


def measure(ab: MetricsAb, tmp: Path) -> None:
    """Every round, a metrics-ON and a metrics-OFF server in alternating order; results go into ``ab``."""
    ab.code_digest = snapshot_code(tmp / "code")
    for round_ in range(ab.settings.repeats):
        for config in CONFIGS if round_ % 2 == 0 else CONFIGS[::-1]:
            _one_server(ab, config, round_, tmp)
    for model, c, ratio in ab.rows():
        log(f"metrics ON/OFF {model} c{c}: {fmt_x(ratio, 3)} (by round: {ab.by_round(model, c)})")
