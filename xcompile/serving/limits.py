"""Request limits of ``xcompile serve`` (docs: README "Serving limits").

* ``BodyLimit``: an ASGI middleware that answers a request body over ``max_bytes`` with HTTP 413 and a one-line
  JSON error, checked on ``Content-Length`` first and then on the bytes streamed (chunked bodies), before the
  application sees (or parses) any of it. The body is read at most up to the limit.
* ``launch()``: the MLServer process entry point: reads ``xcompile-limits.json`` from the settings folder,
  installs ``BodyLimit`` on MLServer's REST app, then runs ``mlserver start FOLDER``.
* The row limit (``--max-rows``) is checked by the runtime (``mlserver_runtime.py``) on the declared shapes, after
  parsing and before decoding to arrays; gRPC messages are bounded by MLServer's ``grpc_max_message_length``
  (RESOURCE_EXHAUSTED).

No mlserver import at module level: ``server.py`` imports this module in any process.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

LIMITS_FILE = "xcompile-limits.json"
DEFAULT_MAX_REQUEST_MB = 16.0
DEFAULT_MAX_ROWS = 1024


def _json(status: int, message: str):
    body = json.dumps({"error": " ".join(message.split())}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (Content-Length or streamed), before the app reads it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    def _too_large(self, n: int | None) -> str:
        got = f"of {n} bytes " if n is not None else ""
        return (f"request body {got}is over the limit of {self.max_bytes} bytes "
                f"({self.max_bytes / 1e6:g} MB, xcompile serve --max-request-mb)")

    async def _reject(self, send, status: int, message: str) -> None:
        start, body = _json(status, message)
        await send(start)
        await send(body)

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._reject(send, 400, "bad Content-Length header")
            if n > self.max_bytes:
                return await self._reject(send, 413, self._too_large(n))
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                chunks.clear()
                return await self._reject(send, 413, self._too_large(None))
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False
        chunks.clear()

        async def replay():
            nonlocal replayed, body
            if not replayed:
                replayed = True
                out, body = body, b""
                return {"type": "http.request", "body": out, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def write_limits(folder: Path, max_request_mb: float, max_rows: int) -> None:
    from ..files import write_text
    write_text(Path(folder) / LIMITS_FILE, json.dumps({"max_request_bytes": int(max_request_mb * 1e6),
                                                       "max_rows": int(max_rows)}, indent=2), "--dir")


def read_limits(folder: Path) -> dict:
    f = Path(folder) / LIMITS_FILE
    limits = {"max_request_bytes": int(DEFAULT_MAX_REQUEST_MB * 1e6), "max_rows": DEFAULT_MAX_ROWS}
    if f.is_file():
        limits.update(json.loads(f.read_text()))
    return limits


def launch() -> None:
    """``python -c "from xcompile.serving.limits import launch; launch()" start FOLDER``."""
    folder = Path(sys.argv[-1])
    limits = read_limits(folder)
    import mlserver.rest.server as rest
    create_app = rest.create_app

    def limited_app(*args, **kwargs):
        app = create_app(*args, **kwargs)
        app.add_middleware(BodyLimit, max_bytes=limits["max_request_bytes"])
        return app

    rest.create_app = limited_app
    from mlserver.cli.main import main
    main()
