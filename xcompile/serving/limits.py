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

from .guard import HttpMiddleware

LIMITS_FILE = "xcompile-limits.json"
DEFAULT_MAX_REQUEST_MB = 16.0
DEFAULT_MAX_ROWS = 1024
DEFAULT_REQUEST_TIMEOUT = 30.0   # seconds for a request's head, and again for its body
DEFAULT_MAX_CONNECTIONS = 1000
MAX_REQUEST_MB = 2000.0          # gRPC's message length is an int32 (2147 MB)


class BodyLimit(HttpMiddleware):
    """ASGI middleware: 413 for a body over ``max_bytes`` (Content-Length or streamed), before the app reads it;
    408 for a body not received within ``timeout`` seconds (a declared chunk of 2^72 bytes, a trickling client)."""

    def __init__(self, app, max_bytes: int, timeout: float = DEFAULT_REQUEST_TIMEOUT):
        super().__init__(app)
        self.max_bytes, self.timeout = int(max_bytes), float(timeout)

    def _too_large(self, n: int | None) -> str:
        got = f"of {n} bytes " if n is not None else ""
        return (f"request body {got}is over the limit of {self.max_bytes} bytes "
                f"({self.max_bytes / 1e6:g} MB, xcompile serve --max-request-mb)")

    async def http(self, scope, receive, send):
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await self._reject(send, 400, "bad Content-Length header")
            if n > self.max_bytes:
                return await self._reject(send, 413, self._too_large(n))
        import asyncio
        import time
        chunks, total = [], 0
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                chunks.clear()
                return await self._reject(send, 408, f"request body not received within {self.timeout:g} s")
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


def write_limits(folder: Path, max_request_mb: float, max_rows: int, **guard) -> None:
    """``guard``: request_timeout, max_connections, api_key_file (the key stays in its file), repository."""
    from ..files import write_text
    write_text(Path(folder) / LIMITS_FILE, json.dumps({"max_request_bytes": int(max_request_mb * 1e6),
                                                       "max_rows": int(max_rows), **guard}, indent=2), "--dir")


def read_limits(folder: Path) -> dict:
    f = Path(folder) / LIMITS_FILE
    limits = {"max_request_bytes": int(DEFAULT_MAX_REQUEST_MB * 1e6), "max_rows": DEFAULT_MAX_ROWS,
              "request_timeout": DEFAULT_REQUEST_TIMEOUT, "max_connections": DEFAULT_MAX_CONNECTIONS,
              "api_key_file": None, "repository": False}
    if f.is_file():
        limits.update(json.loads(f.read_text()))
    return limits


def launch() -> None:
    """``python -c "from xcompile.serving.limits import launch; launch()" start FOLDER``: MLServer with the
    request limits and guards of ``guard.py`` installed on its REST and gRPC servers."""
    import os

    from . import guard
    folder = Path(sys.argv[-1])
    parent = os.environ.get("XCOMPILE_SERVE_PARENT")
    if parent:  # die with `xcompile serve` (even its SIGKILL), removing a temporary settings folder
        guard.watch_parent(int(parent), os.environ.get("XCOMPILE_SERVE_TMP"))
    limits = read_limits(folder)
    key = guard.read_api_key(limits["api_key_file"]) if limits.get("api_key_file") else None
    import mlserver.rest.server as rest
    create_app = rest.create_app

    def limited_app(*args, **kwargs):
        app = create_app(*args, **kwargs)
        app.add_middleware(BodyLimit, max_bytes=limits["max_request_bytes"], timeout=limits["request_timeout"])
        app.add_middleware(guard.RequestGuard, api_key=key, repository=bool(limits["repository"]))  # outermost
        return app

    rest.create_app = limited_app
    get_config = rest.RESTServer._get_config

    def guarded_config(self):
        cfg = get_config(self)
        cfg.http = guard.guarded_protocol(limits["request_timeout"], int(limits["max_connections"]))
        cfg.h11_max_incomplete_event_size = guard.MAX_HEADER_BYTES
        cfg.timeout_keep_alive = 5
        return cfg

    rest.RESTServer._get_config = guarded_config
    _guard_grpc(key, bool(limits["repository"]))
    from mlserver.cli.main import main
    main()


def _guard_grpc(key, repository: bool) -> None:
    """gRPC: the API key / repository interceptor, 413 as RESOURCE_EXHAUSTED, undecodable raw contents as
    INVALID_ARGUMENT (MLServer answers UNKNOWN and INTERNAL)."""
    import types

    import grpc
    import mlserver.grpc.converters as conv
    import mlserver.grpc.server as gserver
    import mlserver.grpc.utils as gutils
    from mlserver.errors import InferenceError

    from . import guard
    gutils.STATUS_CODE_MAPPING[413] = grpc.StatusCode.RESOURCE_EXHAUSTED
    aio = gserver.aio

    def server(*args, interceptors=(), **kwargs):
        return aio.server(*args, interceptors=[guard.grpc_guard(key, repository), *interceptors], **kwargs)

    gserver.aio = types.SimpleNamespace(server=server)
    to_types = conv.ModelInferRequestConverter.to_types.__func__

    def checked_to_types(cls, pb_object):
        try:
            return to_types(cls, pb_object)
        except Exception as e:  # noqa: BLE001 - struct.error, ValueError: contents that disagree with the shape
            raise InferenceError(f"request contents do not match the declared shapes and datatypes "
                                 f"({' '.join(str(e).split())[:160]})") from None

    conv.ModelInferRequestConverter.to_types = classmethod(checked_to_types)
