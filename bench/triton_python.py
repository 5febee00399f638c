"""The Triton peers of bench/run.py, "Triton's Python path" in its two forms, serving the bench's models from
Python in ONNX Runtime with tensorgate's session settings:

- **Triton Python backend**: NVIDIA Triton Inference Server with a Python-backend model.py per model
  (bench/triton_python_model.py), what a Triton user writes to serve from Python;
- **PyTriton**: NVIDIA's PyTriton (bench/pytriton_server.py), an ``@batch`` Python function behind the same
  tritonserver, each batch handed from its backend stub to the function's process over shared memory.

Triton comes from scripts/install_triton_python.sh (the tritonserver PyPI's nvidia-pytriton carries, 2.51.0,
with a Python whose libpython and standard library match the backend stub's). The Python backend's models keep
the bench's config.pbtxt (max_batch_size, dims, one CPU instance, dynamic_batching) with ``backend: "python"``
and two parameters for model.py: the ONNX file and ONNX Runtime's intra-op thread count (cores / instances, as
tensorgate sets it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import make_models
from processes import Server, free_port
from settings import BENCH, ROOT

TOOLS = Path(os.environ.get("TENSORGATE_TOOLS_DIR", ROOT / ".tools")) / "triton_python"
TRITONSERVER = TOOLS / "tritonserver" / "bin" / "tritonserver"
INSTALL = ROOT / "scripts" / "install_triton_python.sh"
MODEL_PY = BENCH / "triton_python_model.py"
PYTRITON_SERVER = BENCH / "pytriton_server.py"
PEERS = ("Triton Python backend", "PyTriton")


def install() -> str:
    """Runs scripts/install_triton_python.sh (a no-op once installed); '' when Triton is ready, else why not."""
    proc = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not TRITONSERVER.exists():
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        return f"{INSTALL.name} failed (rc={proc.returncode}): " + " | ".join(lines[-3:])
    return ""


def write_repository(onnx_repo: Path, dest: Path, models: Sequence[str]) -> Path:
    """A Triton repository under ``dest`` serving ``models`` of the bench's repository from Python."""
    for model in models:
        config = (onnx_repo / model / "config.pbtxt").read_text()
        count = int(m[1]) if (m := re.search(r"count: (\d+)", config)) else 1
        threads = max(1, (os.cpu_count() or 1) // count)
        onnx_file = make_models.model_file(onnx_repo, make_models.MODELS[model].file).resolve()
        config = config.replace('backend: "onnxruntime"', 'backend: "python"')
        config += (
            f'parameters {{ key: "onnx_file" value {{ string_value: "{onnx_file}" }} }}\n'
            f'parameters {{ key: "intra_op_threads" value {{ string_value: "{threads}" }} }}\n'
        )
        version = dest / model / "1"
        version.mkdir(parents=True, exist_ok=True)
        (dest / model / "config.pbtxt").write_text(config)
        shutil.copy(MODEL_PY, version / "model.py")
    return dest


def _environment() -> dict[str, str]:
    """tritonserver's libraries, and the install's venv for the backend stub's imports (onnxruntime, numpy)."""
    site = (TOOLS / "venv" / "lib").glob("python3*/site-packages")
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(TOOLS / "libs"),
        "PYTHONPATH": os.pathsep.join(str(p) for p in site),
        "PATH": f"{TOOLS / 'venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("PYTHONHOME", None)
    return env


def start(peer: str, onnx_repo: Path, models: Sequence[str], tmp: Path) -> Server:
    """``peer`` (one of PEERS) serving ``models`` of the bench's repository on fresh loopback ports (metrics off).
    Neither directory may have a space in its path: the Python backend's stub then dies at load (``stol``)."""
    http_port = free_port()
    log_path = tmp / f"{peer.replace(' ', '_')}.log"
    if peer == "PyTriton":
        python = str(TOOLS / "venv" / "bin" / "python")
        return Server(
            lambda port: [python, str(PYTRITON_SERVER), str(onnx_repo), str(port), str(http_port), *models],
            log_path,
            env=_environment(),
        )
    repo = write_repository(onnx_repo, tmp / "triton_repo", models)
    return Server(
        lambda port: [
            str(TRITONSERVER),
            "--model-repository",
            str(repo),
            "--backend-directory",
            str(TOOLS / "tritonserver" / "backends"),
            "--grpc-address",
            "127.0.0.1",
            "--grpc-port",
            str(port),
            "--http-address",
            "127.0.0.1",
            "--http-port",
            str(http_port),
            "--allow-metrics",
            "false",
            "--log-verbose",
            "0",
        ],
        log_path,
        env=_environment(),
    )


def described() -> str:
    """What the install holds (its stamp: PyTriton's version, which carries tritonserver 2.51.0, ONNX Runtime's
    and the stub's Python's), for the run's header."""
    stamp = TOOLS / ".installed"
    return stamp.read_text().strip() if stamp.exists() else "not installed"
