"""Launch MLServer with the xcompile runtime (no mlserver import here: safe in any process).

``write_mlserver_dir`` writes settings.json + model-settings.json; ``start_mlserver`` starts
``mlserver start DIR`` as a child process; ``wait_ready`` polls the V2 readiness endpoint with a
bounded timeout. ``MLServerProcess`` bundles the three as a context manager (used by tests and
tools/serve_bench.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
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
from ..guards import threads as guard_threads
from ..options import as_float, in_range, positive_int
from .limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUEST_MB,
    DEFAULT_MAX_ROWS,
    DEFAULT_REQUEST_TIMEOUT,
    MAX_REQUEST_MB,
    write_limits,
)

MARKER = ".xcompile-serve"  # an --dir written by serve (rewritable)
RUNTIME = "xcompile.serving.mlserver_runtime.XCompileRuntime"
V2_DTYPES = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.DOUBLE: "FP64", onnx.TensorProto.FLOAT16: "FP16",
             onnx.TensorProto.INT64: "INT64", onnx.TensorProto.INT32: "INT32", onnx.TensorProto.BOOL: "BOOL",
             onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.INT8: "INT8"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _metadata(explainer: Path):
    from ..errors import clean
    try:
        m = onnx.load(str(explainer), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - truncated or not an ONNX file (protobuf DecodeError)
        raise XCompileError(f"{clean(explainer)}: not a readable ONNX file ({type(e).__name__})") from None
    if "target" not in {i.name for i in m.graph.input} or "relevance" not in {o.name for o in m.graph.output}:
        raise XCompileError(f"{clean(explainer)}: not an xcompile explainer (no 'target' input and 'relevance' "
                            "output); compile it first: xcompile compile MODEL -m METHOD -o explainer.onnx")
    inits = {t.name for t in m.graph.initializer}

    def meta(vi):
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": vi.name, "datatype": V2_DTYPES.get(t.elem_type, "FP32"), "shape": shape}


    return [meta(i) for i in m.graph.input if i.name not in inits], [meta(o) for o in m.graph.output]


def write_mlserver_dir(explainer, folder, name: str = "explainer", host: str = "127.0.0.1", http_port: int = 8080,
                       grpc_port: int = 8081, workers: int = 0, threads: int | None = None, device: str = "cpu",
                       max_batch: int = 0, max_batch_time: float = 0.0, runtime: str = RUNTIME,
                       max_request_mb: float = DEFAULT_MAX_REQUEST_MB, max_rows: int = DEFAULT_MAX_ROWS,
                       request_timeout: float = DEFAULT_REQUEST_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                       api_key_file=None, repository: bool = False) -> Path:
    """Write an MLServer settings folder serving ``explainer`` as model ``name``; return the folder.

    ``workers`` = MLServer ``parallel_workers`` (0: inference in the server process, requests overlap
    on onnxruntime's thread-safe ``run``); ``max_batch``/``max_batch_time`` = MLServer adaptive batching
    (0 = off). ``runtime``: the MLModel class path (a subclass of XCompileRuntime, e.g. with custom
    pre-processing). Metrics are disabled (one port less to pick). ``max_request_mb`` / ``max_rows``: the request
    limits (HTTP 413 over them; gRPC RESOURCE_EXHAUSTED over the message size), see ``limits.py``;
    ``request_timeout`` / ``max_connections`` / ``api_key_file`` / ``repository``: see ``guard.py``.
    The folder is written whole or not at all (a temporary folder beside it, then renamed); an existing folder
    is replaced only if it is empty or an earlier ``serve`` wrote it (MLServer would load, and import the code
    named by, any model-settings.json under it).
    """
    explainer = Path(os.fspath(explainer)).resolve()
    if not explainer.is_file():
        raise XCompileError(f"{explainer}: no such explainer file")
    safe_name(name)
    if workers < 0 or max_batch < 0 or not max_batch_time >= 0 or max_batch_time == float("inf"):
        raise XCompileError("--workers, --max-batch and --max-batch-time must be >= 0 (and finite)")
    threads = guard_threads(threads, "--threads")
    check_host(host)
    for flag, port in (("--port", http_port), ("--grpc-port", grpc_port)):
        if not 1 <= int(port) <= 65535:
            raise XCompileError(f"{flag} {port}: a TCP port in 1..65535")
    try:
        max_request_mb = in_range(as_float, 0, MAX_REQUEST_MB, lo_open=True)(max_request_mb)
        max_rows = in_range(positive_int, 1, 1_000_000)(max_rows)
        request_timeout = in_range(as_float, 0, 3600, lo_open=True)(request_timeout)
        max_connections = in_range(positive_int, 1, 100_000)(max_connections)
    except (TypeError, ValueError) as e:
        raise XCompileError(f"--max-request-mb / --max-rows / --request-timeout / --max-connections: {e}") from None
    if api_key_file is not None:
        from .guard import read_api_key
        read_api_key(api_key_file)
        api_key_file = str(Path(os.fspath(api_key_file)).resolve())
    folder = check_output(folder, what="--dir", folder=True).absolute()
    _check_reusable(folder)
    final = folder
    settings = {"host": host, "http_port": http_port, "grpc_port": grpc_port, "parallel_workers": workers,
                "metrics_endpoint": None, "debug": False, "load_models_at_startup": True,
                "model_repository_root": str(final),
                "grpc_max_message_length": int(max_request_mb * 1e6)}
    inputs, outputs = _metadata(explainer)
    extra = {"device": device, "max_rows": max_rows}
    if threads:
        extra["threads"] = int(threads)
    model = {"name": name, "implementation": runtime, "inputs": inputs, "outputs": outputs,
             "parameters": {"uri": str(explainer), "extra": extra}}
    if max_batch > 0:
        model.update(max_batch_size=int(max_batch), max_batch_time=float(max_batch_time))
    with staged_folder(final, "--dir") as folder:
        write_text(folder / MARKER, "written by xcompile serve\n", "--dir")
        write_text(folder / "settings.json", json.dumps(settings, indent=2), "--dir")
        write_limits(folder, max_request_mb, max_rows, request_timeout=request_timeout,
                     max_connections=max_connections, api_key_file=api_key_file, repository=bool(repository))
        write_text(folder / name / "model-settings.json", json.dumps(model, indent=2), "--dir")
    return final


def _check_reusable(folder: Path) -> None:
    """An existing --dir is rewritten only when it is empty or written by an earlier serve (its marker)."""
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        from ..errors import clean
        raise XCompileError(f"--dir {clean(folder)}: exists and holds files xcompile serve did not write (MLServer "
                            "would load every model-settings.json below it); give an empty or new folder")


@contextlib.contextmanager
def staged_folder(final: Path, what: str):
    """A new folder beside ``final`` to write into; when the block ends without an error it replaces ``final``
    (``replace_folder``); it is removed in every case: a full disk or a kill leaves the old folder or the new one,
    never half of one."""
    import secrets
    final.parent.mkdir(parents=True, exist_ok=True)
    folder = final.with_name(f".{final.name}.xc-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    folder.mkdir()
    try:
        yield folder
        replace_folder(folder, final, what)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def replace_folder(tmp: Path, final: Path, what: str) -> None:
    """Rename the finished ``tmp`` folder onto ``final`` (an old ``final`` moved aside first, then removed)."""
    old = None
    try:
        if final.exists():
            old = final.with_name(f".{final.name}.xc-old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
    except OSError as e:
        if old is not None and not final.exists():
            os.replace(old, final)
        raise XCompileError(f"{what} {final}: cannot write it ({e.strerror or type(e).__name__})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_host(host: str) -> None:
    """A host name or address this machine can resolve (``999.1.1.1`` is refused)."""
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError, ValueError):
        from ..errors import clean
        raise XCompileError(f"--host {clean(host)!r}: not an address or host name of this machine") from None


def check_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, int(port)))
        except OSError as e:
            raise XCompileError(f"{flag} {port}: cannot listen on {host}:{port} ({e.strerror or e}); "
                                "is another server using it?") from None


def mlserver_command(folder) -> list:
    """MLServer's own ``start`` command, with xcompile's request-body limit installed on its REST app."""
    return [sys.executable, "-c", "from xcompile.serving.limits import launch; launch()", "start", str(folder)]


def start_mlserver(folder, log=None, inherit: bool = False, tmp_folder=None, cwd=None) -> subprocess.Popen:
    """Start ``mlserver start FOLDER`` in its own process group; stdout/stderr go to ``log`` (a path) if
    given, to this process's stdout/stderr if ``inherit``, else nowhere. The server's process group dies with
    this process (``guard.watch_parent``), removing ``tmp_folder`` then."""
    out = open(log, "wb") if log else (None if inherit else subprocess.DEVNULL)  # noqa: SIM115
    env = dict(os.environ, PYTHONUNBUFFERED="1", XCOMPILE_SERVE_PARENT=str(os.getpid()))
    if tmp_folder is not None:  # removed by the server's watchdog if this process is killed
        env["XCOMPILE_SERVE_TMP"] = str(tmp_folder)
    # the server imports the same xcompile as this process (not another copy installed elsewhere)
    home = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([home] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        return subprocess.Popen(mlserver_command(folder), stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=str(cwd or folder), start_new_session=True)
    finally:
        if log:
            out.close()


def wait_ready(url: str, model: str, timeout: float = 60.0, proc: subprocess.Popen | None = None,
               api_key_file=None) -> float:
    """Poll ``url/v2/models/MODEL/ready`` until 200; return the seconds waited. Raise on timeout/exit."""
    t0 = time.monotonic()
    probe = urllib.request.Request(f"{url.rstrip('/')}/v2/models/{model}/ready")
    if api_key_file is not None:
        from .guard import read_api_key
        probe.add_header("X-API-Key", read_api_key(api_key_file))
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
    raise TimeoutError(f"MLServer not ready at {probe.full_url} after {timeout:.0f} s")


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
        # a settings folder of its own inside ``folder`` (which may hold other files: serve refuses those)
        self.folder = write_mlserver_dir(explainer, Path(os.fspath(folder)) / "mlserver-settings", name, host,
                                         self.http_port, grpc_port, **settings)
        self.api_key_file = settings.get("api_key_file")
        self.log = Path(os.fspath(folder)) / "mlserver.log"
        self.cwd = Path(os.fspath(folder))  # a custom runtime module beside the settings is importable
        self.ready_timeout = ready_timeout
        self.proc = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def __enter__(self):
        self.proc = start_mlserver(self.folder, self.log, cwd=self.cwd)
        try:
            self.startup_s = wait_ready(f"http://{self.url}", self.name, self.ready_timeout, self.proc,
                                        self.api_key_file)
        except BaseException:
            self.__exit__(None, None, None)
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"MLServer did not start; log tail:\n{tail}") from None
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            stop(self.proc)
        return False
