"""Loads, reloads and unloads models from the repository directory while the server runs.

Each model name has an entry with its served versions. A (re)load builds the new versions off the
event loop, then swaps them in at once; versions it replaces stop taking requests, finish the ones
in flight and only then release their instances. One model failing to load never touches another.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tensorgate import config as model_config
from tensorgate import engines
from tensorgate.backends import onnxruntime_cpu
from tensorgate.backends.base import Backend, BackendExecuteError, BackendLoader, BackendLoadError, BackendOptions
from tensorgate.config import ModelSpec
from tensorgate.engines import Candidate, Capabilities, Engine
from tensorgate.errors import Code, ModelConfigError, NotFound, ServerError, Unavailable
from tensorgate.instance import Instance
from tensorgate.proto import model_config_pb2 as mc
from tensorgate.repository import layout, precision, versions
from tensorgate.scheduler import BatchingPolicy, Scheduler
from tensorgate.settings import ControlMode, Settings
from tensorgate.stats import ModelStats

log = logging.getLogger(__name__)
T = TypeVar("T")


class ModelState(enum.Enum):
    """Triton's model states as RepositoryIndex reports them."""

    UNKNOWN = "UNKNOWN"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelVersion:
    """One served version: its spec, what runs it and its scheduler."""

    name: str
    version: int
    spec: ModelSpec
    engine: str
    scheduler: Scheduler
    stats: ModelStats
    state: ModelState = ModelState.READY
    # Better engines still to build in the background (best first), and what building needs.
    upgrades: tuple[Candidate, ...] = ()
    source: tuple[Path, mc.ModelConfig, bool] | None = None

    async def retire(self) -> None:
        self.state = ModelState.UNLOADING
        await self.scheduler.close()
        self.state = ModelState.UNAVAILABLE
        log.info("event=model_unloaded model=%s version=%d", self.name, self.version)


@dataclass(frozen=True)
class BuildOutcome:
    """One background engine build: what it built and whether the version moved to it."""

    model: str
    version: int
    engine: str
    precision: str
    built: bool
    detail: str  # why it failed, or what it replaced
    seconds: float


@dataclass
class ModelEntry:
    """A model name: its served versions, or why it has none."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    state: ModelState = ModelState.UNKNOWN
    reason: str = ""
    failed_versions: dict[int, str] = field(default_factory=dict)
    fingerprint: tuple[tuple[str, int, int], ...] = ()
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


def _expected(exc: BaseException) -> bool:
    """Errors a model's files or config cause, as opposed to our bugs (which get a traceback)."""
    return isinstance(exc, (ModelConfigError, BackendLoadError, OSError))


def _reason(exc: BaseException) -> str:
    return str(exc) if _expected(exc) else f"internal error while loading: {exc!r}"


