"""`xcompile view`: the export-web site of the given explainers, served on 127.0.0.1 (a temporary folder,
removed on exit), opening the browser unless told not to. The server adds the two headers that make the page
cross-origin isolated, so onnxruntime-web may use several WASM threads (a plain static host gives one)."""
from __future__ import annotations

import functools
import http.server
import shutil
import tempfile
import threading
from pathlib import Path

from ..errors import XCompileError

TYPES = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript",
         ".json": "application/json", ".onnx": "application/octet-stream", ".html": "text/html; charset=utf-8"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args):  # quiet: one line per request would drown the console
        pass


def serve_folder(folder: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A server of ``folder`` on 127.0.0.1:``port`` (0: a free port), running in a daemon thread."""
    handler = functools.partial(_Handler, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise XCompileError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({e.strerror or type(e).__name__})") from None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def view(explainers: list, port: int = 8000, open_browser: bool = True, echo=print, wait=None, **export) -> None:
    """Export into a temporary folder, serve it, open the page; ``wait()`` blocks until the user stops it
    (default: until Ctrl-C)."""
    from .site import export_site
    if not 0 <= port <= 65535:
        raise XCompileError(f"--port {port}: expected 0..65535")
    folder = Path(tempfile.mkdtemp(prefix="xcompile-view-"))
    try:
        export_site(explainers, folder, echo=echo, **export)
        server = serve_folder(folder, port)
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        echo(f"serving {len(explainers)} explainer(s) at {url} (Ctrl-C stops)")
        if open_browser:
            import webbrowser
            webbrowser.open(url)
        try:
            (wait or threading.Event().wait)()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            server.server_close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
