"""What the repository keeps of each model: its entry, its served versions, their states."""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tensorgate.backends.base import Engine, Precision
from tensorgate.model_config import ModelSpec, RawConfig
from tensorgate.repository.engine_plan import Candidate, PassedOver
from tensorgate.scheduler import Scheduler
from tensorgate.stats import ModelStats

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    """Triton's model states as RepositoryIndex reports them."""

    UNKNOWN = "UNKNOWN"
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class ModelSource:
    """What a version was loaded from: what a background build of a better engine starts from."""

    model_file: Path  # <model>/<version>/model.onnx, or <model>/<version>/model.onnx/model.onnx (Triton's form)
    raw: RawConfig
    model_dir: Path  # <model>/ (where warmup/ is)


@dataclass
class ModelVersion:
    """One served version: its spec, the engine that runs it and its scheduler."""

    name: str
    version: int
    spec: ModelSpec
    engine: Engine
    scheduler: Scheduler
    source: ModelSource
    state: ModelState = ModelState.READY
    precision: Precision = Precision.FP32  # what the engine computes in
    device: str = "cpu"  # where: "cpu" or "cuda:N"
    load_seconds: float = 0.0  # the load of this version: engine, instances, warmup
    # Better engines still to build in the background (best first), and those not tried, with why.
    upgrades: tuple[Candidate, ...] = ()
    passed_over: tuple[PassedOver, ...] = ()

    @property
    def stats(self) -> ModelStats:
        """The version's statistics (the scheduler records them; they follow it across an engine switch)."""
        return self.scheduler.stats

    async def retire(self, event: str = "model_unloaded") -> None:
        """Finish the requests it holds and release its instances; logged as ``event`` (a version a failed
        load built and drops is not the one that serves: ``model_version_released``)."""
        self.state = ModelState.UNLOADING
        await self.scheduler.close()
        self.state = ModelState.UNAVAILABLE
        log.info("event=%s model=%s version=%d", event, self.name, self.version)


@dataclass(frozen=True)
class BuildOutcome:
    """One background engine build: what it built and whether the version moved to it."""

    model: str
    version: int
    engine: Engine
    precision: Precision
    built: bool
    detail: str  # why it failed, or what it replaced
    seconds: float


Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class ModelEntry:
    """A model name: its served versions, or why it has none."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    state: ModelState = ModelState.UNKNOWN
    reason: str = ""
    failed_versions: dict[int, str] = field(default_factory=dict)
    reload_error: str = ""  # why the last reload failed while earlier versions kept serving
    unloaded_versions: tuple[int, ...] = ()  # the versions an unload took away, listed in the index (as Triton)
    fingerprint: Fingerprint = ()
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str
