"""The engine cache: keys that change with everything that invalidates a plan, atomic writes,
entries read and written under a lock (threads and processes), and corrupt or foreign entries
rebuilt rather than fatal."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tensorgate.backends.tensorrt.cache import CacheKey, EngineCache, Profile, atomic_write, locked

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


def test_readers_never_see_a_plan_with_another_writes_metadata(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plan and its metadata are two files; without the entry's lock a reader between the two
    renames sees a new plan with the old checksum and deletes a good entry as corrupt."""
    cache = EngineCache(tmp_path)
    plans = [b"a" * 100_000, b"b" * 200_000]
    cache.store(KEY, plans[0])
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            cache.store(KEY, plans[i % 2])
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = [cache.load(KEY) for _ in range(300)]
    finally:
        stop.set()
        writer.join()
    assert all(plan in plans for plan in seen)
    assert "engine_cache_discarded" not in caplog.text


def test_the_lock_excludes_another_process(tmp_path: Path) -> None:
    """Another process holds the lock until told to let go: this one gets it only after that (a correct lock
    can never be taken meanwhile, whatever the machine's speed)."""
    target = tmp_path / "timing.cache"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from tensorgate.backends.tensorrt.cache import locked\n"
            f"with locked(Path({str(target)!r})):\n    print('held', flush=True); sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    taken = threading.Event()

    def take() -> None:
        with locked(target):
            taken.set()

    taker = threading.Thread(target=take)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        taker.start()
        assert not taken.wait(0.5), "the lock was taken while another process held it"
        assert holder.stdin is not None
        holder.stdin.write("let go\n")
        holder.stdin.flush()
        assert taken.wait(30), "the lock was not taken once the other process let go"
    finally:
        if holder.poll() is None and not taken.is_set():
            holder.kill()  # a failed check left it waiting for the word: its death frees the lock
        holder.wait(10)
        taker.join(30)


def test_atomic_write_replaces_whole_files_only(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "timing.cache"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["timing.cache"]


def test_a_cache_that_cannot_be_written_serves_the_engine_built_uncached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache volume this user cannot write (an NFS or SMB share mounted without fsGroup): the engine
    just built is served, the failure logged, instead of the build (minutes on a GPU) failing. Here the
    build itself is replaced by a function returning bytes: no TensorRT runs."""
    from tensorgate.backends.tensorrt import build

    monkeypatch.setattr(build, "build_plan", lambda *args, **kwargs: b"built plan")
    (tmp_path / "not-a-directory").write_bytes(b"")
    cache = EngineCache(tmp_path / "not-a-directory" / "engines")
    with caplog.at_level("WARNING"):
        plan = build.load_or_build("m", tmp_path / "model.onnx", KEY, {}, build.BuildOptions(), cache, 0)
    assert plan == b"built plan"
    assert (
        "event=engine_cache_write_failed model=m" in caplog.text and "serve the engine built, uncached" in caplog.text
    )
