"""Errors a request or a model can cause, with the status the client should see.

The core never imports gRPC: each error carries a :class:`Code` whose names match
``grpc.StatusCode`` so the frontend maps them one to one.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"


CLIP = 64  # characters of a client's string echoed back in a message


def clip(text: str, limit: int = CLIP) -> str:
    """A string a client sent, cut for an error message: the status metadata of a reply must stay far
    below clients' limits (8 KiB for gRPC's), however long the name it names."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


MAX_MESSAGE = 2048  # characters of any error message sent back (gRPC status details, HTTP bodies)


def bounded(message: str) -> str:
    """An error message as it is sent: clients drop status metadata above 8 KiB (and then report
    RESOURCE_EXHAUSTED instead of the error), and a message can quote a client's input (a name, a
    config, a parse error), so every message is cut to MAX_MESSAGE characters."""
    return message if len(message) <= MAX_MESSAGE else f"{message[:MAX_MESSAGE]}...({len(message)} characters)"


class ServerError(Exception):
    """An error with a client-facing status code and a message that says what to do."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, code: Code | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The message as clients get it (bounded)."""
        return bounded(str(self.args[0]))


class InvalidArgument(ServerError):
    code = Code.INVALID_ARGUMENT


class NotFound(ServerError):
    code = Code.NOT_FOUND


class Unavailable(ServerError):
    code = Code.UNAVAILABLE


class Unimplemented(ServerError):
    code = Code.UNIMPLEMENTED


class ModelConfigError(Exception):
    """A model's files or config.pbtxt cannot be served; the message is the reason shown to users."""
