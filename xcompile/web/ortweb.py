"""The onnxruntime-web files a site ships, pinned to ONE version (docs/deployment.md, "Where the runtime comes
from"): ``npm pack onnxruntime-web@ORT_WEB_VERSION`` once into a user cache (npm checks the tarball's integrity
against the registry), or a folder given with ``--ort-web`` (an unpacked package, its ``dist/`` folder, or a copy
of these files). Nothing is fetched when a site is viewed: the page loads the copies beside it."""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..errors import XCompileError

ORT_WEB_VERSION = "1.31.1"
# the script (global `ort`: WebGPU and WASM execution providers) and the WebAssembly build it loads
FILES = ("ort.webgpu.min.js", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
LICENSE_NAME = "LICENSE-onnxruntime-web.txt"
# onnxruntime's license (the package declares "MIT" in package.json and ships no LICENSE file of its own)
MIT = """MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def cache_dir() -> Path:
    base = os.environ.get("XCOMPILE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "xcompile")
    return Path(base) / f"onnxruntime-web-{ORT_WEB_VERSION}"


def _dist(folder: Path) -> Path | None:
    """The folder holding FILES: ``folder``, ``folder/dist`` or ``folder/package/dist``."""
    for d in (folder, folder / "dist", folder / "package" / "dist"):
        if all((d / f).is_file() for f in FILES):
            return d
    return None


def runtime_files(ort_web: Path | None = None) -> Path:
    """The folder with FILES: ``ort_web`` if given, else the cache, filled by ``npm pack`` on first use."""
    if ort_web is not None:
        d = _dist(Path(ort_web))
        if d is None:
            raise XCompileError(f"--ort-web {ort_web}: no {', '.join(FILES)} there (nor in dist/ or package/dist/)")
        return d
    cached = _dist(cache_dir())
    if cached is not None:
        return cached
    npm = shutil.which("npm")
    if npm is None:
        raise XCompileError(f"onnxruntime-web {ORT_WEB_VERSION} is not cached in {cache_dir()} and npm is not "
                            f"installed: install Node.js/npm, or pass --ort-web DIR (`npm pack "
                            f"onnxruntime-web@{ORT_WEB_VERSION}` unpacked)")
    target = cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            proc = subprocess.run([npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--silent"], cwd=tmp,
                                  capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise XCompileError(f"npm pack onnxruntime-web@{ORT_WEB_VERSION}: {type(e).__name__}; "
                                f"pass --ort-web DIR instead") from None
        tgz = next(Path(tmp).glob("onnxruntime-web-*.tgz"), None)
        if proc.returncode != 0 or tgz is None:
            why = " ".join((proc.stderr or proc.stdout or "").split())[:200]
            raise XCompileError(f"npm pack onnxruntime-web@{ORT_WEB_VERSION} failed ({why or proc.returncode}); "
                                f"pass --ort-web DIR instead")
        staged = Path(tmp) / "staged"
        staged.mkdir()
        with tarfile.open(tgz) as tar:
            for f in FILES:
                member = tar.getmember(f"package/dist/{f}")
                with tar.extractfile(member) as src, open(staged / f, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (staged / "package.json").write_bytes(tar_member(tgz, "package/package.json"))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)  # whole or not at all: a killed pack leaves no half cache
    return target


def tar_member(tgz: Path, name: str) -> bytes:
    with tarfile.open(tgz) as tar:
        with tar.extractfile(tar.getmember(name)) as f:
            return f.read()
