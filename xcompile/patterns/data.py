"""Data input for pattern fitting: .npy/.npz arrays, images or folders of them, streamed in batches."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..errors import XCompileError


class DataSource:
    """Rows of a dataset, streamed: .npy (memory-mapped), .npz (key `x` or the first array), an image,
    or a folder of those (images through the same preprocessing as `xcompile run`)."""

    def __init__(self, path, sample_shape: tuple, preprocess: Optional[str] = None):
        from ..runtime.io import ARRAY_SUFFIXES, IMAGE_SUFFIXES, parse_preprocess
        self.path = Path(path)
        self.sample_shape = tuple(sample_shape)
        self.prep = parse_preprocess(preprocess)
        if not self.path.exists():
            raise XCompileError(f"{self.path}: no such data file or folder")
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES)
            if not files:
                raise XCompileError(f"{self.path}: no .npy/.npz or image files in this folder")
        else:
            files = [self.path]
        self.parts = []  # (file, kind, rows, array or None)
        for f in files:
            s = f.suffix.lower()
            if s in ARRAY_SUFFIXES:
                a = self._array(f)
                self.parts.append((f, "array", len(a), a))
            elif s in IMAGE_SUFFIXES:
                self.parts.append((f, "image", 1, None))
            else:
                raise XCompileError(f"{f}: unsupported data file {s!r} (use .npy, .npz, an image or a folder)")
        self.rows = sum(p[2] for p in self.parts)

    def _array(self, f: Path) -> np.ndarray:
        try:
            if f.suffix.lower() == ".npy":
                a = np.load(f, mmap_mode="r", allow_pickle=False)
            else:
                z = np.load(f, allow_pickle=False)
                key = "x" if "x" in z.files else (z.files[0] if z.files else None)
                if key is None:
                    raise XCompileError(f"{f}: empty .npz")
                a = z[key]
        except XCompileError:
            raise
        except Exception as e:  # noqa: BLE001
            raise XCompileError(f"{f}: not a readable numpy file ({type(e).__name__})") from None
        if a.ndim == len(self.sample_shape):
            a = a[None]
        if a.dtype.kind not in "fiu":
            raise XCompileError(f"{f}: array of dtype {a.dtype}; expected numbers")
        if a.ndim != len(self.sample_shape) + 1 or tuple(a.shape[1:]) != self.sample_shape:
            raise XCompileError(f"{f}: data of shape {list(a.shape)}; the model takes [N, {', '.join(map(str, self.sample_shape))}]")
        return a

    def batches(self, batch_size: int, start: int = 0, stop: Optional[int] = None) -> Iterator[np.ndarray]:
        """Rows [start, stop) in batches of batch_size (the last one may be smaller)."""
        from ..runtime.io import load_image
        stop = self.rows if stop is None else min(stop, self.rows)
        buf, have, pos = [], 0, 0
        for f, kind, n, a in self.parts:
            lo, hi = max(start - pos, 0), min(stop - pos, n)
            pos += n
            if hi <= lo:
                continue
            r = lo
            while r < hi:
                take = min(hi - r, batch_size - have)
                if kind == "array":
                    buf.append(np.asarray(a[r:r + take], np.float32))
                else:
                    buf.append(load_image(f, self.sample_shape, self.prep)[0][None])
                have += take
                r += take
                if have == batch_size:
                    yield np.concatenate(buf)
                    buf, have = [], 0
        if have:
            yield np.concatenate(buf)


def iter_batches(path, sample_shape, batch_size: int = 64, preprocess=None, start=0, stop=None):
    src = DataSource(path, sample_shape, preprocess)
    return src.rows, src.batches(batch_size, start, stop)
