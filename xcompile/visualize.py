"""`xcompile visualize`: activation maximization -- the input that maximizes class K (Erhan et al. 2009,
"Visualizing Higher-Layer Features of a Deep Network"; Simonyan et al. 2014, "Deep Inside Convolutional
Networks"), with the regularizers of Yosinski et al. 2015 ("Understanding Neural Networks Through Deep
Visualization": L2 decay, Gaussian blur every few steps) and random jitter (Mordvintsev et al. 2015, "Inceptionism").

The gradient comes from the compiled gradient explainer (one onnxruntime call per step returns the scores and
dF_K/dx), so any model `xcompile compile` accepts can be visualized. All classes asked for run as one batch.
Each step:

    x <- roll(x, s)                    s ~ U{-jitter..jitter} per spatial axis (the same shift for every row)
    g <- roll(dF_K/dx(x), -s);  x <- roll(x, -s)
    x <- x + lr * g / rms(g)           normalized step: lr is in input units per step
    x <- c + (1 - l2) * (x - c)        L2 decay toward the centre c of the value range (0 without bounds)
    x <- gaussian_blur(x, blur)        every `blur_every` steps, spatial axes only
    x <- clip(x, low, high)            bounds given in pixel space, mapped through (p - mean) / std

Defaults (documented in the README): steps 200, lr 0.05, l2 0.01, blur 0.5 every 4 steps, jitter 1, seed 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .errors import XCompileError
from .files import atomic_write

DEFAULTS = dict(steps=200, lr=0.05, l2=0.01, blur=0.5, blur_every=4, jitter=1, seed=0)
# --set keys of `xcompile visualize`: value bounds / normalization in pixel space, and the model-reading options
VALUE_KEYS = ("low", "high", "mean", "std")
MODEL_KEYS = ("input", "output", "input_shape")


@dataclass
class Result:
    x: np.ndarray          # [K, ...] the maximizing inputs (model input space)
    classes: np.ndarray    # [K]
    scores: np.ndarray     # [K, classes] the model's scores at x
    probability: np.ndarray  # [K] softmax probability of each row's class
    predicted: np.ndarray  # [K]


def _floats(key: str, v) -> np.ndarray:
    try:
        vals = [float(t) for t in str(v).replace(";", ",").strip("[]() ").split(",") if t.strip()]
    except ValueError:
        raise XCompileError(f"--set {key}={v!r}: expected a number or comma-separated numbers (one per channel)") from None
    if not vals or not all(np.isfinite(vals)):
        raise XCompileError(f"--set {key}={v!r}: expected finite numbers")
    return np.asarray(vals, np.float64)


def _per_channel(key: str, arr: np.ndarray, sample: Sequence[int]) -> np.ndarray:
    """A scalar or one value per channel (axis 1), shaped to broadcast against [K, *sample]."""
    if arr.size == 1:
        return arr.reshape([1] * (len(sample) + 1))
    if len(sample) < 2 or arr.size != sample[0]:
        raise XCompileError(f"--set {key}: {arr.size} values given, the input {list(sample)} has "
                            f"{sample[0] if len(sample) >= 2 else 'no'} channels")
    return arr.reshape([1, -1] + [1] * (len(sample) - 1))


def check_options(steps, lr, l2, blur, blur_every, jitter) -> None:
    if steps < 1:
        raise XCompileError(f"--steps {steps}: must be a positive integer")
    if not (lr > 0 and np.isfinite(lr)):
        raise XCompileError(f"--lr {lr}: must be a positive number")
    if not (0 <= l2 < 1):
        raise XCompileError(f"--l2 {l2}: must be in [0, 1) (fraction of x - centre removed per step)")
    if not (blur >= 0 and np.isfinite(blur)):
        raise XCompileError(f"--blur {blur}: must be a non-negative number (Gaussian sigma in pixels; 0: off)")
    if blur_every < 1:
        raise XCompileError(f"--blur-every {blur_every}: must be a positive integer")
    if jitter < 0:
        raise XCompileError(f"--jitter {jitter}: must be a non-negative integer (pixels)")


def parse_classes(single: Optional[int], many: Optional[str]) -> list[int]:
    if (single is None) == (many is None):
        raise XCompileError("give exactly one of --class K or --classes K1,K2,...")
    if single is not None:
        return [int(single)]
    try:
        out = [int(t) for t in many.split(",") if t.strip()]
    except ValueError:
        raise XCompileError(f"--classes {many!r}: expected comma-separated class indices, e.g. 0,1,2") from None
    if not out:
        raise XCompileError(f"--classes {many!r}: no class given")
    return out


def gaussian_filter(x: np.ndarray, sigma, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(x, sigma, mode="nearest") in numpy (no scipy dependency): one separable
    1-D Gaussian per axis with sigma > 0, radius int(truncate * sigma + 0.5), edges repeated."""
    assert mode == "nearest"
    out = np.asarray(x, np.float64)
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        r = int(truncate * float(s) + 0.5)
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / float(s)) ** 2)
        k /= k.sum()
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(k[j] * np.take(p, np.arange(j, j + n), axis=axis) for j in range(2 * r + 1))
    return out.astype(np.asarray(x).dtype, copy=False)


