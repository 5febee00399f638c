"""The decoded request: what the frontend's codec hands down to the scheduler and the instances.

Nothing below the frontend sees protobuf; this is the request as the core knows it (Triton's
``InferenceRequest``): numpy inputs already checked against the model, the outputs asked for, and
the scheduling parameters the client set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class OutputBuffer(Protocol):
    """Memory of the client's that an output is written to instead of the response (its shared memory)."""

    @property
    def size(self) -> int: ...

    def write(self, data: np.ndarray) -> None:
        """``data``: the output's bytes (uint8), at most ``size`` of them."""


@dataclass(slots=True)
class InferRequest:
    """A decoded, validated request. ``batch_size`` is its rows (1 for a model without batching);
    ``priority`` 0 and ``timeout_us`` 0 mean the model's defaults."""

    id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    batch_size: int = 1
    priority: int = 0
    timeout_us: int = 0
    arrival_ns: int = field(default_factory=time.perf_counter_ns)
    # Bytes of its input arrays (an object array of BYTES counts its pointers, not the strings), as
    # the codec counted them while decoding; -1: count them here.
    nbytes: int = -1
    # Outputs asked for as classifications (Triton's extension): name -> k; None: none.
    classes: dict[str, int] | None = None
    # Outputs to be written in the client's shared memory (Triton's extension) instead of the response:
    # name -> where; None: none.
    output_memory: dict[str, OutputBuffer] | None = None

    def __post_init__(self) -> None:
        if self.nbytes < 0:
            self.nbytes = sum(a.nbytes for a in self.inputs.values())


Outputs = dict[str, np.ndarray]
