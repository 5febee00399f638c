"""``tensorgate`` with one experiment applied, for bench/account.py's variants (experiments not kept in server/).

    python bench/experiment_server.py [--switch-interval S] [--gather-on-loop] -- serve --model-repository ...

Each experiment changes the running server the way its flag says, then runs tensorgate's own command line, so
an A/B of an idea costs no change to the server and the measured code is the server's own otherwise:

--switch-interval S   sys.setswitchinterval(S) before the server starts (CPython's default is 0.005 s): how
                      long a thread that wants the GIL waits before the holder is asked to drop it.
--gather-on-loop      a batch's inputs are concatenated on the event loop before the batch is handed to the
                      instance's worker thread (the server does it on the worker): the worker then starts with
                      ONNX Runtime's run, without a first GIL release and re-acquire inside numpy's copy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import numpy as np
from tensorgate import instance
from tensorgate.cli import main as tensorgate_main
from tensorgate.request import InferRequest


def gather_on_loop() -> None:
    gathered: dict[int, dict[str, np.ndarray]] = {}  # id(requests) -> inputs, from submit to run
    own_gather = instance.gather_inputs
    own_submit = instance.Instance.submit

    def gather(requests: Sequence[InferRequest], batched: bool) -> dict[str, np.ndarray]:
        ready = gathered.pop(id(requests), None)
        return ready if ready is not None else own_gather(requests, batched)

    def submit(
        self: instance.Instance,
        requests: Sequence[InferRequest],
        outputs: Sequence[str],
        batched: bool,
        done: Callable[[instance.BatchResult], object],
    ) -> None:
        gathered[id(requests)] = own_gather(requests, batched)  # on the event loop
        own_submit(self, requests, outputs, batched, done)

    instance.gather_inputs = gather  # type: ignore[assignment]
    instance.Instance.submit = submit  # type: ignore[method-assign]


if __name__ == "__main__":
    split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switch-interval", type=float)
    parser.add_argument("--gather-on-loop", action="store_true")
    args = parser.parse_args(sys.argv[1:split])
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.gather_on_loop:
        gather_on_loop()
    sys.exit(tensorgate_main(sys.argv[split + 1 :]))
