"""model_warmup: the samples each instance runs before its version is READY."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorgate import datatypes
from tensorgate.errors import ModelConfigError
from tensorgate.model_config.spec import ModelSpec
from tensorgate.proto import model_config_pb2 as mc

# What a config (config.pbtxt, or a load request's override) may make the server allocate and run
# for warmup: a config is input too, and one sent over the wire must not exhaust the host.
MAX_WARMUP_BYTES = 2**30  # all samples' inputs together
MAX_WARMUP_COUNT = 1000  # runs of one sample on each instance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmupSample:
    name: str
    inputs: dict[str, np.ndarray]
    count: int  # how many times each instance runs it


def warmup_samples(spec: ModelSpec, model_dir: Path) -> list[WarmupSample]:
    """The model_warmup samples of a spec, ready to execute. Data files are read from
    ``<model>/warmup/`` and hold one sample, repeated over ``batch_size`` rows (Triton's layout); random
    data is seeded, so every instance warms up on the same values. A sample of batch_size 0 is skipped,
    as Triton skips it."""
    rng = np.random.default_rng(0)
    samples: list[WarmupSample] = []
    total_bytes = 0
    for warmup in spec.config.model_warmup:
        if warmup.batch_size == 0:
            log.info("event=warmup_sample_skipped model=%s sample=%s reason=%s", spec.name, warmup.name, "batch_size 0")
            continue
        rows = warmup.batch_size
        if spec.batched and rows > spec.max_batch_size:
            raise ModelConfigError(f"model_warmup {warmup.name!r}: batch_size {rows} exceeds max_batch_size")
        if warmup.count > MAX_WARMUP_COUNT:
            raise ModelConfigError(
                f"model_warmup {warmup.name!r}: count {warmup.count} is above the {MAX_WARMUP_COUNT} runs a "
                "sample may take; warm up with fewer runs"
            )
        arrays: dict[str, np.ndarray] = {}
        for name, sample in warmup.inputs.items():
            tensor = spec.inputs.get(name)
            if tensor is None:
                raise ModelConfigError(f"model_warmup {warmup.name!r} names input {name!r}, which the model lacks")
            shape = ((rows,) if spec.batched else ()) + tuple(sample.dims)
            if any(d < 0 for d in shape):
                raise ModelConfigError(f"model_warmup {warmup.name!r} input {name!r}: dims {list(sample.dims)} < 0")
            dtype = tensor.datatype
            given = mc.DataType.Name(sample.data_type) if sample.data_type in mc.DataType.values() else ""
            if given != dtype.config:
                # Triton makes the sample of the type it names, and the model refuses it, failing the load.
                raise ModelConfigError(
                    f"model_warmup {warmup.name!r} input {name!r}: data_type {given or sample.data_type} is not the "
                    f"input's {dtype.config}"
                )
            which = sample.WhichOneof("input_data_type")
            count = math.prod(shape)  # Python integers: no silent overflow
            total_bytes += count * max(dtype.itemsize, 8)  # BYTES: at least a pointer an element
            if total_bytes > MAX_WARMUP_BYTES:
                raise ModelConfigError(
                    f"model_warmup {warmup.name!r} input {name!r}: shape {list(shape)} takes the warmup samples "
                    f"above {MAX_WARMUP_BYTES} bytes; warm up with smaller samples"
                )
            if not tensor.accepts(sample.dims):
                raise ModelConfigError(
                    f"model_warmup {warmup.name!r} input {name!r}: dims {list(sample.dims)} do not fit the input's "
                    f"dims {list(tensor.dims)} (-1: any size)"
                )
            if which == "input_data_file":
                one = _sample_from_file(warmup.name, name, model_dir, sample.input_data_file, dtype, tuple(sample.dims))
                arrays[name] = np.repeat(one[np.newaxis], rows, axis=0) if spec.batched else one
            elif which == "random_data" and not dtype.is_bytes and dtype.v2 != "BOOL":
                arrays[name] = rng.integers(0, 8, size=shape).astype(dtype.numpy)
            elif dtype.is_bytes:
                arrays[name] = np.full(shape, b"", dtype=np.object_)
            else:
                arrays[name] = np.zeros(shape, dtype=dtype.numpy)
        for name, array in arrays.items():
            tensor = spec.inputs[name]
            if tensor.reshape is not None:  # config.pbtxt's reshape: what the model takes
                dims = array.shape[1:] if spec.batched else array.shape
                target = tensor.to_model(dims)
                fixed = tensor.model_dims or target
                if any(want not in (-1, got) for want, got in zip(fixed, target, strict=True)):
                    raise ModelConfigError(
                        f"model_warmup {warmup.name!r} input {name!r}: dims {list(dims)} reshaped as config.pbtxt "
                        f"says are {list(target)}, but the model takes {list(fixed)} (-1: any size)"
                    )
                arrays[name] = array.reshape(((rows,) if spec.batched else ()) + target)
        samples.append(WarmupSample(warmup.name, arrays, max(1, warmup.count)))
    return samples


def _sample_from_file(
    warmup: str, name: str, model_dir: Path, file: str, dtype: datatypes.DataType, dims: tuple[int, ...]
) -> np.ndarray:
    """One sample of ``dims`` from ``<model>/warmup/<file>`` (a file longer than the sample: its start)."""
    folder = (model_dir / "warmup").resolve()
    path = (folder / file).resolve()
    if not path.is_relative_to(folder) or not path.is_file():
        raise ModelConfigError(f"model_warmup {warmup!r} input {name!r}: no file warmup/{file} in the model directory")
    count = math.prod(dims)
    if dtype.is_bytes:
        raw = path.read_bytes()  # elements of any length: the file is read to find them
        try:
            return datatypes.deserialize_bytes(raw, count).reshape(dims)
        except ValueError as exc:
            raise ModelConfigError(
                f"model_warmup {warmup!r} input {name!r}: warmup/{file} does not hold {count} BYTES elements ({exc})"
            ) from None
    needed = count * dtype.itemsize
    with path.open("rb") as file_:
        raw = file_.read(needed)  # one sample: the start of a longer file
    if len(raw) < needed:
        raise ModelConfigError(
            f"model_warmup {warmup!r} input {name!r}: a sample of dims {list(dims)} ({dtype.v2}) needs {needed} "
            f"bytes, warmup/{file} has {path.stat().st_size}"
        )
    return np.frombuffer(raw, dtype=dtype.numpy, count=count).reshape(dims)
