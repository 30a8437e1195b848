"""Test helpers: the xcompile command line run in this process (`inproc`: no interpreter start-up per call) or in a
child (`cli`: exit codes, signals, environment, time bounds), the check of README "Bad input"'s contract
(`one_line_error`: exit 2, one `xcompile: error:` line, no traceback), and the scripts of tools/ as modules (`tool`)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a child imports this checkout's xcompile (the editable install may point at another one)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))


class CliResult(tuple):
    """(exit code, stdout, stderr): unpacks as `rc, out, err`; also `.returncode`, `.stdout`, `.stderr` and
    `.seconds` (wall time of the call)."""

    def __new__(cls, returncode: int, stdout: str, stderr: str, seconds: float):
        r = super().__new__(cls, (returncode, stdout, stderr))
        r.seconds = seconds
        return r

    returncode = property(lambda self: self[0])
    stdout = property(lambda self: self[1])
    stderr = property(lambda self: self[2])


def inproc(capture, *args) -> CliResult:
    """The CLI in this process; `capture`: pytest's capsys (Python-level) or capfd (file descriptors: onnxruntime's
    own log lines count too). An exception other than SystemExit propagates (a traceback: the test fails)."""
    from xcompile.commands.main import main
    capture.readouterr()
    t0 = time.monotonic()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capture.readouterr()
    return CliResult(code, out.out, out.err, time.monotonic() - t0)


def cli(*args, timeout: float | None = None, env: dict | None = None, cwd=None, prelude: str = "") -> CliResult:
    """`python -m xcompile ARGS` in a child process (`env` defaults to `ENV`); with `prelude`, that Python code
    runs first in the child (a test double: a module made unimportable, a patched table, an atexit probe)."""
    start = ["-m", "xcompile"] if not prelude else ["-c", prelude + "\nfrom xcompile.commands.main import main; main()"]
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, *start, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env or ENV, cwd=cwd)
    return CliResult(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


def one_line_error(r, *fragments: str) -> str:
    """Assert exit 2 and exactly one non-blank stderr line `xcompile: error: ...` holding every fragment, with no
    traceback; `r`: a CliResult or a subprocess.CompletedProcess (text); -> that line."""
    rc, out, err = r.returncode, r.stdout or "", r.stderr or ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (rc, out[-2000:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("xcompile: error:"), err[-2000:]
    assert "Traceback" not in err + out, err[-2000:]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def tool(name: str):
    """tools/NAME.py loaded as a module (tools/ is not a package): its `main(argv)` and helpers."""
    spec = importlib.util.spec_from_file_location(f"xc_{name}_tool", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
