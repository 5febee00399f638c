"""Class labels: the file an output's ``label_filename`` names (one label per line, line i for class
index i), read at load as Triton reads it. A file that is missing, outside the model directory or not
UTF-8 text fails the load, as in Triton; the labels go into the spec for the classification extension."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tensorgate.errors import ModelConfigError
from tensorgate.model_config.spec import ModelSpec


def with_labels(spec: ModelSpec, model_dir: Path) -> ModelSpec:
    """``spec`` with the labels of each output that names a label file (``spec`` itself if none does)."""
    labels: dict[str, tuple[str, ...]] = {}
    folder = model_dir.resolve()
    for output in spec.config.output:
        if not output.label_filename:
            continue
        path = (folder / output.label_filename).resolve()
        where = f"output {output.name!r}: label_filename {output.label_filename!r}"
        if not path.is_relative_to(folder) or not path.is_file():
            raise ModelConfigError(f"{where} names no file in the model directory")
        try:
            labels[output.name] = _lines(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelConfigError(f"{where} cannot be read as UTF-8 text: {exc}") from None
    return replace(spec, labels=labels) if labels else spec


def _lines(text: str) -> tuple[str, ...]:
    """The file's lines as Triton's getline reads them: split at newlines only (str.splitlines would also
    split at \\x85, \\u2028, form feeds..., shifting every later label), a trailing \\r dropped."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return tuple(line.removesuffix("\r") for line in lines)
