"""`xcompile serve` against hostile clients (docs/deployment.md "Serving: security"): one `xcompile serve` process on
127.0.0.1 with an API key and a 2 s request deadline; every request loop is bounded in count and time; traffic
goes to 127.0.0.1 only. The last test kills `serve` with SIGKILL and checks that nothing is left listening and
its temporary folder is gone."""
import http.client
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from clirun import ENV, cli, inproc, one_line_error

import xcompile
from xcompile.write.writer import save

if importlib.util.find_spec("mlserver") is None:
    pytest.skip("mlserver is not installed (pip install -e '.[serve]')", allow_module_level=True)

from xcompile.serving.server import free_port  # noqa: E402

DATA = Path(xcompile.__file__).parent / "data"
KEY = "k3y-for-tests-0123456789"
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def explainer(tmp_path_factory):
    d = tmp_path_factory.mktemp("hserve")
    p = d / "digits_gradient.onnx"
    save(xcompile.compile(DATA / "digits_cnn.onnx", "gradient"), p)
    return p


@pytest.fixture(scope="module")
def server(explainer, tmp_path_factory):
    d = tmp_path_factory.mktemp("hserve_run")
    key = d / "key.txt"
    key.write_text(KEY + "\n")
    port, grpc_port = free_port(), free_port()
    tmpdir = d / "tmp"
    tmpdir.mkdir()
    log = open(d / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "xcompile", "serve", str(explainer), "--name", "digits",
                             "--port", str(port), "--grpc-port", str(grpc_port), "--threads", "1",
                             "--request-timeout", "2", "--max-connections", "400", "--api-key-file", str(key)],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(ENV, TMPDIR=str(tmpdir)))
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        assert proc.poll() is None, (d / "serve.log").read_text()[-3000:]
        if b"serving " in (d / "serve.log").read_bytes():
            break
        time.sleep(0.3)
    else:
        pytest.fail("serve did not start: " + (d / "serve.log").read_text()[-3000:])
    srv = type("S", (), dict(proc=proc, port=port, grpc_port=grpc_port, tmpdir=tmpdir, log=d / "serve.log"))
    yield srv
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    log.close()


def request(srv, method, path, body=None, headers=None, key=KEY, timeout=10):
    c = http.client.HTTPConnection(HOST, srv.port, timeout=timeout)
    h = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {}), **(headers or {})}
    c.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data, {k.lower(): v for k, v in r.getheaders()}


def infer_body(x, target=None, rid=None):
    inputs = [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]
    if target is not None:
        inputs.append({"name": "target", "shape": [len(target)], "datatype": "INT64", "data": target})
    body = {"inputs": inputs}
    if rid is not None:
        body["id"] = rid
    return body


def x_rows(n=2):
    with np.load(DATA / "digits_heldout.npz") as z:
        return z["x"][:n].astype(np.float32)


def test_api_key_guards_every_endpoint(server):
    for path in ("/v2/health/ready", "/v2/models/digits/ready", "/v2/models/digits"):
        assert request(server, "GET", path, key=None)[0] == 401
        assert request(server, "GET", path, key="wrong-key-wrong-key")[0] == 401
    assert request(server, "GET", "/v2/models/digits/ready", headers={"Authorization": f"Bearer {KEY}"}, key=None)[0] == 200
    assert request(server, "POST", "/v2/models/digits/infer", infer_body(x_rows()), key=None)[0] == 401


def test_repository_endpoints_off(server):
    status, body, _ = request(server, "POST", "/v2/repository/models/digits/unload", {})
    assert status == 403 and b"enable-repository" in body
    assert request(server, "GET", "/v2/models/digits/ready")[0] == 200  # still loaded


def test_explained_class_is_n_and_ids_checked(server):
    status, body, headers = request(server, "POST", "/v2/models/digits/infer", infer_body(x_rows(3), rid="req-1"))
    assert status == 200, body
    out = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert out["explained_class"]["shape"] == [3]
    assert headers.get("ce-id") == "req-1"
    for rid in ("x" * 1_000_000, "é", "a\r\nSet-Cookie: x=1", "a\x00b"):
        status, body, headers = request(server, "POST", "/v2/models/digits/infer", infer_body(x_rows(1), rid=rid))
        assert status in (400, 413) and "ce-id" not in headers, (status, body[:200])