def _instance_options(config: mc.ModelConfig, candidate: Candidate) -> BackendOptions:
    count = model_config.instance_count(config)
    cores = os.cpu_count() or 1
    device = "cpu" if candidate.device is None else f"cuda:{candidate.device}"
    # One instance lets ONNX Runtime use every core; several share them so they don't oversubscribe.
    # Triton's ONNX Runtime parameters (intra_op_thread_count, ...) in the config take precedence.
    asked = model_config.ort_parameters(config)
    threads = 0 if count == 1 else max(1, cores // count)
    return BackendOptions(
        intra_op_threads=threads if asked.intra_op_threads is None else asked.intra_op_threads,
        inter_op_threads=1 if asked.inter_op_threads is None else asked.inter_op_threads,
        parallel_execution=asked.parallel_execution,
        device=device,
        precision=candidate.precision.value,
    )


def _load_ort_cuda(model_file: Path, options: BackendOptions) -> Backend:
    from tensorgate.backends import onnxruntime_cuda  # only where onnxruntime-gpu is installed

    return onnxruntime_cuda.load(model_file, options)


async def _in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
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


def _tensorrt_not_built() -> str:
    return "TensorRT engines are not built by this version of tensorgate yet"


class Repository:
    def __init__(
        self,
        settings: Settings,
        loaders: Mapping[Engine, BackendLoader] | None = None,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.root = Path(settings.model_repository)
        self.settings = settings
        self._loaders: Mapping[Engine, BackendLoader] = loaders or {
            Engine.ORT_CPU: onnxruntime_cpu.load,
            Engine.ORT_CUDA: _load_ort_cuda,
        }
        self._capabilities = capabilities
        self._entries: dict[str, ModelEntry] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._upgrades: set[asyncio.Task[None]] = set()
        self.builds: deque[BuildOutcome] = deque(maxlen=1024)  # the background builds that ended, in order
        self.passed_over: dict[tuple[str, int], list[tuple[str, str]]] = {}  # engines not tried, and why

    # ---- lookups on the request path (event loop, no awaits) ----

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version that serves a request, or a NotFound/Unavailable error saying why not."""
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"model '{name}' is not in the repository (see RepositoryIndex for the models served)")
        if version:
            try:
                number = int(version)
            except ValueError:
                raise NotFound(f"model '{name}' has no version '{version}': versions are positive integers") from None
            found = entry.versions.get(number)
            if found is None:
                if number in entry.failed_versions:
                    why = entry.failed_versions[number]
                    raise Unavailable(f"model '{name}' version {number} failed to load: {why}")
                raise NotFound(f"model '{name}' has no version {number} loaded (served: {sorted(entry.versions)})")
            if found.state is not ModelState.READY:
                raise Unavailable(f"model '{name}' version {number} is {found.state.value}")
            return found
        ready = [v for v in entry.versions.values() if v.state is ModelState.READY]
        if not ready:
            state = entry.state.value if entry.state is not ModelState.UNKNOWN else "not loaded"
            why = f": {entry.reason}" if entry.reason else ""
            raise Unavailable(f"model '{name}' is {state}{why}")
        return max(ready, key=lambda v: v.version)

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ServerError:
            return False
        return True

    def all_ready(self) -> bool:
        """Every model asked to load serves all its versions (explicitly unloaded ones aside): Triton's
        strict readiness."""
        for entry in list(self._entries.values()):
            if entry.state is ModelState.UNAVAILABLE and entry.reason == "unloaded":
                continue
            if entry.state is not ModelState.READY or entry.failed_versions:
                return False
        return True

    def ready_versions(self) -> list[ModelVersion]:
        return [v for e in self._entries.values() for v in e.versions.values() if v.state is ModelState.READY]

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        names = set(layout.model_names(self.root)) | set(self._entries)
        rows: list[IndexEntry] = []
        for name in sorted(names):
            entry = self._entries.get(name)
            if entry is None:
                if not ready_only:
                    rows.append(IndexEntry(name, "", "", ""))
                continue
            by_version = {n: (v.state.value, "") for n, v in entry.versions.items()}
            by_version.update(
                {
                    n: (ModelState.UNAVAILABLE.value, r)
                    for n, r in entry.failed_versions.items()
                    if n not in entry.versions
                }
            )
            for number, (state, reason) in sorted(by_version.items()):  # in version order
                if not ready_only or state == ModelState.READY.value:
                    rows.append(IndexEntry(name, str(number), state, reason))
            if not by_version and not ready_only:
                rows.append(IndexEntry(name, "", entry.state.value, entry.reason))
        return rows

    # ---- lifecycle ----

    async def start(self) -> None:
        mode = self.settings.model_control_mode
        if not self.root.is_dir():
            log.warning("event=repository_missing path=%s", self.root)
        names = layout.model_names(self.root)
        if mode is ControlMode.EXPLICIT:
            wanted = self.settings.load_model
            names = names if "*" in wanted else [n for n in wanted]
        log.info("event=repository_scan path=%s mode=%s models=%s", self.root, mode.value, ",".join(names) or "-")
        results = await asyncio.gather(*(self.load(name) for name in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, NotFound):  # other load failures are logged where they happen
                log.error("event=model_load_failed model=%s reason=%r", name, result.message)
            elif isinstance(result, Exception) and not isinstance(result, ServerError):
                log.error(
                    "event=model_load_failed model=%s reason=%r", name, f"internal error: {result!r}", exc_info=result
                )
        if mode is ControlMode.POLL:
            self._poll_task = asyncio.create_task(self._poll_forever(), name="repository-poll")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        for task in list(self._upgrades):  # an engine still building is abandoned, not awaited
            task.cancel()
        await asyncio.gather(*(self.unload(name) for name in list(self._entries)), return_exceptions=True)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def load(self, name: str, override: mc.ModelConfig | None = None) -> None:
        """Load (or reload) a model from disk; raises ServerError if it cannot serve any version."""
        directory = layout.model_dir(self.root, name)
        if directory is None:
            raise NotFound(f"no model directory '{name}' in the repository {self.root}")
        entry = self._entries.setdefault(name, ModelEntry(name))
        async with entry.lock:
            if not entry.versions:
                entry.state, entry.reason = ModelState.LOADING, ""
            started = time.perf_counter()
            fingerprint = layout.fingerprint(directory)
            log.info("event=model_loading model=%s path=%s", name, directory)
            try:
                loaded, failed = await asyncio.to_thread(self._build, name, directory, override)
            except Exception as exc:
                reason = _reason(exc)
                log.error("event=model_load_failed model=%s reason=%r", name, reason, exc_info=not _expected(exc))
                entry.fingerprint = fingerprint
                if not entry.versions:
                    entry.state, entry.reason = ModelState.UNAVAILABLE, reason
                    entry.failed_versions = {}
                raise ServerError(f"failed to load '{name}': {reason}", Code.INVALID_ARGUMENT) from None
            if not loaded and entry.versions:
                # A reload that would serve nothing leaves the versions already serving in place (as Triton).
                reason = "; ".join(f"version {v}: {r}" for v, r in sorted(failed.items()))
                entry.fingerprint = fingerprint
                log.error(
                    "event=model_load_failed model=%s reason=%r kept_versions=%s",
                    name,
                    reason,
                    ",".join(str(v) for v in sorted(entry.versions)),
                )
                raise ServerError(
                    f"failed to load '{name}': {reason} (the versions loaded before keep serving)",
                    Code.INVALID_ARGUMENT,
                )
            old = entry.versions
            entry.versions = {v.version: v for v in loaded}
            entry.failed_versions = failed
            entry.fingerprint = fingerprint
            if loaded:
                entry.state, entry.reason = ModelState.READY, ""
            else:
                entry.state = ModelState.UNAVAILABLE
                entry.reason = "; ".join(f"version {v}: {r}" for v, r in sorted(failed.items()))
            for v in loaded:
                log.info(
                    "event=model_ready model=%s version=%d engine=%s instances=%d max_batch_size=%d seconds=%.2f",
                    name,
                    v.version,
                    v.engine,
                    len(v.scheduler.instances),
                    v.spec.max_batch_size,
                    time.perf_counter() - started,
                )
            self._retire(old.values())
            for v in loaded:
                if v.upgrades:
                    self._spawn(self._upgrade(entry, v), self._upgrades)
            if not loaded:
                raise ServerError(f"failed to load '{name}': {entry.reason}", Code.INVALID_ARGUMENT)

    async def unload(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None:
            if layout.model_dir(self.root, name) is None:
                raise NotFound(f"no model '{name}' in the repository")
            return
        async with entry.lock:
            retiring = list(entry.versions.values())
            entry.state, entry.reason = ModelState.UNLOADING, ""
            for v in retiring:
                v.state = ModelState.UNLOADING
            entry.versions = {}
            entry.failed_versions = {}
            await asyncio.gather(*(v.retire() for v in retiring))
            entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"

    @staticmethod
    def _spawn(work: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> None:
        """Run ``work`` as a task kept in ``tasks`` until it ends (so stop() can find it)."""
        task = asyncio.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _upgrade(self, entry: ModelEntry, serving: ModelVersion) -> None:
        """Build the better engines of a serving version off the request path, best first; the first
        that loads replaces the version at once (new requests go to it, requests already queued on
        the old one finish there), unless the model was reloaded or unloaded meanwhile."""
        assert serving.source is not None
        model_file, raw, mbs_given = serving.source
        for candidate in serving.upgrades:
            started = time.perf_counter()
            log.info(
                "event=engine_build_started model=%s version=%d engine=%s precision=%s serving_on=%s",
                serving.name,
                serving.version,
                candidate.engine.value,
                candidate.precision.value,
                serving.engine,
            )
            try:
                build_file, candidate = await _in_daemon_thread(self._prepare, serving, model_file, candidate)
                better = await _in_daemon_thread(
                    self._build_version,
                    serving.name,
                    serving.version,
                    build_file,
                    raw,
                    mbs_given,
                    candidate,
                    model_file.parent.parent,
                )
            except Exception as exc:
                log.warning(
                    "event=engine_fallback model=%s version=%d engine=%s reason=%r keeps=%s",
                    serving.name,
                    serving.version,
                    candidate.engine.value,
                    _reason(exc),
                    serving.engine,
                    exc_info=not _expected(exc),
                )
                self._record_build(serving, candidate.engine.value, candidate, False, _reason(exc), started)
                continue
            async with entry.lock:
                if entry.versions.get(serving.version) is not serving or serving.state is not ModelState.READY:
                    await better.scheduler.close()  # reloaded or unloaded meanwhile: drop the build
                    why = "dropped: the model was reloaded or unloaded during the build"
                    self._record_build(serving, candidate.engine.value, candidate, False, why, started)
                    return
                better.stats = better.scheduler.stats = serving.stats  # statistics continue across the switch
                entry.versions[serving.version] = better
                self._retire([serving])
            log.info(
                "event=engine_switched model=%s version=%d from=%s to=%s build_seconds=%.1f",
                serving.name,
                serving.version,
                serving.engine,
                better.engine,
                time.perf_counter() - started,
            )
            self._record_build(serving, better.engine, candidate, True, f"replaced {serving.engine}", started)
            return

    def _record_build(
        self, serving: ModelVersion, engine: str, candidate: Candidate, built: bool, detail: str, started: float
    ) -> None:
        seconds = time.perf_counter() - started
        outcome = BuildOutcome(serving.name, serving.version, engine, candidate.precision.value, built, detail, seconds)
        self.builds.append(outcome)

    async def wait_for_builds(self) -> None:
        """Until every background engine build has ended (``tensorgate build``; the server never waits)."""
        while self._upgrades:
            await asyncio.gather(*list(self._upgrades), return_exceptions=True)

    def _prepare(self, serving: ModelVersion, model_file: Path, candidate: Candidate) -> tuple[Path, Candidate]:
        """(Worker thread.) The file to build ``candidate`` from: the FP16 graph if the accuracy gate
        accepts it on the model's warmup samples (else random data), otherwise the FP32 model."""
        warmup = model_config.warmup_batches(serving.spec.config, serving.spec, model_file.parent.parent)
        return precision.prepare(
            serving.name,
            serving.version,
            model_file,
            candidate,
            [inputs for _, inputs, _ in warmup] or None,
            self.settings.engine_cache_dir,
            self.settings.fp16_rtol,
        )

    def _retire(self, old: Iterable[ModelVersion]) -> None:
        for version in list(old):
            self._spawn(version.retire(), self._retiring)

    # ---- building (worker thread) ----

    def _build(
        self, name: str, directory: Path, override: mc.ModelConfig | None
    ) -> tuple[list[ModelVersion], dict[int, str]]:
        if override is not None:
            raw, mbs_given = override, True
        else:
            raw, mbs_given = model_config.read_config(directory)
        for hint in model_config.check_supported(raw):
            log.warning("event=config_field_ignored model=%s detail=%r", name, hint)
        filename = model_config.model_filename(raw)
        on_disk = layout.version_dirs(directory)
        if not on_disk:
            raise ModelConfigError(f"no version directory (e.g. {name}/1/{filename}) in the model directory")
        policy = raw.version_policy if raw.HasField("version_policy") else mc.ModelVersionPolicy()
        chosen = versions.select(policy, on_disk)
        loaded: list[ModelVersion] = []
        failed: dict[int, str] = {}
        for number in chosen:
            try:
                loaded.append(self._build_version(name, number, on_disk[number] / filename, raw, mbs_given))
            except Exception as exc:
                log.error(
                    "event=model_version_failed model=%s version=%d reason=%r",
                    name,
                    number,
                    _reason(exc),
                    exc_info=not _expected(exc),
                )
                failed[number] = _reason(exc)
        return loaded, failed

    def _build_version(
        self,
        name: str,
        number: int,
        model_file: Path,
        raw: mc.ModelConfig,
        mbs_given: bool,
        engine: Candidate | None = None,
        model_dir: Path | None = None,
    ) -> ModelVersion:
        """Load one version on the best engine that loads now (or on ``engine``), with its instances,
        warmup and scheduler."""
        if not model_file.is_file():
            raise ModelConfigError(f"version {number} has no model file {model_file.name}")
        upgrades: tuple[Candidate, ...] = ()
        if engine is None:
            loader, options, first, upgrades = self._choose_engine(name, number, model_file, raw)
        else:
            loader = self._loaders[engine.engine]
            options = _instance_options(raw, engine)
            first = loader(model_file, options)
        backends: list[Backend] = [first]
        try:
            completed = model_config.complete(
                raw,
                name=name,
                inputs=first.inputs,
                outputs=first.outputs,
                max_batch_size_given=mbs_given,
                default_max_batch_size=self.settings.default_max_batch_size,
            )
            spec = model_config.validate(completed, first.inputs, first.outputs)
            gpu = first.engine != Engine.ORT_CPU.value
            for group in completed.instance_group:
                if group.kind == mc.ModelInstanceGroup.KIND_AUTO:
                    group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
            while len(backends) < model_config.instance_count(completed):
                backends.append(loader(model_file, options))
            log.info(
                "event=model_instances model=%s version=%d engine=%s count=%d intra_op_threads=%s "
                "inter_op_threads=%d parallel_execution=%s",
                name,
                number,
                first.engine,
                len(backends),
                options.intra_op_threads or "default",
                options.inter_op_threads,
                str(options.parallel_execution).lower(),
            )
            self._warm_up(name, number, completed, spec, model_dir or model_file.parent.parent, backends)
        except BaseException:
            for b in backends:
                b.close()
            raise
        stats = ModelStats()
        instances = [Instance(name, i, b) for i, b in enumerate(backends)]
        scheduler = Scheduler(
            name, number, instances, stats, BatchingPolicy.from_config(completed), self.settings.inline_execution_us
        )
        return ModelVersion(
            name, number, spec, first.engine, scheduler, stats, upgrades=upgrades, source=(model_file, raw, mbs_given)
        )

    @property
    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            self._capabilities = Capabilities.detect()
            caps = self._capabilities
            log.info(
                "event=engines_detected gpus=%s tensorrt=%s onnxruntime_providers=%s",
                ",".join(caps.gpus) or f"none ({caps.no_gpu_reason})",
                caps.tensorrt_version or f"none ({caps.no_tensorrt_reason})",
                ",".join(caps.ort_providers),
            )
        return self._capabilities

    def _choose_engine(
        self, name: str, number: int, model_file: Path, raw: mc.ModelConfig
    ) -> tuple[BackendLoader, BackendOptions, Backend, tuple[Candidate, ...]]:
        """Load the first instance on the best engine that loads now, logging every step down and
        why; engines that build slowly (TensorRT) are returned to be built in the background."""
        chosen = engines.plan(
            raw,
            self.capabilities,
            tensorrt_available=None if Engine.TENSORRT in self._loaders else _tensorrt_not_built,
        )
        self.passed_over[name, number] = [(engine.value, reason) for engine, reason in chosen.passed_over]
        for engine, reason in chosen.passed_over:
            log.info(
                "event=engine_passed_over model=%s version=%d engine=%s reason=%r", name, number, engine.value, reason
            )
        failures: list[str] = []
        later: list[Candidate] = []
        for candidate in chosen.candidates:
            loader = self._loaders.get(candidate.engine)
            if loader is None:
                reason = f"no {candidate.engine.value} engine in this build"
            elif candidate.background:
                later.append(candidate)
                log.info(
                    "event=engine_deferred model=%s version=%d engine=%s reason=%r",
                    name,
                    number,
                    candidate.engine.value,
                    "builds in the background; serving on the next engine meanwhile",
                )
                continue
            else:
                options = _instance_options(raw, candidate)
                try:
                    return loader, options, loader(model_file, options), tuple(later)
                except BackendLoadError as exc:
                    reason = str(exc)
                    if candidate.engine is Engine.ORT_CPU:
                        raise
            failures.append(f"{candidate.engine.value}: {reason}")
            log.warning(
                "event=engine_fallback model=%s version=%d engine=%s reason=%r",
                name,
                number,
                candidate.engine.value,
                reason,
            )
        raise BackendLoadError("no engine could load the model: " + "; ".join(failures))

    @staticmethod
    def _warm_up(
        name: str, number: int, config: mc.ModelConfig, spec: ModelSpec, model_dir: Path, backends: list[Backend]
    ) -> None:
        """Run config.pbtxt's model_warmup on every instance; the version is READY only after."""
        samples = model_config.warmup_batches(config, spec, model_dir)
        outputs = list(spec.outputs)
        for sample, inputs, count in samples:
            started = time.perf_counter()
            for index, backend in enumerate(backends):
                try:
                    for _ in range(count):
                        backend.execute(inputs, outputs)
                except BackendExecuteError as exc:
                    raise ModelConfigError(f"model_warmup {sample!r} failed on instance {index}: {exc}") from None
            log.info(
                "event=model_warmup model=%s version=%d sample=%r runs=%d instances=%d seconds=%.2f",
                name,
                number,
                sample,
                count,
                len(backends),
                time.perf_counter() - started,
            )

    # ---- poll mode ----

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.poll_once()
            except Exception:
                log.exception("event=repository_poll_failed")

    def _scan(self) -> dict[str, tuple[tuple[str, int, int], ...]]:
        return {name: layout.fingerprint(self.root / name) for name in layout.model_names(self.root)}

    async def poll_once(self) -> None:
        """Load added models, reload changed ones, unload removed ones. The scan of the directory
        runs on a worker thread: a large repository must not stall requests."""
        fingerprints = await asyncio.to_thread(self._scan)
        on_disk = set(fingerprints)
        for name in sorted(set(self._entries) - on_disk):
            if self._entries[name].versions or self._entries[name].state is not ModelState.UNAVAILABLE:
                log.info("event=model_removed model=%s", name)
                await self.unload(name)
            del self._entries[name]
        for name in sorted(on_disk):
            entry = self._entries.get(name)
            if entry is not None and entry.fingerprint == fingerprints[name]:
                continue
            log.info("event=model_%s model=%s", "changed" if entry else "added", name)
            with contextlib.suppress(ServerError):  # already logged and recorded in the index
                await self.load(name)
