"""A real Open Inference Protocol (KServe V2) server: MLServer with xcompile's runtime, started on
127.0.0.1 by the test in its own process, queried with tritonclient.http (a real V2 client).

MLServer's protobuf modules clash with tritonclient.grpc's, so the server runs in a child process and
this process only imports tritonclient.http. MLServer's REST API has no binary-tensor extension: every
tensor goes as JSON (lossless for float32)."""
import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest

import xcompile
from xcompile.write.writer import save

if importlib.util.find_spec("mlserver") is None:  # never import mlserver here (protobuf clash)
    pytest.skip("mlserver is not installed (pip install -e '.[serve]')", allow_module_level=True)
th = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from xcompile.serving.server import MLServerProcess  # noqa: E402

DATA = Path(xcompile.__file__).parent / "data"
MODEL = "digits"


@pytest.fixture(scope="module")
def explainer_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlserver_model")
    src = DATA / "digits_cnn.onnx"
    if not src.is_file():  # fallback: a tiny Conv+Relu+Flatten+Gemm classifier
        from test_serving_triton import tiny_two_output_model
        src = tiny_two_output_model(d / "tiny.onnx")
    p = d / "digits_gradient.onnx"
    save(xcompile.compile(src, "gradient"), p)
    return p


@pytest.fixture(scope="module")
def local(explainer_path):
    return xcompile.Explainer(explainer_path)


@pytest.fixture(scope="module")
def digits(local):
    f = DATA / "digits_heldout.npz"
    if f.is_file():
        with np.load(f) as z:
            return z["x"].astype(np.float32)
    return np.random.default_rng(0).random((450, *local.sample_shape), dtype=np.float32)


@pytest.fixture(scope="module")
def server(explainer_path, tmp_path_factory):
    with MLServerProcess(explainer_path, tmp_path_factory.mktemp("mlserver"), name=MODEL,
                         ready_timeout=120, threads=1) as srv:
        yield srv
    assert srv.proc.poll() is not None  # stopped


def request(local, x, target=None):
    inputs = [th.InferInput(local.data_input.name, list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x, binary_data=False)
    if target is not None:
        inputs.append(th.InferInput("target", [len(target)], "INT64"))
        inputs[1].set_data_from_numpy(np.asarray(target, np.int64), binary_data=False)
    outputs = [th.InferRequestedOutput(n, binary_data=False) for n in (local.score_output, "relevance")]
    return inputs, outputs


def infer(client, local, x, target=None):
    inputs, outputs = request(local, x, target)
    r = client.infer(MODEL, inputs, outputs=outputs)
    return r.as_numpy(local.score_output), r.as_numpy("relevance")


def test_server_metadata(server, local):
    c = th.InferenceServerClient(server.url)
    assert c.is_server_live() and c.is_model_ready(MODEL)
    meta = c.get_model_metadata(MODEL)
    assert [i["name"] for i in meta["inputs"]] == [local.data_input.name, "target"]
    assert [o["name"] for o in meta["outputs"]][:2] == [local.score_output, "relevance"]


def test_round_trip_equals_local_explainer(server, local, digits):
    c = th.InferenceServerClient(server.url)
    x = digits[:16]
    t = np.array([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -1, 3, 3, -1, 0], np.int64)
    scores, rel = infer(c, local, x, t)
    ref = local.explain(x, t)
    assert scores.dtype == np.float32 and rel.dtype == np.float32
    assert rel.shape == x.shape
    np.testing.assert_array_equal(scores, ref.scores)
    np.testing.assert_array_equal(rel, ref.relevance)
    scores, rel = infer(c, local, x)  # no target: the predicted class
    np.testing.assert_array_equal(rel, local.explain(x).relevance)


def concurrent_check(url, local, digits, n_threads=8, n_req=50):
    """n_threads client threads x n_req requests each, every request distinct (rows, batch size, targets
    and a per-request offset); every reply must equal the local Explainer on ITS OWN request."""
    rng = np.random.default_rng(7)
    jobs = []
    for k in range(n_threads * n_req):
        b = 1 + k % 4
        rows = rng.choice(len(digits), b, replace=False)
        x = digits[rows] + np.float32(k) * np.float32(1e-3)  # unique per request
        t = rng.integers(-1, 10, b).astype(np.int64)
        jobs.append((x, t))
    expected = [local.explain(x, t) for x, t in jobs]
    errors, mismatches, done = [], [], [0] * n_threads

    def worker(w):
        client = th.InferenceServerClient(url)  # one client per thread
        try:
            for k in range(w, len(jobs), n_threads):
                x, t = jobs[k]
                try:
                    scores, rel = infer(client, local, x, t)
                except Exception as e:  # noqa: BLE001
                    errors.append((k, repr(e)))
                    continue
                if not (np.array_equal(scores, expected[k].scores) and np.array_equal(rel, expected[k].relevance)):
                    mismatches.append(k)
                done[w] += 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(n_threads)]
    for th_ in threads:
        th_.start()
    for th_ in threads:
        th_.join(timeout=300)
    assert not any(th_.is_alive() for th_ in threads)
    assert not errors, errors[:3]
    assert not mismatches, f"{len(mismatches)} replies did not match their own request: {mismatches[:10]}"
    assert sum(done) == n_threads * n_req


