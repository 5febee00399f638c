"""Triton's own load generator, perf_analyzer, runs against the server with zero errors."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, Server

PERF_ANALYZER = ROOT / "scripts" / "perf_analyzer"


def _installed() -> bool:
    return subprocess.run([str(PERF_ANALYZER), "--version"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    not _installed(), reason="perf_analyzer is not installed (scripts/install_perf_analyzer.sh; x86_64 only)"
)


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("identity", []),
        ("add_sub", ["-b", "2"]),
        ("add_sub", ["--streaming"]),  # ModelStreamInfer
        ("string_identity", ["--string-length", "12"]),
        # Triton's system shared memory extension: inputs and outputs in regions perf_analyzer registers
        ("identity", ["--shared-memory", "system"]),
        ("add_sub", ["--shared-memory", "system", "-b", "2"]),
        (
            "string_identity",
            ["--string-length", "12", "--shared-memory", "system", "--output-shared-memory-size", "256"],
        ),
    ],
)
def test_perf_analyzer_runs_without_errors(tmp_path: Path, server: Server, model: str, extra: list[str]) -> None:
    report = tmp_path / "report.csv"
    registered_before = server.log.count("event=shm_registered")
    result = subprocess.run(
        [
            str(PERF_ANALYZER),
            "-i",
            "grpc",
            "-u",
            server.url,
            "-m",
            model,
            "--concurrency-range",
            "1:4:3",
            "-p",
            "500",
            "-s",  # the stability criterion off: this checks answers and errors, not the machine's steadiness
            "999",
            "-r",
            "6",
            "-f",
            str(report),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = list(csv.DictReader(report.open()))
    assert sorted(r["Concurrency"] for r in rows) == ["1", "4"]  # perf_analyzer may write them in any order
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    stats = server.client.get_inference_statistics(model).model_stats[0]
    assert stats.inference_stats.fail.count == 0
    assert stats.inference_stats.success.count > 0
    assert server.client.get_system_shared_memory_status(as_json=True) == {}  # perf_analyzer unregisters its own
    registered = server.log.count("event=shm_registered") - registered_before
    assert registered >= 2 if "--shared-memory" in extra else registered == 0  # an input and an output at least
