"""The engine cache: keys that change with everything that invalidates a plan, atomic writes,
and corrupt or foreign entries rebuilt rather than fatal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tensorgate.backends.tensorrt.cache import CacheKey, EngineCache, Profile

KEY = CacheKey(
    model_sha256=CacheKey.hash_model(b"model bytes"),
    tensorrt_version="10.13.3",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
    precision="fp16",
    profiles=(Profile({"INPUT0": ((1, 16), (8, 16), (64, 16))}),),
    builder_options={"workspace_bytes": 1 << 30, "timing_cache": True},
)


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": CacheKey.hash_model(b"other model")},
        {"tensorrt_version": "11.4.0"},
        {"gpu_name": "NVIDIA L4"},
        {"compute_capability": "8.9"},
        {"precision": "fp32"},
        {"profiles": (Profile({"INPUT0": ((1, 16), (16, 16), (64, 16))}),)},
        {"builder_options": {"workspace_bytes": 1 << 31, "timing_cache": True}},
    ],
)
def test_every_field_changes_the_key(change: dict[str, object]) -> None:
    assert dataclasses.replace(KEY, **change).digest != KEY.digest  # type: ignore[arg-type]


def test_key_is_stable_and_order_free() -> None:
    same = dataclasses.replace(KEY, builder_options={"timing_cache": True, "workspace_bytes": 1 << 30})
    assert same.digest == KEY.digest


def test_round_trip_and_miss(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    assert cache.load(KEY) is None
    path = cache.store(KEY, b"\x00plan bytes\xff")
    assert path.parent == tmp_path / "engines"
    assert cache.load(KEY) == b"\x00plan bytes\xff"
    assert cache.load(dataclasses.replace(KEY, precision="fp32")) is None
    assert not list((tmp_path / "engines").glob(".*.tmp")), "temporary files left behind"


def test_corrupt_plan_is_discarded_for_rebuild(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = EngineCache(tmp_path)
    plan_path = cache.store(KEY, b"a" * 1000)
    plan_path.write_bytes(b"a" * 10)  # truncated
    assert cache.load(KEY) is None
    assert not plan_path.exists()
    assert "checksum mismatch" in caplog.text
    cache.store(KEY, b"rebuilt")
    assert cache.load(KEY) == b"rebuilt"


def test_entry_written_for_another_key_is_discarded(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    plan_path = cache.store(KEY, b"plan")
    meta = plan_path.with_suffix(".json")
    meta.write_text(meta.read_text().replace("fp16", "int8"))
    assert cache.load(KEY) is None and not meta.exists()


def test_unreadable_metadata_is_a_miss(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    plan_path = cache.store(KEY, b"plan")
    plan_path.with_suffix(".json").write_text("{not json")
    assert cache.load(KEY) is None