def test_concurrent_clients_get_their_own_rows(server, local, digits):
    concurrent_check(server.url, local, digits)


COUNTING = """
import sys
from xcompile.serving.mlserver_runtime import XCompileRuntime

class Counting(XCompileRuntime):
    async def predict(self, payload):
        print("XC_BATCH_ROWS", payload.inputs[0].shape[0], file=sys.stderr, flush=True)
        return await super().predict(payload)
"""


def test_concurrent_clients_with_adaptive_batching(explainer_path, local, digits, tmp_path):
    """MLServer adaptive batching merges concurrent requests into one explainer call and splits the
    reply: rows must still go back to their own request, bit for bit."""
    (tmp_path / "counting_runtime.py").write_text(COUNTING)  # the server's cwd is the settings folder
    with MLServerProcess(explainer_path, tmp_path, name=MODEL, ready_timeout=120, threads=1, max_batch=32,
                         max_batch_time=0.005, runtime="counting_runtime.Counting") as srv:
        concurrent_check(srv.url, local, digits)
    rows = [int(line.split()[1]) for line in srv.log.read_text().splitlines() if line.startswith("XC_BATCH_ROWS")]
    assert sum(rows) == sum(1 + k % 4 for k in range(400))
    assert max(rows) > 4, "no request was batched with another one"


@pytest.mark.parametrize("case", ["shape", "rank", "target_range", "unknown_input"])
def test_bad_request_gets_clean_error_and_server_keeps_serving(server, local, digits, case):
    c = th.InferenceServerClient(server.url)
    if case == "shape":
        x = np.zeros((2, 1, 9, 9), np.float32)
        inputs, _ = request(local, x)
        want = "expects [N, 1, 8, 8]"
    elif case == "rank":
        x = np.zeros((2, 64), np.float32)
        inputs, _ = request(local, x)
        want = "has shape [2, 64]"
    elif case == "target_range":
        inputs, _ = request(local, digits[:2], [0, 99])
        want = "target 99 is out of range"
    else:
        inp = th.InferInput("pixels", [1, 1, 8, 8], "FP32")
        inp.set_data_from_numpy(digits[:1], binary_data=False)
        inputs = [inp]
        want = "unknown input 'pixels'"
    with pytest.raises(InferenceServerException) as e:
        c.infer(MODEL, inputs)
    msg = str(e.value)
    assert "400" in msg and want in msg, msg
    assert "Traceback" not in msg and len(msg.splitlines()) == 1
    assert server.proc.poll() is None
    scores, rel = infer(c, local, digits[:3], [1, 2, 3])  # still serving, still right
    np.testing.assert_array_equal(rel, local.explain(digits[:3], [1, 2, 3]).relevance)


def test_cli_serve_starts_and_stops(explainer_path, local, digits, tmp_path):
    """`xcompile serve` as documented: serves on loopback; SIGTERM stops it and its MLServer child."""
    import signal
    import subprocess
    import sys
    import urllib.request

    from xcompile.serving.server import free_port, wait_ready
    port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-c", "from xcompile.cli import main; main()", "serve", str(explainer_path),
           "--name", MODEL, "--port", str(port), "--grpc-port", str(grpc_port), "--threads", "1",
           "--dir", str(tmp_path / "settings")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}", MODEL, timeout=120, proc=proc)
        c = th.InferenceServerClient(f"127.0.0.1:{port}")
        _, rel = infer(c, local, digits[:4], [0, 1, 2, 3])
        np.testing.assert_array_equal(rel, local.explain(digits[:4], [0, 1, 2, 3]).relevance)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    with pytest.raises(OSError):  # the MLServer child is gone too
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)


