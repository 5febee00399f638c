"""The CPU container image, built by scripts/build_image.sh and run with podman, for real.

The module builds the image once (cold, the script first makes its Debian base image with
mmdebstrap), then runs it as Kubernetes would: model_repo/ mounted read-only at /models, a
read-only root file system, the ports published on loopback; it calls the server with tritonclient,
scrapes /metrics, probes grpc.health.v1 and stops it with SIGTERM. It is skipped only when podman is
missing and cannot be installed here (not root, no apt-get) or cannot run containers: the script
then exits 69 with the reason. Run it alone with ``pytest tests/test_image.py``.
The GPU target cannot be built here (TensorRT's wheels come only from NVIDIA's index, the CUDA image
from NVIDIA's registry): tests/test_protos.py lints it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import ROOT, free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

SCRIPT = ROOT / "scripts" / "build_image.sh"
TAG = "localhost/tensorgate:test"
EX_UNAVAILABLE = 69  # the script's status when podman is missing and cannot be installed, or cannot run
NO_PROXY = [("grpc.enable_http_proxy", 0)]  # loopback: never through an HTTP(S)_PROXY of the environment

# A cold build (apt-get, mmdebstrap, pip) takes one to three minutes on a small machine.
pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class Podman:
    """The podman command with the settings scripts/build_image.sh made (CONTAINERS_CONF)."""

    env: dict[str, str]

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {shlex.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done

    def inspect(self, what: str, name: str) -> dict[str, Any]:
        data = json.loads(self(what, "inspect", name).stdout)
        assert isinstance(data, list) and len(data) == 1, data
        return dict(data[0])


def script(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode == EX_UNAVAILABLE:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "podman is unavailable"
        pytest.skip(f"no container engine: {reason}")
    assert done.returncode == 0, f"build_image.sh {shlex.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def podman() -> Podman:
    """Installs podman if it must (and may), writes its settings, and returns the command with them."""
    env = dict(os.environ)
    done = script("--print-env", env=env, timeout=600)
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            env[name] = value
    assert "CONTAINERS_CONF" in env, done.stdout + done.stderr
    return Podman(env)


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    start = time.monotonic()
    done = script("--tag", TAG, env=podman.env, timeout=840)
    print(f"image {TAG} built in {time.monotonic() - start:.0f} s\n{done.stderr[-2000:]}")
    return TAG


class Container:
    """A detached container of the image; gRPC and metrics published on free loopback ports."""

    def __init__(self, podman: Podman, image: str, *podman_args: str) -> None:
        self.podman = podman
        self.name = f"tensorgate-test-{uuid.uuid4().hex[:10]}"
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self.url = f"127.0.0.1:{self.grpc_port}"
        podman(
            "run", "--detach", "--name", self.name,
            "--volume", f"{ROOT / 'model_repo'}:/models:ro",
            "--publish", f"127.0.0.1:{self.grpc_port}:8001", "--publish", f"127.0.0.1:{self.metrics_port}:8002",
            *podman_args, image,
        )  # fmt: skip
        self.client = grpcclient.InferenceServerClient(self.url, channel_args=NO_PROXY)

    def state(self) -> dict[str, Any]:
        return dict(self.podman.inspect("container", self.name)["State"])

    def logs(self) -> str:
        done = self.podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if not state["Running"]:
                raise AssertionError(f"container exited with {state['ExitCode']}:\n{self.logs()}")
            try:
                if self.client.is_server_ready():
                    return
            except Exception:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.logs()}")

    def remove(self) -> None:
        self.client.close()
        self.podman("rm", "--force", "--volumes", self.name, check=False)


@pytest.fixture(scope="module")
def server(podman: Podman, image: str) -> Iterator[Container]:
    # As a pod with readOnlyRootFilesystem: nothing writable but the /cache volume (no tmpfs either).
    container = Container(podman, image, "--read-only", "--read-only-tmpfs=false")
    try:
        container.wait_ready()
        yield container
    finally:
        container.remove()


def infer_add_sub(client: grpcclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.full_like(a, 2.0)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "FP32"), grpcclient.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_image_config(podman: Podman, image: str) -> None:
    info = podman.inspect("image", image)
    config = info["Config"]
    assert config.get("User") == "1000", config
    assert config.get("Entrypoint") == ["tensorgate", "serve"]
    assert not config.get("Cmd")
    assert set(config.get("ExposedPorts") or {}) == {"8000/tcp", "8001/tcp", "8002/tcp"}
    assert set(config.get("Volumes") or {}) == {"/cache"}
    assert not config.get("Healthcheck") and not info.get("HealthCheck")
    assert not re.search(r"^\s*HEALTHCHECK\b", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    assert env["TENSORGATE_MODEL_REPOSITORY"] == "/models"
    assert env["TENSORGATE_ENGINE_CACHE_DIR"] == "/cache"
    assert not [name for name in env if name.startswith("PIP_") or name.lower().endswith("_proxy")], env


# Run inside the image (its venv's python): who runs, what /cache allows, and what the build left.
PROBE = """
import json, os
found = []
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ("/proc", "/sys", "/dev")]
    found += [os.path.join(top, f) for f in files if f == "pip.conf" or f.endswith(".pip.conf")]
