"""Every file xcompile writes goes through here: ONE atomic-write helper, ONE check of an output path, ONE
path-safe name check. Nothing here knows about graphs.

* ``atomic_write(path, write)``: ``write(tmp)`` fills a temporary file with a unique name in the target's own
  folder (``.NAME.xc-PID-RANDOM.tmp``), which is fsynced and renamed onto ``path`` (then the folder is fsynced).
  An overwritten file keeps its permission bits. On any failure the temporary file is removed; one left by a killed process is removed by the next write to the
  same target. Concurrent writers to one path each rename a complete file: the last rename wins.
* ``check_output(path, inputs=...)``: refuses (one line, exit 2) an output that is a folder, lies below a file,
  is not a regular file (``/dev/null``), is in a folder that cannot be written, or is one of the inputs.
* ``safe_name(name)``: a name that becomes a folder and a URL part (``serve --name``, ``export-triton --name``).
* ``completed_folder(folder)``: an output folder written file by file (``xcompile run --out``): its
  ``_COMPLETE`` marker is removed first and written last, listing the files of the finished run.

Test hook: with ``XCOMPILE_TEST_PAUSE_BEFORE_RENAME=FILE`` set, ``atomic_write`` writes the temporary file's
path into FILE and sleeps (up to 60 s) just before the rename, so a test can kill a write at that point.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

from .errors import XCompileError

PAUSE_ENV = "XCOMPILE_TEST_PAUSE_BEFORE_RENAME"
COMPLETE = "_COMPLETE"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def safe_name(name: str, what: str = "--name") -> str:
    """A single path component: letters, digits, '_', '-', '.'; not '.', '..' or starting with '.' or '-'."""
    if not isinstance(name, str) or not _NAME.match(name) or name.strip(".") == "" or len(name) > 128:
        raise XCompileError(f"{what} {name!r}: use letters, digits, '_', '-', '.' (not starting with '.' or '-', "
                            f"at most 128 characters; it is a folder and a URL part)")
    return name


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path, inputs: Iterable = (), what: str = "-o", folder: bool = False) -> Path:
    """The output path, or one line naming why it cannot be written (before any work is done)."""
    path = Path(os.fspath(path))
    for i in inputs:
        if i is not None and isinstance(i, (str, os.PathLike)) and _same_file(path, Path(os.fspath(i))):
            raise XCompileError(f"{what} {path}: is an input of this command; choose another output path")
    if folder:
        if path.exists() and not path.is_dir():
            raise XCompileError(f"{what} {path}: exists and is not a folder")
    else:
        if path.is_dir():
            raise XCompileError(f"{what} {path}: is a folder; give a file path such as {path / 'explainer.onnx'}")
        if path.exists() and not path.is_file():
            raise XCompileError(f"{what} {path}: exists and is not a regular file")
    base = _first_existing(path.parent if not folder else path)
    if not base.is_dir():
        raise XCompileError(f"{what} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK) or str(base.resolve()).startswith(("/proc", "/sys")):
        raise XCompileError(f"{what} {path}: folder {base} is not writable")
    return path


def _mkdir(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XCompileError(f"{what} {folder}: cannot create the folder ({e.strerror or type(e).__name__})") from None


def _stale_temps(path: Path, pattern: str | None = None):
    """Temporary files of earlier writes to ``path`` (``pattern``: to any file of its folder) whose process is gone."""
    for t in path.parent.glob(pattern or f".{path.name}.xc-*.tmp"):
        m = re.match(r".*\.xc-(\d+)-[0-9a-f]+\.tmp$", t.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            yield t
        except OSError:
            pass


# folders being filled by `completed_folder`: their files are flushed to disk once, before `_COMPLETE` is written,
# not one fsync each (`xcompile run` writes two files per row: the fsyncs were most of its time)
_DEFERRED: set = set()


def _fsync_dir(folder: Path) -> None:
    if folder in _DEFERRED:
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pause_hook(tmp: Path) -> None:
    flag = os.environ.get(PAUSE_ENV)
    if flag:
        Path(flag).write_text(str(tmp))
        time.sleep(60)


def atomic_write(path, write: Callable[[Path], None], what: str = "output") -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a unique temporary file beside it, then fsync + rename."""
    path = Path(os.fspath(path))
    _mkdir(path.parent, what)
    for stale in () if path.parent in _DEFERRED else _stale_temps(path):  # (completed_folder swept them once)
        with contextlib.suppress(OSError):
            stale.unlink()
    tmp = path.with_name(f".{path.name}.xc-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    deferred = path.parent in _DEFERRED
    try:
        write(tmp)
        if not deferred:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):  # an overwritten file keeps its mode (a 0600 stays 0600)
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        _pause_hook(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise XCompileError(f"{what} {path}: cannot write it ({e.strerror or type(e).__name__})") from None
    finally:
        with contextlib.suppress(OSError):
            if deferred and not os.path.lexists(tmp):  # renamed: nothing to clean (one stat, not a failing unlink)
                pass
            elif tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
    return path


def write_bytes(path, data: bytes, what: str = "output") -> Path:
    return atomic_write(path, lambda t: t.write_bytes(data), what)


def write_text(path, text: str, what: str = "output") -> Path:
    return write_bytes(path, text.encode(), what)


@contextlib.contextmanager
def completed_folder(folder, what: str = "--out"):
    """``with completed_folder(d) as written: written.append(atomic_write(...))``: ``d/_COMPLETE`` is removed
    on entry and written (listing the files) only when the block finishes, so a folder without it is incomplete."""
    folder = check_output(folder, what=what, folder=True)
    _mkdir(folder, what)
    with contextlib.suppress(FileNotFoundError):
        (folder / COMPLETE).unlink()
    written: list = []
    for stale in _stale_temps(folder / COMPLETE, ".*.xc-*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    _DEFERRED.add(folder)
    try:
        yield written
    finally:
        _DEFERRED.discard(folder)
    os.sync()  # every file of the run on disk before the marker says the folder is complete
    write_text(folder / COMPLETE, "".join(f"{Path(p).name}\n" for p in written), what)


def save_figure(fig, path, what: str = "output", **kw) -> Path:
    """``fig.savefig`` through `atomic_write` (the format from the target's suffix, not the temporary name's)."""
    path = Path(os.fspath(path))
    return atomic_write(path, lambda t: fig.savefig(t, format=(path.suffix.lstrip(".") or "png"), **kw), what)


def save_npy(path, array, what: str = "output") -> Path:
    """``np.save`` through `atomic_write` (a file object: np.save would append .npy to the temporary name)."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return atomic_write(path, write, what)


def csv_text(header, rows) -> str:
    import csv
    import io
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    if header is not None:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()
