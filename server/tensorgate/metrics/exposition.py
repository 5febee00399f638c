"""The /metrics page as Triton serves it: Prometheus' text format (0.0.4), with Triton's counters
typed ``counter`` under their bare names (``nv_inference_request_success``, no ``_total``).

prometheus_client cannot write that itself: it appends ``_total`` to the TYPE line of a counter
family, so models.py exposes these families untyped, and this wrapper of its WSGI app types them in
the page it writes. The page is always the text format, as Triton's (prometheus_client would answer
Prometheus' default Accept header with OpenMetrics, where a counter must end in ``_total``);
collectors that read types (Prometheus' metadata, the OpenTelemetry and Datadog receivers, which
take untyped series for gauges) then see counters, as they do from Triton.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import make_wsgi_app
from prometheus_client.registry import Collector

from tensorgate import accept_encoding

TEXT_FORMAT = "text/plain; version=0.0.4"  # what Triton (prometheus-cpp) serves and every Prometheus reads
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def triton_exposition(registry: Collector, counters: Callable[[], Iterable[str]]) -> WsgiApp:
    """prometheus_client's WSGI app over ``registry``, writing the text format with the families
    ``counters()`` names (exposed untyped) typed ``counter``; gzip when the scraper accepts it."""
    inner = make_wsgi_app(registry, disable_compression=True)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") not in ("/metrics", "/metrics/"):  # Triton serves /metrics alone
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
            return [b"Not Found\n"]
        head = environ.get("REQUEST_METHOD") == "HEAD"
        wants_gzip = accept_encoding.choose(environ.get("HTTP_ACCEPT_ENCODING", ""), ("gzip",)) is not None
        environ = {**environ, "HTTP_ACCEPT": TEXT_FORMAT, "HTTP_ACCEPT_ENCODING": ""}
        if head:
            environ["REQUEST_METHOD"] = "GET"  # HEAD: the GET's headers, no body
        answer: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            answer[:] = [status, headers]

        body = b"".join(inner(environ, capture))
        status, headers = answer
        if status.startswith("200") and body:
            names = "|".join(re.escape(name) for name in counters())
            if names:
                body = re.sub(rf"^# TYPE ({names}) untyped$".encode(), rb"# TYPE \1 counter", body, flags=re.M)
            headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "content-encoding")]
            if wants_gzip:
                body = gzip.compress(body, compresslevel=6)
                headers.append(("Content-Encoding", "gzip"))
            headers += [("Content-Length", str(len(body))), ("Vary", "Accept-Encoding")]
        start_response(status, headers)
        return [b""] if head else [body]

    return app
