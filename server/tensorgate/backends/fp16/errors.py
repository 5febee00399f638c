"""The FP16 package's errors, and the one-line form of an exception its messages quote."""

from __future__ import annotations


class Fp16Error(Exception):
    """Base of this package's errors; the message says what went wrong."""


class Fp16ConversionError(Fp16Error):
    """The model cannot be converted to a valid mixed-precision FP16 model."""


class AccuracyCheckError(Fp16Error):
    """A model could not be run for the accuracy check (so nothing could be compared)."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
