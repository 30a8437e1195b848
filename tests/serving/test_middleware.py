"""The ASGI middlewares of `xcompile serve` (docs/deployment.md "Serving: security", README "Serving limits") called
directly with hand-made ASGI scopes, no server: what each refuses (status, one-line JSON, the connection closed),
what passes through untouched (lifespan, a good request with its body replayed), in front of a recording app."""
from __future__ import annotations

import asyncio
import json

import pytest

from xcompile.serving.guard import MAX_HEADERS, HttpMiddleware, RequestGuard
from xcompile.serving.limits import BodyLimit

KEY = "k3y-for-tests-0123456789"


class App:
    """The inner application: records what reached it and answers 200 with the body it read."""

    def __init__(self):
        self.calls = []

    async def __call__(self, scope, receive, send):
        body = b""
        if scope["type"] == "http":
            while True:
                m = await receive()
                body += m.get("body", b"")
                if not m.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
        self.calls.append((scope["type"], body))


def call(mw, scope, chunks=(b"",), delay=0.0):
    """-> (messages sent by the middleware / app, the app's recorded calls)."""
    sent, pending = [], [{"type": "http.request", "body": c, "more_body": k < len(chunks) - 1}
                         for k, c in enumerate(chunks)]

    async def receive():
        if delay:
            await asyncio.sleep(delay)
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(m):
        sent.append(m)
    asyncio.run(mw(scope, receive, send))
    return sent


def http(path="/v2/models/digits/infer", headers=()):
    return {"type": "http", "path": path, "headers": list(headers)}


def refusal(sent):
    start, body = sent
    assert start["type"] == "http.response.start" and (b"connection", b"close") in start["headers"]
    message = json.loads(body["body"])["error"]
    assert "\n" not in message
    return start["status"], message


def test_base_passes_other_scopes_and_needs_a_check():
    app = App()
    call(HttpMiddleware(app), {"type": "lifespan"})
    assert app.calls == [("lifespan", b"")]
    with pytest.raises(NotImplementedError):
        call(HttpMiddleware(app), http())


def test_request_guard_refusals_and_pass():
    app = App()
    guard = RequestGuard(app, api_key=KEY, repository=False)
    many = [(b"x-h%d" % k, b"v") for k in range(MAX_HEADERS + 1)]
    assert refusal(call(guard, http(headers=many)))[0] == 431
    assert refusal(call(guard, http()))[0] == 401
    assert refusal(call(guard, http(headers=[(b"x-api-key", b"wrong-key-0123456789")])))[0] == 401
    status, message = refusal(call(guard, http("/v2/repository/models/digits/unload",
                                               headers=[(b"authorization", f"Bearer {KEY}".encode())])))
    assert status == 403 and "--enable-repository" in message
    assert not app.calls  # nothing refused reached the app
    sent = call(guard, http(headers=[(b"x-api-key", KEY.encode())]), [b"abc"])
    assert sent[0]["status"] == 200 and app.calls == [("http", b"abc")]
    call(RequestGuard(app, repository=True), http("/v2/repository/index"))  # no key set, repository on
    assert len(app.calls) == 2


def test_body_limit_refusals_and_replay():
    app = App()
    limit = BodyLimit(app, max_bytes=10, timeout=0.2)
    assert refusal(call(limit, http(headers=[(b"content-length", b"abc")])))[0] == 400
    status, message = refusal(call(limit, http(headers=[(b"content-length", b"11")])))
    assert status == 413 and "of 11 bytes" in message and "--max-request-mb" in message
    assert refusal(call(limit, http(), [b"123456", b"78901"]))[0] == 413  # streamed past the limit
    assert refusal(call(limit, http(), [b"1"], delay=0.5))[0] == 408      # not received in time
    assert not app.calls
    sent = call(limit, http(headers=[(b"content-length", b"10")]), [b"12345", b"67890"])
    assert sent[-1]["body"] == b"1234567890" and app.calls == [("http", b"1234567890")]
