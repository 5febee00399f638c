"""The queue of one model version (Triton's ``PriorityQueue``): priority levels, queue limits,
timeouts and the queue delay, and the batch that goes next.

- One FIFO per priority level (level 1 first). A batch starts with the oldest request of the highest
  level and takes every later request whose non-batch shapes and dtypes agree (others wait for a
  batch of their own), up to ``max_batch_size`` rows. A request that carries n rows counts n.
- Which batch goes, and when (Triton's ``DynamicBatchScheduler::GetDynamicBatch``): while the queue
  delay of its oldest request has not passed, a batch goes at once at the largest preferred size it
  reaches, or, when it would outgrow the largest preferred size without reaching one, at the rows it
  has before it would; else it waits for the delay (a timer calls ``on_ready``). Once the delay has
  passed (``max_queue_delay_microseconds``; 0, the default, means no waiting) everything pending
  goes, up to ``max_batch_size``. No preferred sizes means ``max_batch_size`` (as Triton's config).
- A full level answers UNAVAILABLE at once ("Exceeds maximum queue size", Triton's status and
  words). A request whose queue timeout passes is answered UNAVAILABLE (timeout_action REJECT) or
  moved behind the requests of its own level that have not timed out, still ahead of every lower
  level (DELAY).
- Without dynamic batching every request is its own batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator

from tensorgate.errors import Code, ServerError, Unavailable
from tensorgate.model_config import BatchingPolicy, TimeoutAction
from tensorgate.request import InferRequest, Outputs

ShapeKey = tuple[tuple[str, tuple[int, ...], str], ...]
COMPACT_AFTER = 64  # stale entries a level keeps before it is compacted (when they outnumber the live ones)


class Pending:
    """A queued request and the future its caller awaits."""

    __slots__ = ("delayed", "future", "key", "level", "request", "taken", "timer")

    def __init__(self, request: InferRequest, future: asyncio.Future[Outputs], level: int, key: ShapeKey) -> None:
        self.request = request
        self.future = future
        self.level = level
        self.key = key
        self.delayed = False  # timed out under timeout_action DELAY
        self.taken = False  # left the queue: dispatched, rejected or cancelled
        self.timer: asyncio.TimerHandle | None = None

    @property
    def live(self) -> bool:
        return not self.taken and not self.future.done()


def _shape_key(request: InferRequest, batched: bool) -> ShapeKey:
    cut = 1 if batched else 0
    return tuple(sorted((n, a.shape[cut:], a.dtype.str) for n, a in request.inputs.items()))


class PriorityQueue:
    def __init__(
        self,
        model: str,
        policy: BatchingPolicy,
        on_ready: Callable[[], None],
        on_rejected: Callable[[InferRequest], None],
    ) -> None:
        self.model = model
        self.policy = policy
        self._on_ready = on_ready  # a delayed batch became ready
        self._on_rejected = on_rejected  # a request was refused or timed out (to be counted)
        self._batched = policy.max_batch_size > 0
        # Triton fills in an empty preferred_batch_size with max_batch_size (NormalizeModelConfig).
        preferred = policy.preferred_batch_sizes or (policy.max_batch_size,)
        self._preferred = frozenset(preferred)
        self._max_preferred = max(preferred)
        levels = policy.priority_levels
        self._queues: list[deque[Pending]] = [deque() for _ in range(levels)]
        self._delayed: list[deque[Pending]] = [deque() for _ in range(levels)]
        self._queued = [0] * levels  # live entries per level (for max_queue_size)
        # Entries left in a level's deques that no longer wait (dispatched, rejected, cancelled, or the
        # copy of one moved to the delayed queue): dropped when they reach the head, and all at once
        # when they outnumber the live ones, since a level below a busy one may not reach its head for
        # long, and each holds its request's tensors.
        self._stale = [0] * levels
        self.depth = 0  # live entries waiting, over every level
        self._delay_timer: asyncio.TimerHandle | None = None

    def level(self, request: InferRequest) -> int:
        """The queue (0 = highest priority) a request goes to. As Triton (InferenceRequest::SetPriority),
        a priority of 0 or above the model's levels means the model's default level."""
        policy = self.policy
        priority = request.priority
        if priority < 1 or priority > policy.priority_levels:
            priority = policy.default_priority
        return priority - 1

    def push(self, request: InferRequest) -> Pending:
        """Queue a request; UNAVAILABLE if its level is full (as Triton: clients retry on it)."""
        level = self.level(request)
        queue_policy = self.policy.queue_policies[level]
        if queue_policy.max_queue_size and self._queued[level] >= queue_policy.max_queue_size:
            self._on_rejected(request)
            raise ServerError(
                f"Exceeds maximum queue size: model '{self.model}' queue is full (max_queue_size "
                f"{queue_policy.max_queue_size} at priority {level + 1}); retry later",
                Code.UNAVAILABLE,
            )
        loop = asyncio.get_running_loop()
        entry = Pending(request, loop.create_future(), level, _shape_key(request, self._batched))
        timeout_us = queue_policy.default_timeout_us
        if queue_policy.allow_timeout_override and 0 < request.timeout_us < timeout_us:
            # As Triton's PolicyQueue::Enqueue: a request may shorten the default timeout, never lengthen it,
            # and with no default timeout (0) it has none to shorten: its own is not applied.
            timeout_us = request.timeout_us
        if timeout_us:
            entry.timer = loop.call_later(timeout_us / 1e6, self._expire, entry, timeout_us)
        self._queues[level].append(entry)
        self._queued[level] += 1
        self.depth += 1
        return entry

    def forget(self, entry: Pending) -> None:
        """Take an entry out of the queue (dispatched, rejected or cancelled); idempotent."""
        if entry.taken:
            return
        entry.taken = True
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        level = entry.level
        self._queued[level] -= 1
        self.depth -= 1
        self._stale[level] += 1
        if self._stale[level] > COMPACT_AFTER and self._stale[level] > self._queued[level]:
            self._compact(level)

    def _compact(self, level: int) -> None:
        """Drop a level's stale entries (new deques: a batch being formed may still hold the old ones)."""
        self._queues[level] = deque(e for e in self._queues[level] if e.live and not e.delayed)
        self._delayed[level] = deque(e for e in self._delayed[level] if e.live)
        self._stale[level] = 0

    def _expire(self, entry: Pending, timeout_us: int) -> None:
        entry.timer = None
        if not entry.live or entry.delayed:
            return
        action = self.policy.queue_policies[entry.level].timeout_action
        if action is TimeoutAction.DELAY:
            entry.delayed = True
            self._delayed[entry.level].append(entry)  # the stale copy in _queues is skipped
            self._stale[entry.level] += 1
            return
        self.forget(entry)
        self._on_rejected(entry.request)
        entry.future.set_exception(
            Unavailable(
                f"request timed out after {timeout_us} us in the queue of model '{self.model}' "
                "(queue policy timeout); retry or raise the timeout"
            )
        )

    def _entries(self) -> Iterator[Pending]:
        """Queued live entries in dispatch order: level by level (highest priority first), each
        level's entries that have not timed out, then its delayed ones (timeout_action DELAY), as
        Triton's PriorityQueue (core/src/scheduler_utils.cc, ``PolicyQueue::At``: queue_, then
        delayed_queue_, then the next level). Dead heads (answered, cancelled, moved to the delayed
        queue) are dropped on the way."""
        stale = self._stale
        for level, (queue, delayed_queue) in enumerate(zip(self._queues, self._delayed, strict=True)):
            for q, delayed in ((queue, False), (delayed_queue, True)):
                while q and (not q[0].live or q[0].delayed != delayed):
                    q.popleft()
                    stale[level] -= 1
                for entry in q:
                    if entry.live and entry.delayed == delayed:
                        yield entry

    def take_batch(self, now_ns: int) -> list[Pending] | None:
        """The next batch that is ready now, taken out of the queue; None if there is none (nothing
        queued, or waiting for the queue delay: ``on_ready`` is called when it has passed)."""
        batch = self._form_batch(now_ns)
        if batch is not None:
            for entry in batch:
                self.forget(entry)
        return batch

    def _form_batch(self, now_ns: int) -> list[Pending] | None:
        found = self._entries()
        head = next(found, None)
        if head is None:
            return None
        if not self.policy.dynamic:
            return [head]
        # Triton's GetDynamicBatch (core/src/dynamic_batch_scheduler.cc), for a batch that starts
        # empty: gather in queue order up to max_batch_size rows; ``best`` is the last prefix whose
        # rows are a preferred size, or, when the next request would take the rows past the largest
        # preferred size and none was reached, the prefix before it. Then: a ``best`` goes at once
        # unless the delay has passed; past the delay, or with no delay, or at or above the largest
        # preferred size, everything gathered goes; else wait for the delay.
        # Unlike Triton, requests of another shape, or too big for what is left, are passed over (they
        # wait for a batch of their own) rather than ending the batch.
        limit = self.policy.max_batch_size
        preferred = self._preferred
        max_preferred = self._max_preferred
        delay_ns = self.policy.max_queue_delay_us * 1000
        batch, rows = [head], head.request.batch_size
        best = 1 if rows in preferred else 0
        scanned = 0
        for entry in found:
            if rows >= limit or scanned > 4 * limit or (not delay_ns and rows >= max_preferred):
                break  # full, or (no delay to pass) nothing later changes what goes
            scanned += 1
            if entry.key != head.key:
                continue
            size = entry.request.batch_size
            if not best and rows + size > max_preferred:
                best = len(batch)
            if rows + size > limit:
                continue
            batch.append(entry)
            rows += size
            if rows in preferred:
                best = len(batch)
        if not delay_ns:
            return batch[:best] if best else batch
        oldest = min(e.request.arrival_ns for e in batch)
        if now_ns - oldest >= delay_ns:
            return batch
        if best:
            return batch[:best]
        if rows >= max_preferred:  # one request at or above the largest preferred size
            return batch
        if self._delay_timer is None:
            wait = (oldest + delay_ns - now_ns) / 1e9
            self._delay_timer = asyncio.get_running_loop().call_later(wait, self._delay_done)
        return None

    def _delay_done(self) -> None:
        self._delay_timer = None
        self._on_ready()
