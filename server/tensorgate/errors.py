"""Errors a request or a model can cause, with the status the client should see.

The core never imports gRPC: each error carries a :class:`Code` whose names match
``grpc.StatusCode`` so the frontend maps them one to one.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
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


class ServerError(Exception):
    """An error with a client-facing status code and a message that says what to do."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str, code: Code | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


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
