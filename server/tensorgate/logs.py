"""One-line key=value logs, with the time (RFC 3339, UTC) and the logger's name.

A text value written with ``%s`` that has a space, an ``=`` or a quote (a model directory may be
named ``my model``) is written quoted, so a key=value parser still reads its key and value. (Values
written with ``%r``, the free-text reasons, keep Python's quotes.)"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_PLAIN = re.compile(r'[^\s="\\]*')  # a value logfmt reads as it is


class _Quoted(str):
    """A text argument that ``%s`` writes quoted (JSON's escapes, as logfmt reads them); ``%r`` as before."""

    def __str__(self) -> str:
        return json.dumps(str.__str__(self), ensure_ascii=False)

    def __repr__(self) -> str:
        return repr(str.__str__(self))


class QuoteValues(logging.Filter):
    """Quotes the text arguments of tensorgate's log records that would break a key=value line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name.startswith("tensorgate") and isinstance(args, tuple):
            record.args = tuple(_Quoted(a) if isinstance(a, str) and not _PLAIN.fullmatch(a) else a for a in args)
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
