"""Heatmap PNGs without matplotlib: a colour-map lookup table and PIL (`xcompile run` writes one per row, so
this is on the dataset path: ~1 ms per digit instead of matplotlib's ~0.3 s; tools/bench_run.py).

The colour map is matplotlib's ``bwr`` (blue - white - red, linear in each channel), centred on zero and scaled
by max |R| of the row: the colours `xcompile run` wrote before and the web page draws (xcompile/web/page). A map
without an image underneath is a palette PNG (one byte a pixel: the fastest to encode)."""
from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np

MIN_SIDE = 128  # small inputs (8x8 digits) are scaled up, pixel-exact, to at least this many pixels
LEVELS = 255  # odd: zero relevance is the middle entry, exactly white
BLACK = LEVELS  # palette index of the title text


def bwr_lut(n: int = LEVELS) -> np.ndarray:
    """[n, 3] uint8: index 0 = -max (blue), n // 2 = 0 (white), n-1 = +max (red)."""
    t = np.linspace(0.0, 1.0, n)
    r = np.clip(2 * t, 0, 1)
    g = 1 - np.abs(2 * t - 1)
    b = np.clip(2 - 2 * t, 0, 1)
    return np.round(np.stack([r, g, b], 1) * 255).astype(np.uint8)


_LUT = bwr_lut()
_PALETTE = np.concatenate([_LUT, np.zeros((1, 3), np.uint8)]).ravel().tolist()


@functools.lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont
    loader = getattr(ImageFont, "load_default_imagefont", None)  # the bitmap font: 5x faster than FreeType's
    return loader() if loader is not None else ImageFont.load_default()


def as_map(relevance: np.ndarray) -> np.ndarray:
    """A relevance array -> one 2-D map: channels summed ([C, H, W]), a flat vector laid out in a square."""
    r = np.asarray(relevance, np.float32)
    r = r.sum(axis=0) if r.ndim == 3 else r
    if r.ndim == 1:
        side = int(np.ceil(np.sqrt(r.size)))
        r = np.pad(r, (0, side * side - r.size)).reshape(side, side)
    return r


def levels(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(palette index per pixel, r / max|r| in [-1, 1])."""
    m = float(np.abs(r).max()) if r.size else 0.0
    u = np.nan_to_num(r / (m if np.isfinite(m) and m > 0 else 1.0), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(np.round((u + 1) * (LEVELS // 2)), 0, LEVELS - 1).astype(np.uint8), u


def heatmap_rgb(r: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
    """[H, W, 3] uint8: the colour map of ``r`` / max|r|; over a grey ``image`` ([H, W, 3] in [0, 1]) with
    opacity 0.85 |r| / max|r| (so irrelevant pixels show the image)."""
    idx, u = levels(r)
    rgb = _LUT[idx]
    if image is None:
        return rgb
    grey = np.asarray(image, np.float32).mean(axis=2, keepdims=True) * 255.0
    alpha = np.clip(np.abs(u), 0, 1)[..., None] * 0.85
    return np.round(rgb * alpha + grey * (1 - alpha)).astype(np.uint8)


def heatmap_image(relevance: np.ndarray, image=None, title: str | None = None):
    """The heatmap of one row as a PIL image (palette mode without a display image)."""
    from PIL import Image, ImageDraw
    r = as_map(relevance)
    if image is not None and np.asarray(image).shape[:2] != r.shape:
        image = None  # a display image of another size (not the model's input grid): colour map alone
    if image is None:
        img = Image.fromarray(levels(r)[0], "P")
        img.putpalette(_PALETTE)
    else:
        img = Image.fromarray(heatmap_rgb(r, image))
    scale = max(1, -(-MIN_SIDE // max(1, min(r.shape))))
    if scale > 1:
        img = img.resize((r.shape[1] * scale, r.shape[0] * scale), Image.NEAREST)
    if title:
        band = 12
        white = LEVELS // 2 if img.mode == "P" else "white"
        canvas = Image.new(img.mode, (img.width, img.height + band), white)
        if img.mode == "P":
            canvas.putpalette(_PALETTE)
        canvas.paste(img, (0, band))
        ImageDraw.Draw(canvas).text((2, 1), title, fill=BLACK if img.mode == "P" else "black", font=_font())
        img = canvas
    return img


def save_heatmap_png(path, relevance: np.ndarray, image=None, title: str | None = None) -> None:
    """The heatmap PNG at ``path`` (a path or a binary file; callers write through files.atomic_write)."""
    img = heatmap_image(relevance, image, title)
    img.save(path if hasattr(path, "write") else Path(path), format="PNG", compress_level=1)


def png_bytes(relevance: np.ndarray, image=None, title: str | None = None) -> bytes:
    """``save_heatmap_png`` into memory (a Ray worker renders its rows; the driver writes the bytes)."""
    buf = io.BytesIO()
    save_heatmap_png(buf, relevance, image, title)
    return buf.getvalue()
