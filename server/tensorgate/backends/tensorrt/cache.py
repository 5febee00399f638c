"""On-disk cache of built engines (TensorRT plans), keyed by everything that invalidates one.

A plan is only valid for the exact model bytes, TensorRT version, GPU (name and compute
capability), precision, optimization profiles and builder options it was built with, so the key
hashes all of them. Each entry is two files: ``<digest>.plan`` and ``<digest>.json`` (the key in
clear, and the plan's own SHA-256). Both are written to a temporary name in the same directory and
renamed into place (``atomic_write``), so a reader never sees half a file; an entry is read and
written under its own lock (``locked``: a thread lock and an flock on a lock file, so another
process sharing the cache volume, e.g. ``tensorgate build`` in an init container, is excluded too),
so a reader never sees a new plan with the old metadata. A plan whose checksum or key does not
match is deleted and reported as a miss, so the caller rebuilds instead of failing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout of the cache itself changes

Shapes = Mapping[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
"""min/opt/max shape of each input (batch dimension included)."""


@dataclass(frozen=True)
class Profile:
    """One optimization profile: min/opt/max shape of each input (batch dimension included)."""

    shapes: Shapes

    def as_json(self) -> dict[str, list[list[int]]]:
        return {name: [list(s) for s in triple] for name, triple in sorted(self.shapes.items())}


@dataclass(frozen=True)
class CacheKey:
    model_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profiles: tuple[Profile, ...] = ()
    builder_options: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    @staticmethod
    def hash_model(model_bytes: bytes) -> str:
        return hashlib.sha256(model_bytes).hexdigest()

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["profiles"] = [p.as_json() for p in self.profiles]
        data["builder_options"] = dict(sorted(self.builder_options.items()))
        data["format"] = FORMAT
        return data

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class EngineCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _paths(self, key: CacheKey) -> tuple[Path, Path]:
        return self.directory / f"{key.digest}.plan", self.directory / f"{key.digest}.json"

    def load(self, key: CacheKey) -> bytes | None:
        """The cached plan for ``key``, or None (absent, corrupt or written for another key)."""
        plan_path, meta_path = self._paths(key)
        if not plan_path.is_file() or not meta_path.is_file():
            return None
        with locked(self.directory / key.digest):
            return self._load(key, plan_path, meta_path)

    def _load(self, key: CacheKey, plan_path: Path, meta_path: Path) -> bytes | None:
        if not plan_path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            plan = plan_path.read_bytes()
        except (OSError, ValueError) as exc:
            self._discard(key, f"unreadable: {exc}")
            return None
        if meta.get("key") != key.as_json():
            self._discard(key, "written for a different key")
            return None
        if meta.get("plan_sha256") != hashlib.sha256(plan).hexdigest():
            self._discard(key, "plan checksum mismatch (truncated or corrupt)")
            return None
        return plan

    def store(self, key: CacheKey, plan: bytes) -> Path:
        """Write a plan atomically; returns its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        plan_path, meta_path = self._paths(key)
        meta = {"key": key.as_json(), "plan_sha256": hashlib.sha256(plan).hexdigest(), "plan_bytes": len(plan)}
        with locked(self.directory / key.digest):
            atomic_write(plan_path, plan)
            atomic_write(meta_path, json.dumps(meta, indent=2, sort_keys=True).encode())
        return plan_path

    def _discard(self, key: CacheKey, why: str) -> None:
        log.warning("event=engine_cache_discarded digest=%s reason=%s next=rebuild", key.digest, why)
        for path in self._paths(key):
            path.unlink(missing_ok=True)


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Exclusive use of ``path`` (an entry, the timing cache): among this process's threads, and
    among processes through an flock on ``.<name>.lock`` beside it. Where that file cannot be
    created (a read-only cache volume, which nobody can be writing either) the thread lock alone."""
    with _THREAD_LOCKS_GUARD:
        lock = _THREAD_LOCKS.setdefault(str(path), threading.Lock())
    with lock:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path.parent / f".{path.name}.lock", "a+b")  # noqa: SIM115 (closed below)
        except OSError:
            yield
            return
        with handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file in ``path``'s directory, flush it to disk and rename it
    over ``path``: a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