cache_writable = os.access("/cache", os.W_OK)
print(json.dumps({"uid": os.getuid(), "cache_writable": cache_writable, "pip_conf": found,
                  "opt": sorted(os.listdir("/opt")), "mnt": sorted(os.listdir("/mnt")),
                  "cache_owner": os.stat("/cache").st_uid, "models": os.path.isdir("/models")}))
"""


def test_image_runs_as_uid_1000_and_keeps_nothing_of_the_build_host(podman: Podman, image: str) -> None:
    """The build's pip configuration, CA bundle and local indexes were mounted, never copied."""
    done = podman("run", "--rm", "--entrypoint", "python3", image, "-c", PROBE)
    probe = json.loads(done.stdout)
    assert probe["uid"] == 1000 and probe["cache_owner"] == 1000 and probe["cache_writable"], probe
    assert probe["models"], probe
    assert probe["pip_conf"] == [], probe
    assert probe["opt"] == ["tensorgate"], probe
    assert probe["mnt"] == [], probe


def test_serves_tritonclient(server: Container) -> None:
    assert server.client.is_server_live()
    assert server.client.is_model_ready("add_sub")
    assert {m.name for m in server.client.get_model_repository_index().models} >= {"add_sub", "identity"}
    infer_add_sub(server.client)


def test_metrics_count_the_request(server: Container) -> None:
    infer_add_sub(server.client)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{") and 'model="add_sub"' in line
    ]
    assert counts and counts[0] >= 1, [line for line in text.splitlines() if "request_success" in line]


def test_health_service_serving(server: Container) -> None:
    with grpc.insecure_channel(server.url, options=NO_PROXY) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_sigterm_stops_it_with_status_0(podman: Podman, image: str) -> None:
    """The server is PID 1: SIGTERM reaches it, it drains, unloads and exits 0 (as on a pod's deletion)."""
    container = Container(podman, image)
    try:
        container.wait_ready()
        infer_add_sub(container.client)
        start = time.monotonic()
        podman("kill", "--signal", "TERM", container.name)
        waited = podman("wait", container.name, timeout=60)
        elapsed = time.monotonic() - start
        state = container.state()
        logs = container.logs()
        assert waited.stdout.strip() == "0" and state["ExitCode"] == 0, f"{state}\n{logs}"
        assert not state["OOMKilled"], state
        assert "event=signal_received signal=SIGTERM" in logs and "event=shutdown_complete" in logs, logs
        assert elapsed < 30, f"took {elapsed:.1f} s to stop"
    finally:
        container.remove()
