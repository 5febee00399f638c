"""``tensorgate build``: engines built ahead of time, then exit with a status an init container can trust.

The real command runs here on the example repository (nothing to build on a CPU machine, and it must
say why). The builds themselves run with a slow-building stand-in for TensorRT (test_engines.py's),
through the same repository code the server uses: FP16 gate, build, outcome, exit status.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

from models import identity
from tensorgate.backends import onnxruntime_cpu
from tensorgate.backends.base import Engine, Precision
from tensorgate.build import build
from tensorgate.repository import Repository
from tensorgate.settings import Settings
from test_engines import GPU, RecordingEngine, SlowBuiltEngine, _matmul_model

ROOT = Path(__file__).resolve().parent.parent


def _build_command(repo: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """The real ``tensorgate build`` on ``repo``, with its engine cache in ``cache``."""
    return subprocess.run(
        [sys.executable, "-m", "tensorgate", "build", "--model-repository", str(repo)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TENSORGATE_ENGINE_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"},
    )


def test_build_on_a_cpu_machine_says_there_is_nothing_to_build(tmp_path: Path) -> None:
    done = _build_command(ROOT / "model_repo", tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout  # add_sub, identity, string_identity: one version each
    for line in lines:
        assert "nothing to build, serves on onnxruntime-cpu" in line and "tensorrt:" in line, line
    assert "event=build_finished ok=true" in done.stderr


def test_build_fails_when_a_model_cannot_load(tmp_path: Path) -> None:
    identity(tmp_path / "repo" / "good" / "1" / "model.onnx")
    (tmp_path / "repo" / "bad" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "bad" / "1" / "model.onnx").write_bytes(b"not onnx")
    done = _build_command(tmp_path / "repo", tmp_path / "cache")
    assert done.returncode == 1
    bad = [line for line in done.stdout.splitlines() if line.startswith("bad ")]
    assert bad and "UNAVAILABLE" in bad[0] and "model.onnx" in bad[0], done.stdout
    assert any(line.startswith("good 1: nothing to build") for line in done.stdout.splitlines())


def test_build_fails_when_the_repository_is_missing(tmp_path: Path) -> None:
    """A mistyped --model-repository in an init container: the build fails, naming the path, instead
    of building nothing and passing."""
    done = _build_command(tmp_path / "no-such-repo", tmp_path / "cache")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "no-such-repo is not a directory" in done.stdout, done.stdout


def _run_build(repo: Path, cache: Path, engine: type[SlowBuiltEngine]) -> tuple[int, str]:
    settings = Settings(model_repository=repo, engine_cache_dir=cache)

    def repository(s: Settings) -> Repository:
        return Repository(s, loaders={Engine.TENSORRT: engine, Engine.ORT_CPU: onnxruntime_cpu.load}, capabilities=GPU)

    out = io.StringIO()
    status = asyncio.run(build(settings, out, repository))
    return status, out.getvalue()


def test_build_waits_for_every_engine_and_reports_it(tmp_path: Path) -> None:
    _matmul_model(tmp_path / "repo" / "m" / "1" / "model.onnx", 0.25)
    RecordingEngine.built = []
    status, text = _run_build(tmp_path / "repo", tmp_path / "cache", RecordingEngine)
    assert status == 0, text
    assert text.startswith("m 1: built tensorrt (fp16) in "), text
    assert "replaced onnxruntime-cpu" in text
    (built_file, precision), *_ = RecordingEngine.built
    # The accepted FP16 graph stays in the cache for the server that starts next.
    assert precision is Precision.FP16
    assert built_file.is_relative_to(tmp_path / "cache" / "fp16") and built_file.is_file()


def test_a_failed_build_fails_the_command(tmp_path: Path) -> None:
    identity(tmp_path / "repo" / "m" / "1" / "model.onnx")

    class Failing(SlowBuiltEngine):
        build_seconds = 0.1
        fail = True

    status, text = _run_build(tmp_path / "repo", tmp_path / "cache", Failing)
    assert status == 1
    assert "m 1: tensorrt (fp16) build FAILED after" in text and "out of workspace memory" in text, text
