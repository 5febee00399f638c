"""Reading config.pbtxt: Triton's ModelConfig in protobuf text format, and the model file it names."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from tensorgate.errors import ModelConfigError
from tensorgate.model_config.spec import RawConfig
from tensorgate.proto import model_config_pb2 as mc

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILE = "model.onnx"


def read_config(model_dir: Path) -> RawConfig:
    """Parse ``config.pbtxt`` if present (an empty config if not)."""
    path = model_dir / CONFIG_FILE
    config = mc.ModelConfig()
    if not path.is_file():
        return RawConfig(config, max_batch_size_given=False)
    try:
        text = path.read_text(encoding="utf-8")
        text_format.Parse(text, config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"{CONFIG_FILE} does not parse: {exc}") from exc
    return RawConfig(config, _sets_max_batch_size(text))


def _sets_max_batch_size(text: str) -> bool:
    """Whether parsed config text sets max_batch_size at its top level (a comment does not count)."""
    tokenizer = text_format.Tokenizer(text.splitlines())
    depth = 0
    while not tokenizer.AtEnd():
        token = tokenizer.token
        if token in ("{", "[", "<"):
            depth += 1
        elif token in ("}", "]", ">"):
            depth -= 1
        elif depth == 0 and token == "max_batch_size":
            return True
        tokenizer.NextToken()
    return False


def model_filename(config: mc.ModelConfig) -> str:
    name = config.default_model_filename or DEFAULT_MODEL_FILE
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ModelConfigError(f"default_model_filename {name!r} must be a plain file name")
    return name
