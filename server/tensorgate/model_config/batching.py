"""How a model version schedules: its dynamic_batching block, resolved into a typed policy."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tensorgate.proto import model_config_pb2 as mc

# Bounds on what a config may make the scheduler keep or wait (Triton has none: a config override of
# priority_levels 3,000,000 made one server build 3 million queues and 4.7 GB).
MAX_PRIORITY_LEVELS = 1024
MAX_QUEUE_DELAY_US = 60_000_000


class TimeoutAction(enum.Enum):
    REJECT = "REJECT"
    DELAY = "DELAY"


@dataclass(frozen=True)
class QueuePolicy:
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_us: int = 0  # 0: no timeout
    allow_timeout_override: bool = False
    max_queue_size: int = 0  # 0: unbounded


@dataclass(frozen=True)
class BatchingPolicy:
    """The scheduling of one model version (Triton's dynamic batcher settings)."""

    max_batch_size: int = 0
    dynamic: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    priority_levels: int = 1
    default_priority: int = 1
    queue_policies: tuple[QueuePolicy, ...] = (QueuePolicy(),)  # one per priority level


def batching_policy(config: mc.ModelConfig) -> BatchingPolicy:
    """The policy of a completed config (already passed by ``check_supported``)."""
    if not config.HasField("dynamic_batching") or config.max_batch_size == 0:
        return BatchingPolicy(max_batch_size=config.max_batch_size)
    db = config.dynamic_batching
    levels = max(1, db.priority_levels)
    default_level = (db.default_priority_level or (levels + 1) // 2) if db.priority_levels else 1
    default = _queue_policy(db.default_queue_policy) if db.HasField("default_queue_policy") else QueuePolicy()
    # Without priority levels there is one queue, under the default policy (Triton's PriorityQueue reads
    # priority_queue_policy only when priority_levels is set).
    per_level = db.priority_queue_policy if db.priority_levels else {}
    policies = tuple(
        _queue_policy(per_level[level]) if level in per_level else default for level in range(1, levels + 1)
    )
    preferred = tuple(sorted({p for p in db.preferred_batch_size if 0 < p <= config.max_batch_size}))
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        dynamic=True,
        preferred_batch_sizes=preferred,
        max_queue_delay_us=db.max_queue_delay_microseconds,
        priority_levels=levels,
        default_priority=min(max(1, default_level), levels),
        queue_policies=policies,
    )


def _queue_policy(p: mc.ModelQueuePolicy) -> QueuePolicy:
    action = TimeoutAction.DELAY if p.timeout_action == mc.ModelQueuePolicy.DELAY else TimeoutAction.REJECT
    return QueuePolicy(action, p.default_timeout_microseconds, p.allow_timeout_override, p.max_queue_size)


def batching_problems(config: mc.ModelConfig) -> list[str]:
    """What in the dynamic_batching block of a completed config (its max_batch_size known, from the file
    where config.pbtxt leaves it out) cannot be served, one message each, as Triton's validation says."""
    if not config.HasField("dynamic_batching"):
        return []
    db = config.dynamic_batching
    problems: list[str] = []
    too_big = [p for p in db.preferred_batch_size if p < 1 or p > config.max_batch_size]
    if too_big:
        problems.append(
            f"dynamic_batching preferred_batch_size {too_big} must be within 1..max_batch_size "
            f"({config.max_batch_size})"
        )
    if db.priority_levels > MAX_PRIORITY_LEVELS:
        problems.append(
            f"dynamic_batching priority_levels {db.priority_levels} is above {MAX_PRIORITY_LEVELS} (each level is a "
            "queue the server keeps)"
        )
        return problems
    if db.max_queue_delay_microseconds > MAX_QUEUE_DELAY_US:
        problems.append(
            f"dynamic_batching max_queue_delay_microseconds {db.max_queue_delay_microseconds} is above "
            f"{MAX_QUEUE_DELAY_US} (one minute): every request would wait that long for a batch"
        )
    if db.priority_levels and not 1 <= db.default_priority_level <= db.priority_levels:
        problems.append(
            f"dynamic_batching default_priority_level {db.default_priority_level} must be within "
            f"1..priority_levels ({db.priority_levels})"
        )
    outside = sorted(k for k in db.priority_queue_policy if not 1 <= k <= db.priority_levels)
    if db.priority_levels and outside:
        problems.append(
            f"dynamic_batching priority_queue_policy levels {outside} are outside 1..priority_levels "
            f"({db.priority_levels})"
        )
    return problems


def batching_hints(config: mc.ModelConfig) -> list[str]:
    """What in the dynamic_batching block of a completed config is not applied, one message each."""
    if not config.HasField("dynamic_batching"):
        return []
    db = config.dynamic_batching
    hints: list[str] = []
    if config.max_batch_size == 0 and (
        db.priority_levels or db.HasField("default_queue_policy") or db.priority_queue_policy
    ):
        hints.append(
            "dynamic_batching on a model with max_batch_size 0: its requests run one at a time as they come; "
            "its priority levels and queue policies are not applied"
        )
    if db.priority_queue_policy and not db.priority_levels:
        hints.append("dynamic_batching priority_queue_policy ignored: priority_levels is not set (one queue)")
    return hints
