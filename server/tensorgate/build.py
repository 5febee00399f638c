"""``tensorgate build``: build and cache every model's engines ahead of time, then exit.

For an init container (or a CI step) next to the server: it loads the repository exactly as
``tensorgate serve`` would (same flags, same ``TENSORGATE_*`` environment), runs every background
build the server would start (FP16 conversion and accuracy gate, then the engine) to its end,
writes what it built to the engine cache, and prints one line per model version. A server started
afterwards with the same cache finds the engines built and starts on them at once.

Exit status: 0 when every model loaded and every build succeeded (also when this machine has
nothing to build: the lines say why), 1 when a model failed to load or a build failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TextIO

from tensorgate.repository import Repository, RepositoryMissing
from tensorgate.settings import Settings

log = logging.getLogger(__name__)


async def build(settings: Settings, out: TextIO, repository: Callable[[Settings], Repository] = Repository) -> int:
    repo = repository(settings)
    try:
        await repo.start()
    except RepositoryMissing as exc:
        log.error("event=build_failed reason=%s", str(exc))
        print(f"tensorgate build: {exc}", file=out)
        return 1
    await repo.upgrades.wait()
    failed = False
    lines: list[str] = []
    for row in repo.index():
        if row.state not in ("READY", ""):  # "": not asked to load (explicit mode)
            failed = True
            lines.append(f"{row.name} {row.version or '-'}: {row.state}: {row.reason}")
    for version in sorted(repo.ready_versions(), key=lambda v: (v.name, v.version)):
        key = f"{version.name} {version.version}"
        builds = [b for b in repo.upgrades.builds if (b.model, b.version) == (version.name, version.version)]
        for b in builds:
            what = f"{b.engine.value} ({b.precision.value})"
            if b.built:
                lines.append(f"{key}: built {what} in {b.seconds:.1f} s, {b.detail}")
            else:
                failed = True
                lines.append(f"{key}: {what} build FAILED after {b.seconds:.1f} s: {b.detail}")
        if not builds:
            skipped = "; ".join(f"{engine.value}: {why}" for engine, why in version.passed_over)
            lines.append(
                f"{key}: nothing to build, serves on {version.engine.value}" + (f" ({skipped})" if skipped else "")
            )
    await repo.stop()
    for line in lines:
        print(line, file=out)
    log.info("event=build_finished ok=%s cache=%s", str(not failed).lower(), settings.engine_cache_dir)
    return 1 if failed else 0
