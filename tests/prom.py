"""A real Prometheus server for the tests (Debian's package: scripts/install_prometheus.sh), and its
HTTP query API."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from conftest import free_port

PROMETHEUS = shutil.which("prometheus")


@contextlib.contextmanager
def running_prometheus(
    work: Path,
    metrics_port: int,
    rule_files: Sequence[Path] = (),
    labels: Mapping[str, str] | None = None,
    job: str = "tensorgate",
) -> Iterator[str]:
    """Prometheus scraping 127.0.0.1:``metrics_port`` every second (job ``job``, target ``labels``
    added to every series, as service discovery would), evaluating ``rule_files``; yields its URL.
    Its log is ``work/log``."""
    assert PROMETHEUS is not None
    config = work / "prometheus.yml"
    target = {"targets": [f"127.0.0.1:{metrics_port}"], "labels": dict(labels or {})}
    settings: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": job, "static_configs": [target]}],
    }
    if rule_files:
        settings["rule_files"] = [str(p) for p in rule_files]
    config.write_text(json.dumps(settings))  # JSON is YAML
    port = free_port()
    with (work / "log").open("wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(20)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result (the query must succeed; the result may be empty)."""
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}", timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]
