"""Triton's version policy: which of the version directories on disk are served."""

from __future__ import annotations

from collections.abc import Iterable

from tensorgate.errors import ModelConfigError
from tensorgate.proto import model_config_pb2 as mc


def select_versions(policy: mc.ModelVersionPolicy, available: Iterable[int]) -> list[int]:
    """The versions to serve, ascending. Latest(n) is the default with n = 1.

    As Triton (model_lifecycle.cc, VersionsToLoad and AsyncLoad): ``specific`` serves the versions it
    names that have a directory (the others are for the caller to report: ``missing_versions``); a
    policy that leaves no version to serve fails the model."""
    versions = sorted(set(available))
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return versions
    if which == "specific":
        wanted = sorted(set(policy.specific.versions))
        if not wanted:
            raise ModelConfigError("version_policy specific names no versions: list the versions to serve")
        served = [v for v in wanted if v in versions]
        if not served:
            raise ModelConfigError(
                f"none of the versions {wanted} version_policy specific names has a directory (found {versions})"
            )
        return served
    count = policy.latest.num_versions if which == "latest" else 1
    if count < 1:
        raise ModelConfigError("version_policy latest needs num_versions >= 1")
    return versions[-count:]


def missing_versions(policy: mc.ModelVersionPolicy, available: Iterable[int]) -> list[int]:
    """The versions a ``specific`` policy names that have no directory, ascending (Triton logs each
    and loads the others)."""
    if policy.WhichOneof("policy_choice") != "specific":
        return []
    return sorted(set(policy.specific.versions) - set(available))
