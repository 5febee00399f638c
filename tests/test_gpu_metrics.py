"""The nv_gpu_* gauges on a real GPU (skipped with the reason without one): what /metrics says of
each GPU matches what NVML says directly."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, wait_for
from tensorgate.repository.engine_plan import Capabilities

CAPS = Capabilities.detect()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CAPS.gpus, reason=f"no GPU: {CAPS.no_gpu_reason}")]


def test_gpu_gauges_match_nvml(tmp_path: Path, start_server) -> None:  # type: ignore[no-untyped-def]
    import pynvml

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repo", repo)
    server = start_server(repo, "--metrics-interval-ms", "200")

    def with_gpu_gauges() -> str:
        text = server.exposition()
        return text if "nv_gpu_utilization" in text else ""

    text = wait_for(with_gpu_gauges, 10)
    pynvml.nvmlInit()
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            total = float(re.search(rf'nv_gpu_memory_total_bytes{{gpu_uuid="{uuid}"}} (\S+)', text).group(1))  # type: ignore[union-attr]
            assert total == pynvml.nvmlDeviceGetMemoryInfo(handle).total
            util = float(re.search(rf'nv_gpu_utilization{{gpu_uuid="{uuid}"}} (\S+)', text).group(1))  # type: ignore[union-attr]
            assert 0.0 <= util <= 1.0
            limit = float(re.search(rf'nv_gpu_power_limit{{gpu_uuid="{uuid}"}} (\S+)', text).group(1))  # type: ignore[union-attr]
            assert limit == pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000
            assert f'nv_energy_consumption{{gpu_uuid="{uuid}"}}' in text
    finally:
        pynvml.nvmlShutdown()
