"""What a model repository holds on disk: model directories, version directories, fingerprints.

Only names read from the repository directory itself are ever turned into paths, so a name sent
by a client cannot reach outside it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Triton's ONNX Runtime backend (src/onnxruntime.cc, ModelState::LoadModel): when the model path
# <version>/<default_model_filename> is a directory, the model is <that directory>/model.onnx (the
# layout of a model with external data, which ONNX Runtime reads relative to the model file).
MODEL_IN_DIRECTORY = "model.onnx"

# Subdirectories of a model directory that are not version directories and need no word: the
# model_warmup data files (model_config/warmup.py). Triton also passes over "initial_state" and
# "configs" in silence; tensorgate reads neither, so those are named like any other.
NOT_VERSIONS = ("warmup",)
_VERSION = re.compile(r"[0-9]+")
_MAX_VERSION = 2**63 - 1  # versions are int64 in Triton's protocol

_reported_lock = threading.Lock()
_reported: set[tuple[str, str]] = set()


def skip_reason(name: str) -> str | None:
    """Why the repository entry ``name`` is not served as a model, or None if it is.

    Triton serves every directory of the repository whatever its name ("resnet50+fp16", "bert@v2",
    non-ASCII names alike). tensorgate passes over hidden directories (".git",
    ".ipynb_checkpoints", which Triton would try and fail to load), names that are not valid UTF-8
    (the protocols carry names as UTF-8 strings) and names with control characters (they would
    break the one-line logs)."""
    if name.startswith("."):
        return "hidden directory (its name starts with '.')"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8, which the gRPC and HTTP protocols need"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "the name has a control character"
    return None


def model_names(root: Path) -> list[str]:
    """Directories directly under the repository that are models, sorted. Each directory that is
    not is logged once, with the reason."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    names: list[str] = []
    for entry in entries:
        if not entry.is_dir():
            continue
        reason = skip_reason(entry.name)
        if reason is None:
            names.append(entry.name)
        else:
            _report_skipped(root, entry.name, reason)
    return sorted(names)


def _report_skipped(root: Path, name: str, reason: str) -> None:
    """Log a skipped model directory the first time it is seen (the repository is scanned on every
    index request and poll)."""
    key = (str(root), name)
    with _reported_lock:
        if key in _reported:
            return
        _reported.add(key)
    log.warning("event=model_dir_skipped path=%s name=%s reason=%s", root, name, reason)


def model_dir(root: Path, name: str) -> Path | None:
    """The directory of model ``name`` if it is one of the repository's own model entries, else None."""
    if not name or name not in model_names(root):
        return None
    return root / name


@dataclass(frozen=True)
class VersionDirs:
    """The version directories of a model directory, and the other subdirectories with why they are not."""

    versions: dict[int, Path] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)  # name -> reason


def version_dirs(directory: Path) -> VersionDirs:
    """Triton's version directories (model_lifecycle.cc, VersionsToLoad): subdirectories named by a
    positive integer written canonically; "01" is ignored with a warning in Triton, so that it can
    neither serve as version 1 nor replace "1". Files are not looked at."""
    versions: dict[int, Path] = {}
    ignored: dict[str, str] = {}
    for entry in os.scandir(directory):
        if not entry.is_dir() or entry.name in NOT_VERSIONS:
            continue
        name = entry.name
        if not _VERSION.fullmatch(name):
            ignored[name] = "not a version number"
        elif len(name) > 1 and name.startswith("0"):
            ignored[name] = "the version number has leading zeros (as Triton, it is not a version directory)"
        elif int(name) == 0:
            ignored[name] = "version 0: versions are positive integers"
        elif int(name) > _MAX_VERSION:
            ignored[name] = f"the version number is above {_MAX_VERSION}"
        else:
            versions[int(name)] = Path(entry.path)
    return VersionDirs(versions, ignored)


def model_file(version_dir: Path, filename: str) -> Path:
    """The model file of a version: ``<version>/<filename>``, or, if that is a directory,
    ``<version>/<filename>/model.onnx`` (Triton's ONNX Runtime backend)."""
    path = version_dir / filename
    return path / MODEL_IN_DIRECTORY if path.is_dir() else path


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of everything in a model directory: changes when any
    file is added, removed or rewritten, or a directory (an empty version directory too) comes or goes."""
    items: list[tuple[str, int, int]] = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        items.extend((os.path.relpath(os.path.join(dirpath, d), directory) + os.sep, 0, 0) for d in dirnames)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            items.append((os.path.relpath(path, directory), st.st_size, st.st_mtime_ns))
    return tuple(items)
