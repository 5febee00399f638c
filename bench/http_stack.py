"""Which HTTP stack serves tensorgate's REST face: aiohttp against uvicorn with httptools, each on
one asyncio event loop in its own process (as the server runs it beside grpc.aio), measured with
wrk in the same run.

Both serve the same two routes with the same work per request (parse the V2 JSON body, answer a V2
JSON response), so what differs is the HTTP stack's own cost per request. Rounds alternate between
the stacks; the table gives each round and the median ratio.

    python bench/http_stack.py [--seconds 5] [--rounds 3] [--connections 16]

Needs ``wrk`` (Debian's package) and uvicorn + httptools in the environment (``pip install uvicorn
httptools``: not dependencies of tensorgate, which ships aiohttp).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = json.dumps(
    {
        "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [float(i) for i in range(16)]}],
        "outputs": [{"name": "OUTPUT0"}],
    }
)


def answer(body: bytes) -> bytes:
    """The same work for both stacks: the V2 request parsed, a V2 response written."""
    request = json.loads(body)
    tensor = request["inputs"][0]
    out = {"model_name": "identity", "model_version": "1", "outputs": [{**tensor, "name": "OUTPUT0"}]}
    return json.dumps(out, separators=(",", ":")).encode()


def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=answer(await request.read()), content_type="application/json")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v2/models/identity/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_uvicorn(port: int) -> None:
    import uvicorn

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()  # type: ignore[operator]
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if scope["path"] == "/v2/models/identity/infer":
            body, status = answer(b"".join(chunks)), 200
        else:
            body, status = b"", 200
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", loop="asyncio", log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no server on port {port}")


def wrk(port: int, seconds: int, connections: int, script: Path) -> float:
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("Requests/sec:"))
    return float(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--serve", choices=["aiohttp", "uvicorn"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        (serve_aiohttp if args.serve == "aiohttp" else serve_uvicorn)(args.port)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    script = Path(tempfile.mkdtemp()) / "post.lua"
    body = BODY.replace('"', '\\"')
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = "{body}"\nwrk.path = "/v2/models/identity/infer"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    servers = {}
    for stack in ("aiohttp", "uvicorn"):
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--serve", stack, "--port", str(port)])
        wait_ready(port)
        servers[stack] = (port, proc)
    try:
        rates: dict[str, list[float]] = {stack: [] for stack in servers}
        for _ in range(args.rounds):
            for stack, (port, _proc) in servers.items():
                rates[stack].append(wrk(port, args.seconds, args.connections, script))
    finally:
        for _port, proc in servers.values():
            proc.terminate()
            proc.wait(10)
    print(f"# HTTP stack, {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}")
    print(f"# wrk -t2 -c{args.connections} -d{args.seconds}s, V2 JSON identity (16 FP32), {args.rounds} rounds")
    print("| stack | req/s per round | median | ratio to aiohttp |")
    print("|---|---|---|---|")
    base = statistics.median(rates["aiohttp"])
    for stack, values in rates.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {stack} | {rounds} | {median:.0f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
