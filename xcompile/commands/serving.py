"""CLI commands of the serving module: ``xcompile export-triton`` and ``xcompile serve``."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("export-triton")
    def export_triton_cmd(
        explainer: Path = typer.Argument(..., help="an explainer written by `xcompile compile`"),
        repo: Path = typer.Option(..., "--repo", help="Triton model repository folder (created if missing)"),
        name: Optional[str] = typer.Option(None, "--name", help="model name in the repository (default: the file stem)"),
        max_batch: int = typer.Option(64, "--max-batch", help="Triton max_batch_size (0 disables batching)"),
        gpu: bool = typer.Option(False, "--gpu", help="instance group KIND_GPU (CUDA EP) instead of KIND_CPU"),
        instances: int = typer.Option(1, "--instances", help="model instances in the instance group"),
    ):
        """Write REPO/NAME/1/model.onnx and REPO/NAME/config.pbtxt for Triton's onnxruntime backend."""
        from ..serving.triton import export_triton
        folder = export_triton(explainer, repo, name, max_batch, gpu, instances)
        typer.echo(f"wrote {folder / 'config.pbtxt'} and {folder / '1' / 'model.onnx'}")
        typer.echo(f"serve: docker run --rm -p8000:8000 -p8001:8001 -v {repo.resolve()}:/models "
                   f"nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models")

    @app.command("serve")
    def serve_cmd(
        explainer: Path = typer.Argument(..., help="an explainer written by `xcompile compile`"),
        name: Optional[str] = typer.Option(None, "--name", help="model name in the V2 URLs (default: the file stem)"),
        host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (0.0.0.0: all)"),
        port: int = typer.Option(8080, "--port", help="HTTP (REST, Open Inference Protocol V2) port"),
        grpc_port: int = typer.Option(8081, "--grpc-port", help="gRPC port"),
        workers: int = typer.Option(0, "--workers", help="MLServer parallel_workers (0: in the server process)"),
        threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op threads"),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
        max_batch: int = typer.Option(0, "--max-batch", help="MLServer adaptive batching: max rows (0 = off)"),
        max_batch_time: float = typer.Option(0.002, "--max-batch-time", help="adaptive batching: max wait in seconds"),
        folder: Optional[Path] = typer.Option(None, "--dir", help="where to write the MLServer settings (default: a temp folder)"),
        max_request_mb: float = typer.Option(16.0, "--max-request-mb", help="largest request body in MB (HTTP 413 over it)"),
        max_rows: int = typer.Option(1024, "--max-rows", help="largest batch in rows per request (HTTP 413 over it)"),
        request_timeout: float = typer.Option(30.0, "--request-timeout", help="seconds a client has to send a request's head, and again its body"),
        max_connections: int = typer.Option(1000, "--max-connections", help="open HTTP connections at most (more are closed)"),
        api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", help="a file whose first line is the key every request must carry (X-API-Key or Authorization: Bearer; gRPC metadata x-api-key)"),
        enable_repository: bool = typer.Option(False, "--enable-repository", help="turn on the model repository endpoints (load / unload; off by default)"),
    ):
        """Serve EXPLAINER with MLServer (KServe V2 / Open Inference Protocol) until Ctrl-C."""
        import importlib.util

        from ..errors import XCompileError, clean
        from ..serving.server import check_host, check_port_free, start_mlserver, stop, wait_ready, write_mlserver_dir
        if not explainer.is_file():
            raise XCompileError(f"{clean(explainer)}: no such explainer file")
        if device not in ("cpu", "cuda"):
            raise XCompileError(f"--device {clean(device)!r}: cpu or cuda")
        if device == "cuda":
            from ..runtime.explainer import providers_for
            providers_for("cuda")  # one line when this onnxruntime has no CUDA
        try:
            have_mlserver = importlib.util.find_spec("mlserver") is not None
        except (ImportError, ValueError):  # a broken or blocked install
            have_mlserver = False
        if not have_mlserver:
            raise XCompileError("xcompile serve needs MLServer: pip install 'xcompile[serve]'")
        check_host(host)
        for flag, p in (("--port", port), ("--grpc-port", grpc_port)):
            if not 1 <= p <= 65535:
                raise XCompileError(f"{flag} {p}: a TCP port in 1..65535")
            check_port_free(host, p, flag)
        name = name or explainer.stem
        tmp = None
        if folder is None:
            tmp = tempfile.TemporaryDirectory(prefix="xcompile-serve-")
            folder = Path(tmp.name) / "settings"
        try:
            write_mlserver_dir(explainer, folder, name, host, port, grpc_port, workers, threads, device,
                               max_batch, max_batch_time, max_request_mb=max_request_mb, max_rows=max_rows,
                               request_timeout=request_timeout, max_connections=max_connections,
                               api_key_file=api_key_file, repository=enable_repository)
        except BaseException:
            if tmp is not None:
                tmp.cleanup()
            raise
        import signal

        def _to_interrupt(signum, frame):  # SIGTERM/SIGHUP: stop the server too (it has its own process group)
            raise KeyboardInterrupt

        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _to_interrupt)
        proc = start_mlserver(folder, inherit=True, tmp_folder=tmp.name if tmp is not None else None)
        code = 0
        try:
            try:
                wait_ready(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}", name, 600.0, proc,
                           api_key_file=api_key_file)
            except (RuntimeError, TimeoutError) as e:
                raise XCompileError(f"the server did not start: {e} (its log is above)") from None
            typer.echo(f"serving {clean(explainer)} as model {name!r}: http://{host}:{port}/v2/models/{name}/infer "
                       f"(gRPC {host}:{grpc_port}); Ctrl-C to stop")
            code = proc.wait()
        except KeyboardInterrupt:
            code = 0
        finally:
            stop(proc)
            if tmp is not None:
                tmp.cleanup()
        if code:
            raise XCompileError(f"the server exited with code {code} (its log is above)")
