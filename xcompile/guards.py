"""Guards against hostile or careless input that is not a model: text shown on a terminal, files that are not
regular files, arrays and images whose DECLARED size is checked before anything is allocated, thread counts,
regular expressions from rule files, and matplotlib text. Nothing here knows about graphs.

* ``clean(text)``: THE escape of control characters (ANSI escapes, newlines, NUL, DEL, C1) in anything printed:
  every error line, listing and name goes through it, so a node or file name cannot clear the screen, set the
  terminal's title or forge an extra output line.
* ``regular_file(path, what)``: refuses FIFOs, devices and sockets (reading a FIFO blocks forever).
* ``check_array_file(path)``: the shapes and dtypes a .npy / .npz declares in its headers, checked against the
  memory cap (``options.check_memory``) before numpy reads (or a zip member inflates) anything.
* ``check_image_file(path)``: an image's declared pixel count checked before decoding (decompression bombs).
* ``threads(n)``: an onnxruntime thread count, 1..MAX_THREADS.
* ``compile_regex(pattern, what)``: rule files' ``name_regex`` in RE2 (linear-time matching: no catastrophic
  backtracking, Cox 2007 "Regular Expression Matching Can Be Simple And Fast"), length-bounded.
* ``plain_text_plots()``: matplotlib in Agg mode with mathtext off (a file name ``a$\\frac{1$.png`` is text).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import XCompileError, clean, one_line  # noqa: F401 - re-exported: THE escape

MAX_THREADS = 256          # onnxruntime intra-op threads: more only oversubscribes, 1e5 hangs session creation
MAX_REGEX = 1000           # characters of a rule file's name_regex
MAX_IMAGE_PIXELS = 64_000_000  # an 8000 x 8000 photo; larger declared sizes are refused before decoding

def regular_file(path, what: str = "input") -> Path:
    """``path`` if it is a regular file (following links); FIFOs, devices, sockets and folders are refused."""
    path = Path(os.fspath(path))
    try:
        st = path.stat()
    except OSError:
        raise XCompileError(f"{what} {clean(path)}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
        raise XCompileError(f"{what} {clean(path)}: is {kind}; give a regular file")
    return path


def _npy_header(f, where: str):
    import numpy as np
    try:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f, max_header_size=100_000))
    except Exception as e:  # noqa: BLE001 - a corrupt or hostile header
        raise XCompileError(f"{where}: not a readable numpy file ({type(e).__name__})") from None
    n = 1
    for d in shape:
        n *= int(d)
    return n * dtype.itemsize, shape, dtype


def check_array_file(path) -> None:
    """Refuse a .npy / .npz whose declared arrays need more memory than the cap, before reading them."""
    import zipfile

    from .options import check_memory
    path = regular_file(path)
    where = clean(path)
    with open(path, "rb") as f:
        magic = f.read(6)
        f.seek(0)
        if magic.startswith(b"PK"):
            try:
                with zipfile.ZipFile(f) as z:
                    total = 0
                    for info in z.infolist():
                        if info.filename.endswith(".npy"):
                            with z.open(info) as member:
                                total += _npy_header(member, f"{where} ({clean(info.filename)})")[0]
            except zipfile.BadZipFile:
                raise XCompileError(f"{where}: not a readable .npz (a broken zip archive)") from None
        elif magic == b"\x93NUMPY":
            total = _npy_header(f, where)[0]
        else:
            return  # numpy's own reader gives the one-line error
    check_memory(total, f"{where}: its arrays")


def check_image_file(path) -> None:
    """Refuse an image whose declared width x height is over MAX_IMAGE_PIXELS (or the memory cap), before decoding."""
    from .options import check_memory
    path = regular_file(path)
    try:
        from PIL import Image
        with Image.open(path) as img:
            w, h = img.size
    except Exception:  # noqa: BLE001 - the loader gives its own one-line error
        return
    if w * h > MAX_IMAGE_PIXELS:
        raise XCompileError(f"{clean(path)}: a {w} x {h} image ({w * h / 1e6:.0f} megapixels) is over the limit of "
                            f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; resize it first")
    check_memory(w * h * 4 * 4, f"{clean(path)}: a {w} x {h} image")


def threads(n, what: str = "threads"):
    """None, or an integer thread count in 1..MAX_THREADS."""
    if n is None:
        return None
    sep = " " if what.startswith("--") else "="
    if isinstance(n, bool) or not isinstance(n, int) and not (hasattr(n, "__index__") and not isinstance(n, float)):
        raise XCompileError(f"{what}{sep}{n!r}: a whole number of threads in 1..{MAX_THREADS}")
    n = int(n)
    if not 1 <= n <= MAX_THREADS:
        raise XCompileError(f"{what}{sep}{n}: a whole number of threads in 1..{MAX_THREADS}")
    return n


def compile_regex(pattern: str, what: str):
    """A compiled pattern whose ``search`` runs in time linear in the text (RE2), or one line saying why not."""
    if len(pattern) > MAX_REGEX:
        raise XCompileError(f"{what}: a pattern of {len(pattern)} characters (at most {MAX_REGEX})")
    try:
        import re2
    except ImportError:  # pragma: no cover - google-re2 is a dependency
        raise XCompileError(f"{what}: needs the google-re2 package (pip install google-re2)") from None
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own line on stderr
    options.max_mem = 8 << 20
    try:
        return re2.compile(pattern, options)
    except Exception as e:  # noqa: BLE001 - re2.error, counted repetition over RE2's 1000, nesting depth
        arg = e.args[0] if e.args else ""
        why = one_line(arg.decode(errors="replace") if isinstance(arg, bytes) else arg)[:160] or type(e).__name__
        raise XCompileError(f"{what}: {clean(pattern[:80])!r} is not a supported regular expression ({why}; RE2 "
                            "syntax: no backreferences or lookaround, repetition counts up to 1000)") from None


def plain_text_plots():
    """matplotlib with the Agg backend and mathtext parsing off; returns pyplot."""
    import logging
    # an unwritable HOME makes matplotlib log two lines about its cache folder on every import: it then uses a
    # temporary one, which is all a command needs
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt
    return plt


def set_paths(sets: dict) -> list:
    """The ``--set`` values that name existing files or folders (a value too long to be a path is a value);
    FIFOs, devices and sockets are refused (reading one blocks or never ends)."""
    out = []
    for k, v in sets.items():
        try:
            st = os.stat(v) if v else None
        except (OSError, ValueError):  # ENAMETOOLONG, ENOENT, a NUL byte: not a path
            continue
        if st is None:
            continue
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise XCompileError(f"--set {clean(k)}={clean(v)}: not a regular file or folder (a FIFO or device)")
        out.append(Path(v))
    return out


MAX_TENSOR_BYTES = 1 << 42  # 4 TiB: no real initializer comes near; larger declared sizes overflow C longs


def check_initializers(model, where: str) -> None:
    """Every initializer's declared dims are non-negative, their product fits (no 2^62 x 2^62), and a tensor that
    carries raw bytes carries as many as its dims say; one line naming the first that does not."""
    from onnx import helper
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            if d < 0:
                raise XCompileError(f"{where}: initializer {clean(t.name)!r} declares a negative dimension {list(t.dims)}")
            n *= int(d)
        try:
            size = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 4
        except (KeyError, TypeError, ValueError):
            size = 4
        if n * size > MAX_TENSOR_BYTES:
            raise XCompileError(f"{where}: initializer {clean(t.name)!r} declares dims {list(t.dims)} "
                                f"({n * size:.3g} bytes); a corrupt or hostile model")
        packed = t.data_type in (8, 21, 22, 23)  # strings, packed 4-bit types: no fixed bytes per element
        if t.HasField("raw_data") and t.data_location != 1 and not packed and len(t.raw_data) != n * size:
            raise XCompileError(f"{where}: initializer {clean(t.name)!r} holds {len(t.raw_data)} bytes where its dims "
                                f"{list(t.dims)} need {n * size}")
