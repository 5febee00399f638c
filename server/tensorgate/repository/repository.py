"""Loads, reloads and unloads models from the repository directory while the server runs.

Each model name has an entry with its served versions. A (re)load builds the new versions off the
event loop (loader.py), then swaps them in at once; versions it replaces stop taking requests, finish
the ones in flight and only then release their instances. One model failing to load never touches
another. Better engines are built in the background (upgrades.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from tensorgate import backends
from tensorgate.backends.base import BackendLoader, Engine
from tensorgate.errors import Code, InvalidArgument, NotFound, ServerError, Unavailable, clip
from tensorgate.model_config import RawConfig
from tensorgate.repository import layout
from tensorgate.repository.engine_plan import Capabilities
from tensorgate.repository.loader import Loader, expected, failure_reason
from tensorgate.repository.state import Fingerprint, IndexEntry, ModelEntry, ModelState, ModelVersion
from tensorgate.repository.upgrades import Upgrades, spawn
from tensorgate.settings import ControlMode, Settings

log = logging.getLogger(__name__)

# How Triton begins the error for a model or version that does not serve; clients match on it.
UNKNOWN_MODEL = "Request for unknown model: "


def version_number(name: str, version: str) -> int:
    """A request's version string as a number (INVALID_ARGUMENT, in Triton's words, if it is not one)."""
    try:
        return int(version)
    except ValueError:
        raise InvalidArgument(
            f"failed to get model version from specified version string '{clip(version)}' (model "
            f"'{clip(name)}'): versions are integers"
        ) from None


class RepositoryMissing(Exception):
    """The model repository does not exist (or is not a directory) where it must."""


class Repository:
    def __init__(
        self,
        settings: Settings,
        loaders: Mapping[Engine, BackendLoader] | None = None,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.root = Path(settings.model_repository)
        self.settings = settings
        self.loader = Loader(settings, dict(loaders or backends.loaders()), capabilities)
        self.upgrades = Upgrades(settings, self.loader, self._retire_one)
        self._entries: dict[str, ModelEntry] = {}
        self._poll_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._changes: set[asyncio.Task[None]] = set()  # loads and unloads in progress
        self._models_ready: bool | None = None  # all_ready() as last logged (--strict-readiness), from the start on

    # ---- lookups on the request path (event loop, no awaits) ----

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version that serves a request, or the error saying why not: Triton's codes and words
        (ModelLifeCycle::GetModel behind "Request for unknown model: ", which clients match on: NOT_FOUND for
        a model or version it does not know or a model with no ready version, UNAVAILABLE for a version it
        knows that is not ready; INVALID_ARGUMENT for a version that is not a number), with the reason after."""
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(
                f"{UNKNOWN_MODEL}'{clip(name)}' is not found (see RepositoryIndex for the models in the repository)"
            )
        if version:
            number = version_number(name, version)
            found = entry.versions.get(number)
            if found is None:
                if number in entry.failed_versions:
                    why = entry.failed_versions[number]
                    raise Unavailable(
                        f"{UNKNOWN_MODEL}'{name}' version {number} is not at ready state: it failed to load: {why}"
                    )
                served = sorted(entry.versions)
                raise NotFound(f"{UNKNOWN_MODEL}'{name}' version {clip(str(number))} is not found (served: {served})")
            if found.state is not ModelState.READY:
                raise Unavailable(
                    f"{UNKNOWN_MODEL}'{name}' version {number} is not at ready state ({found.state.value})"
                )
            return found
        versions = entry.versions
        if len(versions) == 1:  # the usual case, without building a list on every request
            (only,) = versions.values()
            if only.state is ModelState.READY:
                return only
        ready = [v for v in versions.values() if v.state is ModelState.READY]
        if not ready:
            state = entry.state.value if entry.state is not ModelState.UNKNOWN else "not loaded"
            why = f": {entry.reason}" if entry.reason else ""
            raise NotFound(f"{UNKNOWN_MODEL}'{name}' has no available versions (it is {state}{why})")
        return max(ready, key=lambda v: v.version)

    def is_ready(self, name: str, version: str = "") -> bool:
        if version:
            version_number(name, version)  # a version that is not a number is an error, as in Triton, not "not ready"
        try:
            self.get(name, version)
        except ServerError:
            return False
        return True

    def all_ready(self) -> bool:
        """Every model asked to load serves all its versions (explicitly unloaded ones aside): Triton's
        strict readiness."""
        return next(self._not_ready(), None) is None

    def _not_ready(self) -> Iterator[ModelEntry]:
        """The models that keep strict readiness false: asked to load (not unloaded) and not serving all
        their versions."""
        for entry in list(self._entries.values()):
            if entry.state is ModelState.UNAVAILABLE and entry.reason == "unloaded":
                continue
            if entry.state is not ModelState.READY or entry.failed_versions:
                yield entry

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
            # A version serving while its model's last reload failed says so (it keeps serving, as Triton).
            serving = f"the last reload failed and this version keeps serving: {entry.reload_error}"
            by_version = {n: (v.state.value, serving if entry.reload_error else "") for n, v in entry.versions.items()}
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
                # Unloading or unloaded: each version the unload took, in the model's state (as Triton lists them).
                for unloaded in [str(n) for n in entry.unloaded_versions] or [""]:
                    rows.append(IndexEntry(name, unloaded, entry.state.value, entry.reason))
        return rows

    # ---- lifecycle ----

    async def start(self) -> None:
        """Load the models the control mode says to load at start. RepositoryMissing if the
        repository is not a directory, except in poll mode (where it may appear later)."""
        mode = self.settings.model_control_mode
        if not self.root.is_dir():
            if mode is not ControlMode.POLL:
                raise RepositoryMissing(
                    f"the model repository {self.root} is not a directory (--model-repository); in poll mode a "
                    "repository that does not exist yet is waited for"
                )
            log.warning("event=repository_missing path=%s mode=poll", self.root)
        names = layout.model_names(self.root)
        if mode is ControlMode.EXPLICIT:
            wanted = self.settings.load_model
            names = names if "*" in wanted else [n for n in wanted]
        log.info("event=repository_scan path=%s mode=%s models=%s", self.root, mode.value, ",".join(names) or "-")
        results = await asyncio.gather(*(self.load(name) for name in names), return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, NotFound):  # other load failures are logged where they happen
                log.error("event=model_load_failed model=%s reason=%s", name, result.message)
            elif isinstance(result, Exception) and not isinstance(result, ServerError):
                log.error(
                    "event=model_load_failed model=%s reason=%s", name, f"internal error: {result!r}", exc_info=result
                )
        if mode is ControlMode.POLL:
            self._poll_task = asyncio.create_task(self._poll_forever(), name="repository-poll")
        if self.settings.strict_readiness:
            self._models_ready = not self.all_ready()  # so that the first note says where readiness starts
            self._note_readiness()

    def _note_readiness(self) -> None:
        """With --strict-readiness, log each change of whether every model asked to load serves, and why
        not: the pod leaves or rejoins its Service's endpoints on it, and the log should say so."""
        if self._models_ready is None:
            return
        ready = self.all_ready()
        if ready == self._models_ready:
            return
        self._models_ready = ready
        if ready:
            log.info("event=readiness_changed ready=true strict_readiness=true")
            return
        entry = next(self._not_ready())
        why = (
            entry.reason
            or entry.reload_error
            or "; ".join(f"version {v}: {r}" for v, r in entry.failed_versions.items())
        )
        log.warning(
            "event=readiness_changed ready=false strict_readiness=true model=%s reason=%s", entry.name, why or "-"
        )

    async def stop(self) -> None:
        self._models_ready = None  # the unloads of a stop are no change of readiness to report
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        self.upgrades.abandon()  # an engine still building is abandoned, not awaited
        if self._changes:  # a load or unload in progress ends first (its caller may have gone)
            await asyncio.gather(*self._changes, return_exceptions=True)
        await asyncio.gather(*(self.unload(name) for name in list(self._entries)), return_exceptions=True)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def load(self, name: str, override: RawConfig | None = None) -> None:
        """Load (or reload) a model from disk; raises ServerError if it cannot serve any version. The
        load runs to its end even if the caller goes (a client's deadline, a cancelled RPC): cut short,
        it would leave the model LOADING and its half-built instances behind."""
        await self._whole(self._load(name, override))

    async def unload(self, name: str) -> None:
        """Unload a model (nothing to do if it is not loaded): its versions finish the requests they hold,
        then release their instances. Runs to its end even if the caller goes, as :meth:`load`."""
        await self._whole(self._unload(name))

    async def _whole(self, change: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(change)
        self._changes.add(task)
        task.add_done_callback(self._changes.discard)
        task.add_done_callback(_settle_change)
        task.add_done_callback(lambda _: self._note_readiness())
        await asyncio.shield(task)

    async def _load(self, name: str, override: RawConfig | None = None) -> None:
        directory = layout.model_dir(self.root, name)
        if directory is None:
            raise NotFound(f"no model directory '{clip(name)}' in the repository {self.root}")
        entry = self._entries.setdefault(name, ModelEntry(name))
        async with entry.lock:
            if not entry.versions:
                entry.state, entry.reason = ModelState.LOADING, ""
            started = time.perf_counter()
            fingerprint = layout.fingerprint(directory)
            log.info("event=model_loading model=%s path=%s", name, directory)
            try:
                serving = {number: v.stats for number, v in entry.versions.items()}
                result = await asyncio.to_thread(self.loader.load_model, name, directory, override, serving)
            except Exception as exc:
                reason = failure_reason(exc)
                _load_failed(entry, fingerprint, reason, exc_info=not expected(exc))
                raise ServerError(f"load failed for model '{name}': {reason}", Code.INVALID_ARGUMENT) from None
            loaded, failed = result.loaded, result.failed
            if failed:
                # A model loads whole or not at all (Triton's model lifecycle: one version that fails aborts
                # the load and the versions it did load are released): unversioned requests never move to an
                # older version because the newest is broken. A reload leaves the versions serving in place.
                self._retire(loaded, "model_version_released")
                reason = "; ".join(f"version {v}: {r}" for v, r in sorted(failed.items()))
                kept = bool(entry.versions)
                _load_failed(entry, fingerprint, reason)
                # The index and requests to them say why each version not serving is not; one that keeps
                # serving is READY (its row says the reload failed), so strict readiness holds.
                released = {
                    v.version: f"the model's load failed, so this version was released ({reason})" for v in loaded
                }
                entry.failed_versions = {n: r for n, r in {**released, **failed}.items() if n not in entry.versions}
                raise ServerError(
                    f"load failed for model '{name}': {reason}"
                    + (" (the versions loaded before keep serving)" if kept else ""),
                    Code.INVALID_ARGUMENT,
                )
            old = entry.versions
            entry.reload_error = ""
            entry.unloaded_versions = ()
            entry.versions = {v.version: v for v in loaded}
            entry.failed_versions = {}
            entry.fingerprint = fingerprint
            entry.state, entry.reason = ModelState.READY, ""
            for v in loaded:
                log.info(
                    "event=model_ready model=%s version=%d engine=%s instances=%d max_batch_size=%d seconds=%.2f",
                    name,
                    v.version,
                    v.engine.value,
                    len(v.scheduler.instances),
                    v.spec.max_batch_size,
                    time.perf_counter() - started,
                )
            # A version the reload loaded again is replaced (it goes on serving), one it no longer serves unloaded.
            self._retire([v for v in old.values() if v.version in entry.versions], "model_version_replaced")
            self._retire([v for v in old.values() if v.version not in entry.versions])
            for v in loaded:
                self.upgrades.start(entry, v)

    async def _unload(self, name: str) -> None:
        entry = self._entries.get(name)
        if entry is None:  # never loaded, or not in the repository at all: nothing to do (as Triton)
            return
        async with entry.lock:
            retiring = list(entry.versions.values())
            if retiring:
                entry.unloaded_versions = tuple(sorted(entry.versions))
            entry.state, entry.reason = ModelState.UNLOADING, ""
            for v in retiring:
                v.state = ModelState.UNLOADING
            entry.versions = {}
            entry.failed_versions = {}
            await asyncio.gather(*(v.retire() for v in retiring))
            entry.state, entry.reason = ModelState.UNAVAILABLE, "unloaded"

    def _retire(self, old: Iterable[ModelVersion], event: str = "model_unloaded") -> None:
        for version in list(old):
            self._retire_one(version, event)

    def _retire_one(self, version: ModelVersion, event: str = "model_unloaded") -> None:
        spawn(version.retire(event), self._retiring)

    # ---- poll mode ----

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.poll_once()
            except Exception:
                log.exception("event=repository_poll_failed")

    def _scan(self) -> dict[str, Fingerprint]:
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


def _settle_change(task: asyncio.Task[None]) -> None:
    """A load or unload ended; its caller may have gone, so its error (already logged) is taken here."""
    if not task.cancelled():
        task.exception()


def _load_failed(entry: ModelEntry, fingerprint: Fingerprint, reason: str, exc_info: bool = False) -> None:
    """A (re)load that serves nothing new, logged: the versions serving before keep serving and the
    index says why their reload failed; with none, the model is UNAVAILABLE with the reason."""
    kept = ",".join(str(v) for v in sorted(entry.versions)) or "-"
    log.error(
        "event=model_load_failed model=%s reason=%s kept_versions=%s", entry.name, reason, kept, exc_info=exc_info
    )
    entry.fingerprint = fingerprint
    if entry.versions:
        entry.reload_error = reason
    else:
        entry.state, entry.reason = ModelState.UNAVAILABLE, reason
        entry.failed_versions = {}
        entry.unloaded_versions = ()
