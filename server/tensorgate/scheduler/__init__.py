"""Scheduling of one model version: the queue (queue.py), where a batch runs (placement.py) and the
one path that runs it (scheduler.py)."""

from tensorgate.scheduler.scheduler import Scheduler

__all__ = ["Scheduler"]
