"""What a model repository holds on disk: model directories, version directories, fingerprints.

Only names read from the repository directory itself are ever turned into paths, so a name sent
by a client cannot reach outside it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_VALID_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")


def valid_model_name(name: str) -> bool:
    return bool(_VALID_NAME.fullmatch(name)) and name not in (".", "..")


def model_names(root: Path) -> list[str]:
    """Directories directly under the repository that can be models, sorted."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if e.is_dir() and valid_model_name(e.name))


def model_dir(root: Path, name: str) -> Path | None:
    """The directory of model ``name`` if it is one of the repository's own entries, else None."""
    if not valid_model_name(name) or name not in model_names(root):
        return None
    return root / name


def version_dirs(directory: Path) -> dict[int, Path]:
    """Numeric subdirectories (Triton's version directories); other entries are ignored."""
    versions: dict[int, Path] = {}
    for entry in os.scandir(directory):
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0:
            versions[int(entry.name)] = Path(entry.path)
    return versions


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