def test_header_count_and_block_bounded(server):
    many = {f"X-{i}": "v" for i in range(500)}  # 500 lines, ~5 KB: under h11's 16 KiB block, over 100 lines
    status, body, _ = request(server, "GET", "/v2/models/digits/ready", headers=many)
    assert status == 431 and b"header lines" in body
    s = socket.create_connection((HOST, server.port), timeout=10)
    s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert s.recv(64).startswith(b"HTTP/1.1 4")  # a 40 KB header block is refused by the parser
    s.close()


def test_fractional_int64_target_refused(server):
    status, body, _ = request(server, "POST", "/v2/models/digits/infer", infer_body(x_rows(2), target=[1.5, 0]))
    assert status == 400 and b"whole numbers" in body


def _slow_head(port, n, stop):
    socks = []
    for _ in range(n):
        s = socket.create_connection((HOST, port), timeout=5)
        s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n")  # never finished
        socks.append(s)
    stop.wait(20)
    return socks


def test_half_open_connections_and_header_flood_do_not_starve(server):
    """300 connections that never finish their head, and a client sending 10k headers in a loop, while valid
    requests are answered in under 1 s; the half-open connections are closed by the 2 s deadline."""
    body = infer_body(x_rows(2))
    baseline = 0.0  # the worst unattacked latency: on an idle machine ~20 ms; on a machine shared by many jobs more
    for _ in range(5):
        t0 = time.monotonic()
        assert request(server, "POST", "/v2/models/digits/infer", body)[0] == 200
        baseline = max(baseline, time.monotonic() - t0)
    socks = [socket.create_connection((HOST, server.port), timeout=5) for _ in range(300)]
    for s in socks:
        s.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    stop = threading.Event()
    flood_status = []

    def flood():
        hdrs = "".join(f"X-{i}: v\r\n" for i in range(10_000)).encode()
        for _ in range(20):
            if stop.is_set():
                return
            try:
                s = socket.create_connection((HOST, server.port), timeout=5)
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n" + hdrs + b"\r\n")
                flood_status.append(s.recv(64)[:12])
                s.close()
            except OSError:
                flood_status.append(b"closed")

    t = threading.Thread(target=flood)
    t.start()
    try:
        worst = 0.0
        for _ in range(10):
            t0 = time.monotonic()
            status, data, _ = request(server, "POST", "/v2/models/digits/infer", body)
            worst = max(worst, time.monotonic() - t0)
            assert status == 200, data[:300]
        print(f"valid requests under attack: worst {worst * 1e3:.0f} ms (unattacked worst {baseline * 1e3:.0f} ms)")
        assert worst < 1.0 + 2 * baseline, (worst, baseline)  # under 1 s on an idle machine
    finally:
        stop.set()
        t.join(60)
    assert flood_status and all(not s.startswith(b"HTTP/1.1 200") for s in flood_status), flood_status[:3]
    time.sleep(3.5)  # past the 2 s head deadline (checked every second)
    closed = 0
    for s in socks:
        s.settimeout(1)
        try:
            closed += s.recv(1) == b""
        except OSError:
            closed += 1
        s.close()
    assert closed == 300


def test_connection_cap(server):
    """Over --max-connections (400 here) a connection is closed on arrival; descriptors stay free for others."""
    socks = [socket.create_connection((HOST, server.port), timeout=5) for _ in range(430)]
    try:
        closed = 0
        for s in socks[-30:]:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
        assert closed >= 25, closed
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)
    assert request(server, "GET", "/v2/models/digits/ready")[0] == 200


def test_slow_body_gets_408(server):
    s = socket.create_connection((HOST, server.port), timeout=10)
    s.sendall(f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
              "Transfer-Encoding: chunked\r\n\r\n1000000000000000000\r\nabc".encode())
    t0 = time.monotonic()
    reply = s.recv(64)
    s.close()
    assert reply.startswith(b"HTTP/1.1 4") and time.monotonic() - t0 < 6, reply


