"""Which content codings an HTTP ``Accept-Encoding`` header takes (RFC 9110 section 12.5.3), for the
answers the HTTP/REST face and the metrics page compress."""

from __future__ import annotations


def weights(header: str) -> dict[str, float]:
    """Each coding the header names, with its weight (``q``, 1 when not given; 0 refuses it); ``*``
    stands for the codings it does not name, and ``x-gzip`` is gzip."""
    found: dict[str, float] = {}
    for item in header.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if not coding:
            continue
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        coding = coding.lower()
        found["gzip" if coding == "x-gzip" else coding] = weight
    return found


def choose(header: str, offered: tuple[str, ...]) -> str | None:
    """The offered coding the header weighs highest (the first offered on a tie); None if it takes none."""
    given = weights(header)
    best, best_weight = None, 0.0
    for coding in offered:
        weight = given.get(coding, given.get("*", 0.0))
        if weight > best_weight:
            best, best_weight = coding, weight
    return best