def maximize(model, classes: Sequence[int], *, steps=200, lr=0.05, l2=0.01, blur=0.5, blur_every=4, jitter=1,
             seed=0, values: Optional[dict] = None, model_options: Optional[dict] = None, explainer=None,
             where: str = "model", progress=None) -> Result:
    """Gradient ascent on the input for each class in `classes` (one batch). `values`: low/high/mean/std in
    pixel space (model input = (pixel - mean) / std). Returns the inputs in model-input space."""
    check_options(steps, lr, l2, blur, blur_every, jitter)
    values = dict(values or {})
    unknown = sorted(set(values) - set(VALUE_KEYS))
    if unknown:
        raise XCompileError(f"--set {unknown[0]}: not an option of visualize (known: {', '.join(VALUE_KEYS + MODEL_KEYS)})")
    if explainer is None:
        from . import compiler
        from .runtime.explainer import Explainer
        explainer = Explainer(compiler.compile(model, "gradient", where=where, **(model_options or {})))
    ex = explainer
    sample = [int(d) for d in ex.sample_shape]
    classes = np.asarray(classes, np.int64)
    probe = ex.explain(np.zeros([1] + sample, np.float32), np.zeros(1, np.int64))
    n_classes = probe.scores.shape[1]
    bad = [int(c) for c in classes if not 0 <= c < n_classes]
    if bad:
        raise XCompileError(f"class {bad[0]}: out of range (the model has {n_classes} classes: 0..{n_classes - 1})")

    mean = _per_channel("mean", _floats("mean", values.get("mean", 0.0)), sample)
    std = _per_channel("std", _floats("std", values.get("std", 1.0)), sample)
    if np.any(std == 0):
        raise XCompileError("--set std: must not be 0")
    lo = hi = None
    if "low" in values or "high" in values:
        if not ("low" in values and "high" in values):
            raise XCompileError("--set low= and --set high= go together (pixel-space value bounds)")
        lo_p = _per_channel("low", _floats("low", values["low"]), sample)
        hi_p = _per_channel("high", _floats("high", values["high"]), sample)
        if np.any(lo_p >= hi_p):
            raise XCompileError("--set low= must be below --set high=")
        a, b = (lo_p - mean) / std, (hi_p - mean) / std
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        centre = (lo + hi) / 2
        span = hi - lo
    else:
        centre, span = np.zeros_like(mean), np.ones_like(mean)

    rng = np.random.default_rng(seed)
    k = len(classes)
    x = (centre + 0.01 * span * rng.standard_normal([k] + sample)).astype(np.float64)
    spatial = tuple(range(2, len(sample) + 1)) if len(sample) >= 2 else ()
    for t in range(steps):
        shift = tuple(int(s) for s in rng.integers(-jitter, jitter + 1, size=len(spatial))) if jitter and spatial else ()
        xs = np.roll(x, shift, axis=spatial) if shift else x
        g = ex.explain(xs.astype(np.float32), classes).relevance.astype(np.float64)
        if shift:
            g = np.roll(g, tuple(-s for s in shift), axis=spatial)
        axes = tuple(range(1, g.ndim))
        rms = np.sqrt(np.mean(g * g, axis=axes, keepdims=True))
        x = x + lr * g / (rms + 1e-12)
        if l2:
            x = centre + (1.0 - l2) * (x - centre)
        if blur and spatial and (t + 1) % blur_every == 0:
            sigma = [0.0, 0.0] + [blur] * len(spatial)
            x = gaussian_filter(x, sigma=sigma, mode="nearest")
        if lo is not None:
            x = np.clip(x, lo, hi)
        if progress is not None:
            progress(t + 1, steps)
    x = x.astype(np.float32)
    out = ex.explain(x, classes)
    scores = np.asarray(out.scores, np.float64)
    probs = scores if _outputs_probabilities(ex) else _softmax(scores)
    return Result(x, classes, scores, probs[np.arange(k), classes], scores.argmax(1))


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _outputs_probabilities(ex) -> bool:
    """The score output is a softmax already (the explainer explains the logits before it)."""
    return ex.meta.explains_probabilities


# ------------------------------------------------------------------------------------------- images
def to_image(x: np.ndarray, values: dict, min_size: int = 128) -> np.ndarray:
    """One sample [*sample] in model-input space -> uint8 [H, W] or [H, W, 3] in pixel space, upscaled (nearest)."""
    x = np.asarray(x, np.float64)
    sample = list(x.shape)
    mean = _per_channel("mean", _floats("mean", values.get("mean", 0.0)), sample)[0]
    std = _per_channel("std", _floats("std", values.get("std", 1.0)), sample)[0]
    p = x * std + mean
    if "low" in values and "high" in values:
        lo = _per_channel("low", _floats("low", values["low"]), sample)[0]
        hi = _per_channel("high", _floats("high", values["high"]), sample)[0]
        p = (p - lo) / (hi - lo)
    else:
        p = (p - p.min()) / max(p.max() - p.min(), 1e-12)
    p = np.clip(p, 0, 1)
    if p.ndim == 1:
        n = int(round(np.sqrt(p.size)))
        p = p.reshape(n, n) if n * n == p.size else p.reshape(1, -1)
    elif p.ndim == 3:
        p = p[0] if p.shape[0] != 3 else np.transpose(p, (1, 2, 0))
    elif p.ndim > 3:
        p = p.reshape(-1, *p.shape[-2:])[0]
    img = (p * 255 + 0.5).astype(np.uint8)
    scale = max(1, int(np.ceil(min_size / max(img.shape[0], img.shape[1]))))
    if scale > 1:
        img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    return img


def save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image
    atomic_write(Path(path), lambda t: Image.fromarray(img).save(t, format="PNG"))


def grid_image(images: List[np.ndarray], labels: List[str]) -> np.ndarray:
    from PIL import Image, ImageDraw
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    pad, text_h = 4, 14
    canvas = Image.new("RGB", (len(images) * (w + pad) + pad, h + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (img, label) in enumerate(zip(images, labels)):
        tile = Image.fromarray(img).convert("RGB")
        x0 = pad + k * (w + pad)
        canvas.paste(tile, (x0, pad))
        draw.text((x0 + 2, h + pad + 1), label, fill="black")
    return np.asarray(canvas)
