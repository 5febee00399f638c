"""Triton's version policy: which of the version directories on disk are served."""

from __future__ import annotations

from collections.abc import Iterable

from tensorgate.errors import ModelConfigError
from tensorgate.proto import model_config_pb2 as mc


def select_versions(policy: mc.ModelVersionPolicy, available: Iterable[int]) -> list[int]:
    """The versions to serve, ascending. Latest(n) is the default with n = 1."""
    versions = sorted(set(available))
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return versions
    if which == "specific":
        wanted = sorted(set(policy.specific.versions))
        if not wanted:
            raise ModelConfigError("version_policy specific names no versions: list the versions to serve")
        missing = [v for v in wanted if v not in versions]
        if missing:
            raise ModelConfigError(f"version_policy names versions {missing} that have no directory (found {versions})")
        return wanted
    count = policy.latest.num_versions if which == "latest" else 1
    if count < 1:
        raise ModelConfigError("version_policy latest needs num_versions >= 1")
    return versions[-count:]
