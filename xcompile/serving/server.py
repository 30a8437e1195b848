"""Launch MLServer with the xcompile runtime (no mlserver import here: safe in any process).

``write_mlserver_dir`` writes settings.json + model-settings.json; ``start_mlserver`` starts
``mlserver start DIR`` as a child process; ``wait_ready`` polls the V2 readiness endpoint with a
bounded timeout. ``MLServerProcess`` bundles the three as a context manager (used by tests and
tools/serve_bench.py).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import onnx

from ..errors import XCompileError
from ..files import check_output, safe_name, write_text
from ..options import as_float, in_range, positive_int
from .limits import DEFAULT_MAX_REQUEST_MB, DEFAULT_MAX_ROWS, write_limits

RUNTIME = "xcompile.serving.mlserver_runtime.XCompileRuntime"
V2_DTYPES = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.DOUBLE: "FP64", onnx.TensorProto.FLOAT16: "FP16",
             onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT32: "INT32", onnx.TensorProto.BOOL: "BOOL",
             onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.INT8: "INT8"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _metadata(explainer: Path):
    m = onnx.load(str(explainer), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}

    def meta(vi):
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": vi.name, "datatype": V2_DTYPES.get(t.elem_type, "FP32"), "shape": shape}

    return [meta(i) for i in m.graph.input if i.name not in inits], [meta(o) for o in m.graph.output]


def write_mlserver_dir(explainer, folder, name: str = "explainer", host: str = "127.0.0.1", http_port: int = 8080,
                       grpc_port: int = 8081, workers: int = 0, threads: int | None = None, device: str = "cpu",
                       max_batch: int = 0, max_batch_time: float = 0.0, runtime: str = RUNTIME,
                       max_request_mb: float = DEFAULT_MAX_REQUEST_MB, max_rows: int = DEFAULT_MAX_ROWS) -> Path:
    """Write an MLServer settings folder serving ``explainer`` as model ``name``; return the folder.

    ``workers`` = MLServer ``parallel_workers`` (0: inference in the server process, requests overlap
    on onnxruntime's thread-safe ``run``); ``max_batch``/``max_batch_time`` = MLServer adaptive batching
    (0 = off). ``runtime``: the MLModel class path (a subclass of XCompileRuntime, e.g. with custom
    pre-processing). Metrics are disabled (one port less to pick). ``max_request_mb`` / ``max_rows``: the request
    limits (HTTP 413 over them; gRPC RESOURCE_EXHAUSTED over the message size), see ``limits.py``.
    """
    explainer = Path(os.fspath(explainer)).resolve()
    if not explainer.is_file():
        raise XCompileError(f"{explainer}: no such explainer file")
    safe_name(name)
    if workers < 0 or max_batch < 0 or not max_batch_time >= 0 or max_batch_time == float("inf"):
        raise XCompileError("--workers, --max-batch and --max-batch-time must be >= 0 (and finite)")
    if threads is not None and threads < 1:
        raise XCompileError(f"--threads {threads}: must be >= 1")
    for flag, port in (("--port", http_port), ("--grpc-port", grpc_port)):
        if not 1 <= int(port) <= 65535:
            raise XCompileError(f"{flag} {port}: a TCP port in 1..65535")
    try:
        max_request_mb = in_range(as_float, 0, 4096, lo_open=True)(max_request_mb)
        max_rows = positive_int(max_rows)
    except (TypeError, ValueError) as e:
        raise XCompileError(f"--max-request-mb / --max-rows: {e}") from None
    folder = check_output(folder, what="--dir", folder=True)
    model_dir = folder / name
    settings = {"host": host, "http_port": http_port, "grpc_port": grpc_port, "parallel_workers": workers,
                "metrics_endpoint": None, "debug": False, "load_models_at_startup": True,
                "model_repository_root": str(folder.resolve()),
                "grpc_max_message_length": int(max_request_mb * 1e6)}
    inputs, outputs = _metadata(explainer)
    extra = {"device": device, "max_rows": max_rows}
    if threads:
        extra["threads"] = int(threads)
    model = {"name": name, "implementation": runtime, "inputs": inputs, "outputs": outputs,
             "parameters": {"uri": str(explainer), "extra": extra}}
    if max_batch > 0:
        model.update(max_batch_size=int(max_batch), max_batch_time=float(max_batch_time))
    write_text(folder / "settings.json", json.dumps(settings, indent=2), "--dir")
    write_limits(folder, max_request_mb, max_rows)
    write_text(model_dir / "model-settings.json", json.dumps(model, indent=2), "--dir")
    return folder


def mlserver_command(folder) -> list:
    """MLServer's own ``start`` command, with xcompile's request-body limit installed on its REST app."""
    return [sys.executable, "-c", "from xcompile.serving.limits import launch; launch()", "start", str(folder)]


def start_mlserver(folder, log=None, inherit: bool = False) -> subprocess.Popen:
    """Start ``mlserver start FOLDER`` in its own process group; stdout/stderr go to ``log`` (a path) if
    given, to this process's stdout/stderr if ``inherit``, else nowhere."""
    out = open(log, "wb") if log else (None if inherit else subprocess.DEVNULL)  # noqa: SIM115
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the server imports the same xcompile as this process (not another copy installed elsewhere)
    home = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([home] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        return subprocess.Popen(mlserver_command(folder), stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=str(folder), start_new_session=True)
    finally:
        if log:
            out.close()


def wait_ready(url: str, model: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> float:
    """Poll ``url/v2/models/MODEL/ready`` until 200; return the seconds waited. Raise on timeout/exit."""
    t0 = time.monotonic()
    probe = f"{url.rstrip('/')}/v2/models/{model}/ready"
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"MLServer exited with code {proc.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(probe, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"MLServer not ready at {probe} after {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the server's process group (it started its own session), then SIGKILL if needed."""
    import signal
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


class MLServerProcess:
    """``with MLServerProcess(explainer, folder) as srv: srv.url, srv.name`` - a loopback MLServer."""

    def __init__(self, explainer, folder, name: str = "explainer", host: str = "127.0.0.1",
                 ready_timeout: float = 90.0, **settings):
        self.name, self.host = name, host
        self.http_port = settings.pop("http_port", None) or free_port(host)
        grpc_port = settings.pop("grpc_port", None) or free_port(host)
        self.folder = write_mlserver_dir(explainer, folder, name, host, self.http_port, grpc_port, **settings)
        self.log = Path(os.fspath(folder)) / "mlserver.log"
        self.ready_timeout = ready_timeout
        self.proc = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def __enter__(self):
        self.proc = start_mlserver(self.folder, self.log)
        try:
            self.startup_s = wait_ready(f"http://{self.url}", self.name, self.ready_timeout, self.proc)
        except BaseException:
            self.__exit__(None, None, None)
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"MLServer did not start; log tail:\n{tail}") from None
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            stop(self.proc)
        return False
