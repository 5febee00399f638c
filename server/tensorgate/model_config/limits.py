"""The bounds a model version's config may set on its requests, as ``parameters`` (string values,
like the ONNX Runtime settings): how long a request may expect to wait in the queue before it is
refused at once, and how long a batch may run. Absent, the server's flags decide."""

from __future__ import annotations

from dataclasses import dataclass

from tensorgate.proto import model_config_pb2 as mc

LIMIT_PARAMETERS: dict[str, tuple[int, int]] = {  # name -> allowed range, in milliseconds
    "max_queue_wait_ms": (0, 3_600_000),  # 0: no bound
    "execution_timeout_ms": (0, 86_400_000),  # 0: none
}


@dataclass(frozen=True)
class Limits:
    """What a config asks for; None where the server's default applies."""

    max_queue_wait_ms: int | None = None
    execution_timeout_ms: int | None = None


def limit_problems(config: mc.ModelConfig) -> list[str]:
    return integer_parameter_problems(config, LIMIT_PARAMETERS)


def limits(config: mc.ModelConfig) -> Limits:
    """The limits of a config already passed by check_supported."""
    return Limits(integer_parameter(config, "max_queue_wait_ms"), integer_parameter(config, "execution_timeout_ms"))


def integer_parameter_problems(config: mc.ModelConfig, allowed: dict[str, tuple[int, int]]) -> list[str]:
    """What is wrong with the integer ``parameters`` a config sets (name -> allowed range), one
    message each: they travel as text in ``string_value``, as Triton's backends read them."""
    problems = []
    for key, (low, high) in allowed.items():
        if key not in config.parameters:
            continue
        text = config.parameters[key].string_value.strip()
        if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:  # ("²".isdigit() is True)
            problems.append(f"parameters {key!r} must be an integer from {low} to {high} in string_value, not {text!r}")
    return problems


def integer_parameter(config: mc.ModelConfig, key: str) -> int | None:
    """An integer parameter of a config already checked; None where the config does not set it."""
    return int(config.parameters[key].string_value) if key in config.parameters else None
