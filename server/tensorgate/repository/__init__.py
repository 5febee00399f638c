"""The model repository: which models exist on disk, which are loaded, and their states."""

from tensorgate.repository.repository import BuildOutcome, ModelState, ModelVersion, Repository

__all__ = ["BuildOutcome", "ModelState", "ModelVersion", "Repository"]