def test_parallel_workers(explainer_path, local, digits, tmp_path):
    """MLServer parallel_workers (inference in worker processes): same answers, same clean errors."""
    with MLServerProcess(explainer_path, tmp_path, name=MODEL, ready_timeout=120, threads=1, workers=2) as srv:
        c = th.InferenceServerClient(srv.url)
        _, rel = infer(c, local, digits[:8], np.arange(8))
        np.testing.assert_array_equal(rel, local.explain(digits[:8], np.arange(8)).relevance)
        inputs, _ = request(local, np.zeros((2, 1, 9, 9), np.float32))
        with pytest.raises(InferenceServerException, match=r"400.*expects \[N, 1, 8, 8\]"):
            c.infer(MODEL, inputs)
        concurrent_check(srv.url, local, digits, n_threads=4, n_req=10)


# ------------------------------------------------------------------ request limits (docs: README "Serving limits")
def _post(url, model, body: bytes, chunked: bool = False):
    """Raw HTTP POST (no client-side checks): -> (status, parsed JSON body)."""
    import http.client
    import json
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        if chunked:
            def pieces():
                for i in range(0, len(body), 1 << 16):
                    yield body[i:i + (1 << 16)]
            conn.request("POST", f"/v2/models/{model}/infer", body=pieces(), encode_chunked=True,
                         headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        else:
            conn.request("POST", f"/v2/models/{model}/infer", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    except (ConnectionError, BrokenPipeError):  # the server answered 413 and closed before the body was sent
        return 413, {"error": "connection closed"}
    finally:
        conn.close()


def _v2_body(x, name="input", datatype="FP32", shape=None, extra=()):
    import json
    inputs = [{"name": name, "datatype": datatype, "shape": list(shape or x.shape), "data": x.reshape(-1).tolist()}]
    return json.dumps({"inputs": inputs + list(extra)}).encode()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_request_limits_413_then_serving_and_memory_back(explainer_path, local, digits, tmp_path):
    with MLServerProcess(explainer_path, tmp_path, name=MODEL, ready_timeout=120, threads=1,
                         max_request_mb=1, max_rows=8) as srv:
        name = local.data_input.name
        ok = _v2_body(digits[:2], name)
        status, js = _post(srv.url, MODEL, ok)
        assert status == 200, js
        idle = _rss_kb(srv.proc.pid)
        big = b'{"inputs": [' + b" " * 3_000_000 + b"]}"
        for _ in range(5):
            status, js = _post(srv.url, MODEL, big)                       # Content-Length over the limit
            assert status == 413, js
            status, js = _post(srv.url, MODEL, big, chunked=True)         # streamed, no Content-Length
            assert status == 413, js
        status, js = _post(srv.url, MODEL, _v2_body(np.zeros((9, 1, 8, 8), np.float32), name))
        assert status == 413 and "over the limit of 8" in js["error"], js
        bad = {
            "fp64": _v2_body(digits[:1].astype(np.float64), name, "FP64"),
            "negative dim": _v2_body(digits[:1], name, shape=[-2, 1, 8, 8]),
            "twice": _v2_body(digits[:1], name, extra=[json_input(name, digits[:1])]),
            "empty batch": _v2_body(np.zeros((0, 1, 8, 8), np.float32), name),
        }
        for case, body in bad.items():
            status, js = _post(srv.url, MODEL, body)
            assert 400 <= status < 500 and "Traceback" not in js.get("error", "") and len(js["error"].splitlines()) == 1, (case, status, js)
        status, js = _post(srv.url, MODEL, ok)                              # still serving
        assert status == 200, js
        assert _rss_kb(srv.proc.pid) <= 1.5 * idle, (idle, _rss_kb(srv.proc.pid))


def json_input(name, x):
    return {"name": name, "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}
