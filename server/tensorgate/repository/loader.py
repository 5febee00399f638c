"""Loading one model version: the engine it runs on, its instances, their warmup and its scheduler.

Runs on a worker thread (loading a model can take seconds); the repository swaps the result in on
the event loop. Every engine step down is logged with its reason.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tensorgate import backends, model_config
from tensorgate.backends.base import (
    Backend,
    BackendExecuteError,
    BackendLoader,
    BackendLoadError,
    BackendOptions,
    Engine,
)
from tensorgate.errors import ModelConfigError
from tensorgate.instance import Instance
from tensorgate.model_config import InstanceSettings, ModelSpec, RawConfig
from tensorgate.model_config.version_policy import missing_versions
from tensorgate.repository import layout
from tensorgate.repository.engine_plan import Candidate, Capabilities, PassedOver, plan
from tensorgate.repository.state import ModelSource, ModelVersion
from tensorgate.scheduler import Scheduler
from tensorgate.settings import Settings
from tensorgate.stats import ModelStats

log = logging.getLogger(__name__)

TENSORRT_NOT_GIVEN = "no TensorRT loader was given to this repository"


def expected(exc: BaseException) -> bool:
    """Errors a model's files or config cause, as opposed to our bugs (which get a traceback)."""
    return isinstance(exc, (ModelConfigError, BackendLoadError, OSError))


def failure_reason(exc: BaseException) -> str:
    return str(exc) if expected(exc) else f"internal error while loading: {exc!r}"


@dataclass
class LoadResult:
    """The versions of one model that loaded, and why the others did not."""

    loaded: list[ModelVersion] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Chosen:
    """The engine a version loads on now: its first instance loaded, and the slow engines deferred."""

    loader: BackendLoader
    options: BackendOptions
    first: Backend
    deferred: tuple[Candidate, ...]
    passed_over: tuple[PassedOver, ...]


def instance_options(
    instances: InstanceSettings,
    candidate: Candidate,
    settings: Settings | None = None,
    spec: ModelSpec | None = None,
    name: str = "",
) -> BackendOptions:
    """How to load an instance on ``candidate``. ``spec`` (the version's, once known: a background
    build has the serving version's) bounds TensorRT's profile by the batches the scheduler forms."""
    settings = settings or Settings()
    options = BackendOptions(
        intra_op_threads=instances.intra_op_threads(os.cpu_count() or 1),
        inter_op_threads=instances.inter_op_threads,
        parallel_execution=instances.ort.parallel_execution,
        device="cpu" if candidate.device is None else f"cuda:{candidate.device}",
        precision=candidate.precision,
        model=name,
        cache_dir=settings.engine_cache_dir / "tensorrt",
        workspace_bytes=settings.tensorrt_workspace_bytes,
        builder_optimization_level=settings.tensorrt_builder_optimization_level,
        cuda_options=cuda_options(settings, instances),
        op_libraries=instances.ort.op_libraries,
    )
    if spec is None:
        return options
    preferred = spec.batching.preferred_batch_sizes
    return replace(
        options,
        max_batch_size=spec.max_batch_size,
        opt_batch_size=max(preferred) if preferred else spec.max_batch_size,
        dims=tuple((n, t.engine_dims) for n, t in spec.inputs.items()),
    )


def cuda_options(settings: Settings, instances: InstanceSettings) -> tuple[tuple[str, str], ...]:
    """ONNX Runtime's CUDA provider options from the server's flags, then the model's config."""
    options = {
        "cudnn_conv_algo_search": settings.ort_cuda_cudnn_conv_algo_search,
        "arena_extend_strategy": settings.ort_cuda_arena_extend_strategy,
    }
    if settings.ort_cuda_gpu_mem_limit_bytes > 0:
        options["gpu_mem_limit"] = str(settings.ort_cuda_gpu_mem_limit_bytes)
    options.update(instances.ort.cuda)
    return tuple(options.items())


