"""One-line logfmt logs: ``ts=... level=... logger=... event=... key=value ...``.

The time is one RFC 3339 UTC token. Every message is ``key=value`` pairs (tests/test_logs.py checks each
log call of the server), and every value is written as logfmt reads it back: as it is when it is one plain
token, else in double quotes with JSON's escapes, whether the call wrote it with ``%s`` or ``%r`` (a model
directory may be named ``my model``, and a reason is a sentence). So Loki's ``| logfmt``, Vector's
``parse_logfmt`` or Go's logfmt readers give back each key and its exact value."""

from __future__ import annotations

import json
import logging
import numbers
import re
import sys
import time

_PLAIN = re.compile(r'[^\s="\\]+')  # a value logfmt reads as it is (printable, not empty: checked apart)


def logfmt_value(text: str) -> str:
    """``text`` as a logfmt value: as it is if that reads back as ``text``, else double-quoted with JSON's
    escapes; a text with characters that are not printable (a tab, a byte that was not UTF-8 in a file
    name) is escaped to ASCII, so the line stays one printable line."""
    if text.isprintable() and _PLAIN.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=not text.isprintable())


class _Value(str):
    """An argument of a log call, written as a logfmt value by ``%s`` and ``%r`` alike."""

    def __str__(self) -> str:
        return logfmt_value(str.__str__(self))

    __repr__ = __str__


class QuoteValues(logging.Filter):
    """Writes the arguments of tensorgate's log records as logfmt values; numbers are left to their
    ``%d``/``%.1f``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name.startswith("tensorgate") and isinstance(args, tuple):
            record.args = tuple(a if isinstance(a, numbers.Number) else _Value(a) for a in args)
        return True


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime  # the Z above: UTC whatever the machine's zone
    handler.setFormatter(formatter)
    handler.addFilter(QuoteValues())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
