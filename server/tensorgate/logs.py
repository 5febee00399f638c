"""One-line logfmt logs: ``ts=... level=... logger=... event=... key=value ...``.

The time is one RFC 3339 UTC token. Every message of the server is ``key=value`` pairs (tests/test_logs.py
checks each log call), and every value is written as logfmt reads it back: as it is when it is one plain
token, else in double quotes with JSON's escapes (a model directory may be named ``my model``, and a reason
is a sentence); another library's message (gRPC's, asyncio's) is one quoted ``msg=``. So Loki's ``| logfmt``,
Vector's ``parse_logfmt`` or Go's logfmt readers give back each key and its exact value. A traceback
(``exc_info``) follows its line on lines of its own, as Python writes it."""

from __future__ import annotations

import json
import logging
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


# A printf conversion of a log message: its flags, width and precision, then its kind (group 1).
_CONVERSION = re.compile(r"%[#0 +-]*(?:\d+)?(?:\.\d+)?[hlL]?([diouxXeEfFgGcrsa%])")


def _value(arg: object) -> object:
    """``arg`` as a logfmt value, or as it is if it cannot be made text (the formatter then reports it,
    as logging does: a log call never raises)."""
    try:
        return _Value(arg)
    except Exception:
        return arg


class QuoteValues(logging.Filter):
    """Makes every record a logfmt line: the arguments a tensorgate message writes as text (``%s``, ``%r``)
    become logfmt values (``%d`` and ``%f`` keep their numbers); another library's record, free text,
    becomes ``msg="..."``. A record is rewritten once, however many handlers pass it here."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "logfmt", False):
            return True
        record.logfmt = True
        args = record.args
        if not record.name.startswith("tensorgate."):
            try:
                message = record.getMessage()
            except Exception:
                return True  # the formatter reports the mismatch, as for any record
            record.msg, record.args = "msg=%s", (_value(message),)
        elif isinstance(args, tuple) and args:
            kinds = [k for k in _CONVERSION.findall(str(record.msg)) if k != "%"]
            if len(kinds) == len(args):
                record.args = tuple(_value(a) if k in "sra" else a for k, a in zip(kinds, args, strict=True))
        return True


class QuietBadHttpRequests(logging.Filter):
    """aiohttp logs an HTTP request it cannot parse (a client's fault: a bad header, a Content-Length that
    is not a number) at ERROR, with a traceback quoting the client's bytes: anyone who reaches the port
    could fill the log and fire ERROR alerts. Such a record becomes one DEBUG line without the traceback
    (dropped unless the level is DEBUG); the client gets its 400 as before."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "aiohttp.server" or not record.exc_info:
            return True
        from aiohttp.http_exceptions import HttpProcessingError  # (aiohttp: the HTTP/REST frontend's server)

        exc = record.exc_info[1]
        if not isinstance(exc, HttpProcessingError):
            return True
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "a bad HTTP request was refused: %s", (str(exc.message)[:200],)
        record.exc_info = record.exc_text = None
        return True


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime  # the Z above: UTC whatever the machine's zone
    handler.setFormatter(formatter)
    handler.addFilter(QuietBadHttpRequests())
    handler.addFilter(QuoteValues())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
