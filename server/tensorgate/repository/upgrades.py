"""Background engine builds: a version serves on the engine that loads now while a better one
(TensorRT) builds off the request path; the first that loads replaces it at once.

New requests go to the new version, requests already queued on the old one finish there, and the
statistics continue across the switch. A build is dropped if the model was reloaded or unloaded
meanwhile, and abandoned (not awaited) when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from tensorgate import model_config
from tensorgate.backends.base import BackendOptions, Precision
from tensorgate.metrics.events import ENGINE_BUILD_SECONDS, ENGINE_BUILDS, FP16_GATE
from tensorgate.repository import precision
from tensorgate.repository.engine_plan import Candidate
from tensorgate.repository.loader import Loader, expected, failure_reason
from tensorgate.repository.state import BuildOutcome, ModelEntry, ModelState, ModelVersion
from tensorgate.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


async def in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` on a daemon thread: an engine build may take minutes, and a server told to stop
    must not wait for it at exit (asyncio.to_thread's threads are joined at interpreter exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the server stopped meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="tg-engine-build", daemon=True).start()
    return await future


def spawn(work: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> None:
    """Run ``work`` as a task kept in ``tasks`` until it ends (so whoever stops can find it)."""
    task = asyncio.create_task(work)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


class Upgrades:
    def __init__(self, settings: Settings, loader: Loader, retire: Callable[[ModelVersion], None]) -> None:
        self.settings = settings
        self._loader = loader
        self._retire = retire  # stops a replaced version once its requests are answered
        self._tasks: set[asyncio.Task[None]] = set()
        self.builds: deque[BuildOutcome] = deque(maxlen=1024)  # the builds that ended, in order

    def start(self, entry: ModelEntry, serving: ModelVersion) -> None:
        """Build the better engines of a serving version in the background, if it has any."""
        if serving.upgrades:
            spawn(self._upgrade(entry, serving), self._tasks)

    def abandon(self) -> None:
        """The server stops: builds still running are abandoned, not awaited."""
        for task in list(self._tasks):
            task.cancel()

    async def wait(self) -> None:
        """Until every background build has ended (``tensorgate build``; the server never waits)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _upgrade(self, entry: ModelEntry, serving: ModelVersion) -> None:
        """Best first; the first that loads replaces ``serving`` unless the model changed meanwhile."""
        for candidate in serving.upgrades:
            started = time.perf_counter()
            log.info(
                "event=engine_build_started model=%s version=%d engine=%s precision=%s serving_on=%s",
                serving.name,
                serving.version,
                candidate.engine.value,
                candidate.precision.value,
                serving.engine.value,
            )
            try:
                prepared = await in_daemon_thread(self._prepare, serving, candidate)
                candidate = prepared.candidate
                better = await in_daemon_thread(
                    self._loader.load_version,
                    serving.name,
                    serving.version,
                    serving.source,
                    candidate,
                    prepared.model_file,
                    serving.stats,  # statistics continue across the switch
                    serving.spec,  # the engine's profile covers the batches this version forms
                )
                if candidate.precision is Precision.FP16:
                    refused = await in_daemon_thread(self._engine_gate, serving, better)
                    if refused is not None:
                        await better.scheduler.close()
                        FP16_GATE.labels(serving.name, str(serving.version), "refused").inc()
                        log.warning(
                            "event=fp16_refused model=%s version=%d engine=%s stage=built_engine reason=%s keeps=%s",
                            serving.name,
                            serving.version,
                            candidate.engine.value,
                            refused,
                            serving.engine.value,
                        )
                        self._record(serving, candidate, False, f"refused by the FP16 gate: {refused}", started)
                        continue
            except Exception as exc:
                log.warning(
                    "event=engine_fallback model=%s version=%d engine=%s reason=%s keeps=%s",
                    serving.name,
                    serving.version,
                    candidate.engine.value,
                    failure_reason(exc),
                    serving.engine.value,
                    exc_info=not expected(exc),
                )
                self._record(serving, candidate, False, failure_reason(exc), started)
                continue
            async with entry.lock:
                if entry.versions.get(serving.version) is not serving or serving.state is not ModelState.READY:
                    await better.scheduler.close()  # reloaded or unloaded meanwhile: drop the build
                    self._record(
                        serving,
                        candidate,
                        False,
                        "dropped: the model was reloaded or unloaded during the build",
                        started,
                    )
                    return
                better.passed_over = serving.passed_over
                entry.versions[serving.version] = better
                self._retire(serving)
            log.info(
                "event=engine_switched model=%s version=%d from=%s to=%s build_seconds=%.1f",
                serving.name,
                serving.version,
                serving.engine.value,
                better.engine.value,
                time.perf_counter() - started,
            )
            self._record(serving, candidate, True, f"replaced {serving.engine.value}", started)
            return

    def _record(self, serving: ModelVersion, candidate: Candidate, built: bool, detail: str, started: float) -> None:
        seconds = time.perf_counter() - started
        outcome = "built" if built else "dropped" if detail.startswith("dropped") else "failed"
        engine = candidate.engine.value
        ENGINE_BUILDS.labels(serving.name, str(serving.version), engine, outcome).inc()
        ENGINE_BUILD_SECONDS.labels(engine, outcome).observe(seconds)
        self.builds.append(
            BuildOutcome(serving.name, serving.version, candidate.engine, candidate.precision, built, detail, seconds)
        )

    def _engine_gate(self, serving: ModelVersion, better: ModelVersion) -> str | None:
        """(Worker thread.) The built FP16 engine against the FP32 model on ONNX Runtime's CPU, on the
        warmup samples (else random ones), before any traffic reaches it: None if every output is
        within --fp16-rtol, else why not. The graph passed the same gate before the build; this
        catches what the engine's own kernels and fusions lose. An engine that cannot run the
        samples is refused too: no FP16 engine serves unchecked."""
        from tensorgate.backends import fp16, onnxruntime_cpu

        model_file = serving.source.model_file
        warmup = model_config.warmup_samples(serving.spec, serving.source.model_dir)
        samples = [s.inputs for s in warmup] or fp16.default_samples(model_file.read_bytes())
        names = list(serving.spec.outputs)
        try:
            reference = onnxruntime_cpu.load(model_file, BackendOptions())
            try:
                expected_outputs = [reference.execute(sample, names) for sample in samples]
            finally:
                reference.close()
            engine = better.scheduler.instances[0].backend  # serves nothing yet: this thread may use it
            built = [engine.execute(sample, names) for sample in samples]
        except Exception as exc:
            return f"the samples could not be run to check it: {exc}"
        report = fp16.compare_outputs(
            expected_outputs,
            built,
            fp16.Tolerance(rtol=self.settings.fp16_rtol),
            candidate_label=f"the built {better.engine.value} FP16 engine",
        )
        if report.passed:
            log.info(
                "event=fp16_engine_accepted model=%s version=%d detail=%s", serving.name, serving.version, report.reason
            )
            return None
        return report.reason

    def _prepare(self, serving: ModelVersion, candidate: Candidate) -> precision.BuildInput:
        """(Worker thread.) The file to build ``candidate`` from: the FP16 graph if the accuracy gate
        accepts it on the model's warmup samples (else random data), otherwise the FP32 model."""
        warmup = model_config.warmup_samples(serving.spec, serving.source.model_dir)
        return precision.prepare(
            serving.name,
            serving.version,
            serving.source.model_file,
            candidate,
            [sample.inputs for sample in warmup] or None,
            self.settings.engine_cache_dir,
            self.settings.fp16_rtol,
        )