class Loader:
    def __init__(self, settings: Settings, loaders: dict[Engine, BackendLoader], capabilities: Capabilities | None):
        self.settings = settings
        self.loaders = loaders
        self._capabilities = capabilities
        self._detecting = threading.Lock()  # models load on threads at once: the machine is looked at once

    @property
    def capabilities(self) -> Capabilities:
        with self._detecting:
            if self._capabilities is None:
                self._capabilities = caps = Capabilities.detect()
                log.info(
                    "event=engines_detected gpus=%s tensorrt=%s onnxruntime_providers=%s",
                    ",".join(caps.gpus) or f"none ({caps.no_gpu_reason})",
                    caps.tensorrt_version or f"none ({caps.no_tensorrt_reason})",
                    ",".join(caps.ort_providers),
                )
            return self._capabilities

    def load_model(
        self,
        name: str,
        directory: Path,
        override: RawConfig | None,
        serving: Mapping[int, ModelStats] | None = None,
    ) -> LoadResult:
        """Every version the version policy serves, each loaded on its own (every one is tried, so the index
        says each failure; the repository then takes the model whole or not at all).
        A version in ``serving`` (a reload: the statistics of the versions serving now) keeps counting in
        its statistics, so its Prometheus counters continue across the reload as Triton's do."""
        raw = override if override is not None else model_config.read_config(directory)
        for hint in model_config.check_supported(raw.config):
            log.warning("event=config_field_ignored model=%s detail=%s", name, hint)
        filename = model_config.model_filename(raw.config)
        found = layout.version_dirs(directory)
        for ignored, why in sorted(found.ignored.items()):
            log.warning("event=version_dir_ignored model=%s dir=%s reason=%s", name, ignored, why)
        on_disk = found.versions
        if not on_disk:
            raise ModelConfigError(f"no version directory (e.g. {name}/1/{filename}) in the model directory")
        policy = raw.config.version_policy
        selected = model_config.select_versions(policy, on_disk)
        missing = missing_versions(policy, on_disk)
        if missing:
            # As Triton (which logs an error for each): the versions that have a directory still load.
            log.warning(
                "event=model_versions_missing model=%s versions=%s reason=%s",
                name,
                ",".join(map(str, missing)),
                f"version_policy specific names versions without a directory; serving {selected}",
            )
        result = LoadResult()
        for number in selected:
            try:
                result.loaded.append(
                    self.load_version(
                        name,
                        number,
                        ModelSource(layout.model_file(on_disk[number], filename), raw, directory),
                        stats=(serving or {}).get(number),
                    )
                )
            except Exception as exc:
                log.error(
                    "event=model_version_failed model=%s version=%d reason=%s",
                    name,
                    number,
                    failure_reason(exc),
                    exc_info=not expected(exc),
                )
                result.failed[number] = failure_reason(exc)  # every version tried: the index says each reason
        return result

    def load_version(
        self,
        name: str,
        number: int,
        source: ModelSource,
        engine: Candidate | None = None,
        model_file: Path | None = None,
        stats: ModelStats | None = None,
        spec: ModelSpec | None = None,
    ) -> ModelVersion:
        """Load one version on the best engine that loads now, or on ``engine`` from ``model_file``
        (a background build: the spec ``spec`` of the version it replaces continues, and bounds the
        engine's profile). ``stats``: the statistics of the version it replaces (a build, a reload),
        which continue."""
        started = time.perf_counter()
        model_file = model_file or source.model_file
        if not model_file.is_file():
            shown = model_file.name
            if model_file == source.model_file and model_file.parent.parent != source.model_dir:
                shown = f"{model_file.parent.name}/{model_file.name}"  # Triton's model.onnx/model.onnx form
            raise ModelConfigError(f"version {number} has no model file {shown}")
        instances = model_config.instance_settings(source.raw.config)
        if engine is None:
            chosen = self._choose_engine(name, number, model_file, instances)
        else:
            options = instance_options(instances, engine, self.settings, spec, name)
            loader = self.loaders[engine.engine]
            chosen = _Chosen(loader, options, loader(model_file, options), (), ())
        first = chosen.first
        backends: list[Backend] = [first]
        try:
            spec = model_config.model_spec(
                source.raw,
                name=name,
                inputs=first.inputs,
                outputs=first.outputs,
                default_max_batch_size=self.settings.default_max_batch_size,
                gpu=first.engine is not Engine.ORT_CPU,
                auto_complete_allowed=not self.settings.disable_auto_complete_config,
            )
            spec = model_config.with_labels(spec, source.model_dir)
            for hint in model_config.batching_hints(spec.config):
                log.warning("event=config_field_ignored model=%s version=%d detail=%s", name, number, hint)
            options = chosen.options
            # On a GPU, instance_group's count is per listed GPU (Triton's placement); the first
            # instance is already on devices[0].
            devices = instances.gpu_devices(len(self.capabilities.gpus)) if options.device_index is not None else ()
            while len(backends) < (len(devices) or spec.instances.count):
                more = replace(options, device=f"cuda:{devices[len(backends)]}") if devices else options
                backends.append(chosen.loader(model_file, more))
            log.info(
                "event=model_instances model=%s version=%d engine=%s count=%d devices=%s intra_op_threads=%s "
                "inter_op_threads=%d parallel_execution=%s",
                name,
                number,
                first.engine.value,
                len(backends),
                ",".join(f"cuda:{d}" for d in devices) if devices else options.device,
                options.intra_op_threads or "default",
                options.inter_op_threads,
                str(options.parallel_execution).lower(),
            )
            _warm_up(name, number, spec, source.model_dir, backends)
        except BaseException:
            for b in backends:
                b.close()
            raise
        scheduler = Scheduler(
            name,
            number,
            [Instance(name, i, b) for i, b in enumerate(backends)],
            stats or ModelStats(),
            spec.batching,
            self.settings.inline_execution_us,
            _or_default(spec.limits.max_queue_wait_ms, self.settings.max_queue_wait_ms),
            _or_default(spec.limits.execution_timeout_ms, self.settings.execution_timeout_ms),
        )
        return ModelVersion(
            name,
            number,
            spec,
            first.engine,
            scheduler,
            source,
            upgrades=chosen.deferred,
            passed_over=chosen.passed_over,
            precision=chosen.options.precision,
            device=chosen.options.device,
            load_seconds=time.perf_counter() - started,
        )

    @staticmethod
    def _tensorrt_missing() -> str:
        """Why this repository has no TensorRT loader."""
        return backends.tensorrt_missing() or TENSORRT_NOT_GIVEN

    def _choose_engine(self, name: str, number: int, model_file: Path, instances: InstanceSettings) -> _Chosen:
        """Load the first instance on the best engine that loads now, logging every step down and
        why; engines that build slowly (TensorRT) are returned to be built in the background."""
        chosen = plan(
            instances,
            self.capabilities,
            tensorrt_missing=None if Engine.TENSORRT in self.loaders else self._tensorrt_missing(),
        )
        for engine, reason in chosen.passed_over:
            log.info(
                "event=engine_passed_over model=%s version=%d engine=%s reason=%s", name, number, engine.value, reason
            )
        if instances.tensorrt and not any(c.engine is Engine.TENSORRT for c in chosen.candidates):
            log.warning("event=engine_request_unmet model=%s wanted=tensorrt", name)
        failures: list[str] = []
        later: list[Candidate] = []
        for candidate in chosen.candidates:
            loader = self.loaders.get(candidate.engine)
            if loader is None:
                reason = f"no {candidate.engine.value} engine in this build"
            elif candidate.background:
                later.append(candidate)
                log.info(
                    "event=engine_deferred model=%s version=%d engine=%s reason=%s",
                    name,
                    number,
                    candidate.engine.value,
                    "builds in the background; serving on the next engine meanwhile",
                )
                continue
            else:
                options = instance_options(instances, candidate, self.settings, name=name)
                try:
                    return _Chosen(loader, options, loader(model_file, options), tuple(later), chosen.passed_over)
                except BackendLoadError as exc:
                    reason = str(exc)
                    if candidate.engine is Engine.ORT_CPU:
                        raise
            failures.append(f"{candidate.engine.value}: {reason}")
            log.warning(
                "event=engine_fallback model=%s version=%d engine=%s reason=%s",
                name,
                number,
                candidate.engine.value,
                reason,
            )
        raise BackendLoadError("no engine could load the model: " + "; ".join(failures))


def _warm_up(name: str, number: int, spec: ModelSpec, model_dir: Path, backends: list[Backend]) -> None:
    """Run config.pbtxt's model_warmup on every instance; the version is READY only after."""
    outputs = list(spec.outputs)
    for sample in model_config.warmup_samples(spec, model_dir):
        started = time.perf_counter()
        for index, backend in enumerate(backends):
            try:
                for _ in range(sample.count):
                    backend.execute(sample.inputs, outputs)
            except BackendExecuteError as exc:
                raise ModelConfigError(f"model_warmup {sample.name!r} failed on instance {index}: {exc}") from None
        log.info(
            "event=model_warmup model=%s version=%d sample=%s runs=%d instances=%d seconds=%.2f",
            name,
            number,
            sample.name,
            sample.count,
            len(backends),
            time.perf_counter() - started,
        )


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value
