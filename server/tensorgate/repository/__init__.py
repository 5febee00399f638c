"""The model repository: which models exist on disk, which are loaded, and their states."""

from tensorgate.repository.repository import Repository, RepositoryMissing
from tensorgate.repository.state import BuildOutcome, ModelState, ModelVersion

__all__ = ["BuildOutcome", "ModelState", "ModelVersion", "Repository", "RepositoryMissing"]