_GRPC_CLIENT = r"""
import sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
c = grpcclient.InferenceServerClient(sys.argv[1])
meta = {"x-api-key": sys.argv[2]}
def status(inputs, headers, unload=False):
    try:
        c.unload_model("digits", headers=headers) if unload else c.infer("digits", inputs, headers=headers)
    except InferenceServerException as e:
        return str(e.status())
    return "OK"
big = grpcclient.InferInput("input", [1025, 1, 8, 8], "FP32")
big.set_data_from_numpy(np.zeros((1025, 1, 8, 8), np.float32))
ok = grpcclient.InferInput("input", [1, 1, 8, 8], "FP32")
ok.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
ok._raw_content = ok._raw_content[:-4]  # contents shorter than the shape says
print(status([big], meta), status([big], {}), status([], meta, unload=True), status([ok], meta))
"""


def test_grpc_limits(server):
    # in a child: tritonclient.grpc's protobuf modules clash with MLServer's (duplicate inference.* symbols) in any
    # process that imported both, whatever test ran before
    # find_spec, not importorskip: importing it here would itself be the clash
    if importlib.util.find_spec("tritonclient") is None or importlib.util.find_spec("tritonclient.grpc") is None:
        pytest.skip("tritonclient[grpc] is not installed")
    r = subprocess.run([sys.executable, "-c", _GRPC_CLIENT, f"{HOST}:{server.grpc_port}", KEY], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    too_big, no_key, unload, short = r.stdout.split()
    assert "RESOURCE_EXHAUSTED" in too_big and "UNAUTHENTICATED" in no_key, r.stdout
    assert "PERMISSION_DENIED" in unload and "INVALID_ARGUMENT" in short, r.stdout


def test_serve_refuses_in_one_line(explainer, tmp_path, capsys):
    plain = DATA / "digits_cnn.onnx"
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(explainer.read_bytes()[:5000])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "settings.json").write_text("{}")
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        taken = busy.getsockname()[1]
        cases = {
            "port in use": ([explainer, "--port", taken], "cannot listen"),
            "classifier": ([plain], "not an xcompile explainer"),
            "truncated": ([truncated], "not a readable ONNX file"),
            "host": ([explainer, "--host", "999.1.1.1"], "--host"),
            "grpc overflow": ([explainer, "--max-request-mb", "4096"], "--max-request-mb"),
            "threads": ([explainer, "--threads", "100000"], "--threads"),
            "foreign dir": ([explainer, "--dir", foreign], "did not write"),
        }
        for label, (args, needle) in cases.items():
            t0 = time.monotonic()
            r = inproc(capsys, "serve", *args, "--grpc-port", free_port())  # every case fails before starting
            line = one_line_error(r)
            assert needle in line, (label, line)
            assert time.monotonic() - t0 < 30, label
    assert (foreign / "settings.json").read_text() == "{}" and sorted(os.listdir(foreign)) == ["settings.json"]
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "CUDA" in one_line_error(inproc(capsys, "serve", explainer, "--device", "cuda", "--port", free_port(),
                                               "--grpc-port", free_port()))
    r = cli("serve", explainer, "--port", free_port(), "--grpc-port", free_port(), timeout=60,
            prelude="import sys; sys.modules['mlserver'] = None")
    assert "xcompile[serve]" in one_line_error(r) and "serving" not in r.stdout


def test_failed_settings_write_leaves_nothing(explainer, tmp_path, monkeypatch):
    """A write that fails half-way (a full disk) leaves neither a partial --dir nor a temporary folder."""
    from xcompile.errors import XCompileError
    from xcompile.serving import server as srv

    def full_disk(*a, **k):
        raise XCompileError("--dir: cannot write it (No space left on device)")

    monkeypatch.setattr(srv, "write_limits", full_disk)
    with pytest.raises(XCompileError, match="No space left"):
        srv.write_mlserver_dir(explainer, tmp_path / "settings", "digits")
    assert os.listdir(tmp_path) == []


def test_kill_9_leaves_nothing_listening(server):
    """Last: SIGKILL of `serve` takes its MLServer child down and removes its temporary folder within 10 s."""
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        with socket.socket() as s:
            listening = s.connect_ex((HOST, server.port)) == 0
        if not listening and not any(server.tmpdir.iterdir()):
            break
        time.sleep(0.2)
    assert not listening, "the server still listens after its parent was killed"
    assert not list(server.tmpdir.glob("xcompile-serve-*")), list(server.tmpdir.iterdir())
