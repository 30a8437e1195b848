"""What one client cannot do to ``xcompile serve`` (docs/deployment.md "Serving: security").

Installed by ``limits.launch()`` in the MLServer process (no mlserver import at module level):

* ``guarded_protocol(...)``: uvicorn's h11 protocol with a deadline for a request's headers (``header_timeout``:
  a connection that has not sent a complete request head within it is closed, whether it is new or kept alive:
  slowloris), at most ``max_connections`` open connections (more are closed on arrival, so file descriptors stay
  free for served clients), and h11's bound on the header block (``MAX_HEADER_BYTES``).
* ``HttpMiddleware``: the frame both ASGI middlewares share (``RequestGuard`` here, ``limits.BodyLimit``).
* ``RequestGuard`` (ASGI, in front of ``BodyLimit``): at most ``MAX_HEADERS`` header lines (431: MLServer's
  header handling is quadratic in their number), the repository endpoints (``/v2/repository/...``: load /
  unload) answered 403 unless enabled, and, with an API key, 401 for any request without ``X-API-Key: KEY`` or
  ``Authorization: Bearer KEY`` (health endpoints included).
* ``GrpcGuard``: the same API key (metadata ``x-api-key`` or ``authorization``) and repository rule on gRPC.
* ``watch_parent(pid, folder)``: the server process group is killed (and the temporary settings folder removed)
  when the ``xcompile serve`` process that started it dies, even by SIGKILL.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import os
import shutil
import signal
import threading
import time

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
REPOSITORY_PATH = "/v2/repository"
GRPC_REPOSITORY = ("RepositoryModelLoad", "RepositoryModelUnload", "RepositoryIndex")


def _json(status: int, message: str):
    body = json.dumps({"error": " ".join(message.split())}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})


def key_matches(given, key: str) -> bool:
    if isinstance(given, bytes):
        given = given.decode("latin-1")
    if not isinstance(given, str):
        return False
    given = given.strip()
    if given.lower().startswith("bearer "):
        given = given[7:].strip()
    return hmac.compare_digest(given.encode("latin-1", "replace"), key.encode("latin-1", "replace"))


class HttpMiddleware:
    """An ASGI middleware's frame: scopes other than HTTP (lifespan) go straight to the app; an HTTP request goes
    to ``http()``, which either refuses it with ``_reject`` (a one-line JSON error, the connection closed) or
    hands it on to ``self.app``."""

    def __init__(self, app):
        self.app = app

    async def _reject(self, send, status: int, message: str) -> None:
        start, body = _json(status, message)
        await send(start)
        await send(body)

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        return await self.http(scope, receive, send)

    async def http(self, scope, receive, send):
        raise NotImplementedError


class RequestGuard(HttpMiddleware):
    """ASGI middleware: header count, repository endpoints, API key - checked before anything else runs."""

    def __init__(self, app, api_key: str | None = None, repository: bool = False):
        super().__init__(app)
        self.api_key, self.repository = api_key, repository

    async def http(self, scope, receive, send):
        headers = scope.get("headers") or []
        if len(headers) > MAX_HEADERS:
            return await self._reject(send, 431, f"{len(headers)} header lines; at most {MAX_HEADERS}")
        if self.api_key is not None:
            given = [v for k, v in headers if k.lower() in (b"x-api-key", b"authorization")]
            if not any(key_matches(v, self.api_key) for v in given):
                return await self._reject(send, 401, "missing or wrong API key (X-API-Key or Authorization: Bearer)")
        if not self.repository and str(scope.get("path", "")).startswith(REPOSITORY_PATH):
            return await self._reject(send, 403, "the model repository endpoints are off (xcompile serve "
                                                 "--enable-repository turns them on)")
        return await self.app(scope, receive, send)


def guarded_protocol(header_timeout: float, max_connections: int):
    """A subclass of uvicorn's H11Protocol with a request-head deadline and a connection cap."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._waiting_since = self.loop.time()
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._tick = self.loop.call_later(1.0, self._check_head)

        def _waiting(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _check_head(self):
            if self.transport.is_closing():
                return
            if self._waiting() and self.loop.time() - self._waiting_since > header_timeout:
                self.transport.close()  # no complete request head in time: slowloris or a dead client
                return
            self._tick = self.loop.call_later(1.0, self._check_head)

        def on_response_complete(self):
            self._waiting_since = self.loop.time()
            super().on_response_complete()

        def connection_lost(self, exc):
            tick = getattr(self, "_tick", None)
            if tick is not None:
                tick.cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def grpc_guard(api_key: str | None, repository: bool):
    """A grpc.aio server interceptor: API key and repository endpoints, as on REST."""
    import grpc

    def _deny(code, details):
        async def abort(request, context):
            await context.abort(code, details)
        return grpc.unary_unary_rpc_method_handler(abort)

    class GrpcGuard(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            if api_key is not None:
                meta = details.invocation_metadata or ()
                given = [m.value if hasattr(m, "value") else m[1] for m in meta
                         if (m.key if hasattr(m, "key") else m[0]).lower() in ("x-api-key", "authorization")]
                if not any(key_matches(v, api_key) for v in given):
                    return _deny(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong API key (metadata x-api-key)")
            if not repository and details.method.rsplit("/", 1)[-1] in GRPC_REPOSITORY:
                return _deny(grpc.StatusCode.PERMISSION_DENIED, "the model repository endpoints are off "
                             "(xcompile serve --enable-repository turns them on)")
            return await continuation(details)

    return GrpcGuard()


def read_api_key(path) -> str:
    """The first line of ``path`` (a secret file, not a command-line argument: `ps` shows arguments)."""
    from pathlib import Path

    from ..errors import XCompileError, clean
    from ..guards import regular_file
    path = regular_file(path, "--api-key-file")
    if path.stat().st_size > 4096:
        raise XCompileError(f"--api-key-file {clean(path)}: over 4096 bytes; give one line with the key")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise XCompileError(f"--api-key-file {clean(path)}: not readable ({type(e).__name__})") from None
    key = lines[0].strip() if lines else ""
    if len(key) < 16 or not key.isascii() or not key.isprintable() or " " in key:
        raise XCompileError(f"--api-key-file {clean(path)}: the key (its first line) must be at least 16 printable "
                            "ASCII characters without spaces")
    return key


def watch_parent(parent: int, folder: str | None) -> None:
    """A daemon thread: when ``parent`` is gone (this process was re-parented), remove ``folder`` (the temporary
    settings) and SIGKILL this whole process group (MLServer and its workers)."""
    def run():
        while True:
            if os.getppid() != parent:
                if folder:
                    with contextlib.suppress(OSError):
                        shutil.rmtree(folder)
                os.killpg(os.getpgid(0), signal.SIGKILL)
            time.sleep(0.2)

    threading.Thread(target=run, name="xcompile-parent-watch", daemon=True).start()
