"""Relevance pooling (Lapuschkin et al. 2016, "Analyzing classifiers: Fisher vectors and deep neural networks";
docs/evaluation.md): because conservative relevance sums to the score, it can be pooled over
pixel regions and over a dataset. For a box per image: relevance inside, outside, and the
"importance of context" = relevance outside the box / relevance inside the box, per image and over the
dataset (ratio of the pooled sums, and the median of the per-image ratios)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import XCompileError


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'y0,x0,y1,x1' (pixels, end exclusive) -> tuple."""
    try:
        box = tuple(int(float(v)) for v in str(text).replace(" ", "").split(","))
    except ValueError:
        raise XCompileError(f"--box {text!r}: expected y0,x0,y1,x1 (integers)") from None
    if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
        raise XCompileError(f"--box {text!r}: expected y0,x0,y1,x1 with y1 > y0 and x1 > x0")
    return box


def box_masks(boxes, n: int, hw: tuple[int, int]) -> np.ndarray:
    """boxes: one box for all images, [N, 4] boxes (y0, x0, y1, x1), or [N, H, W] masks -> bool [N, H, W]."""
    b = np.asarray(boxes)
    h, w = hw
    if b.ndim == 3:
        if b.shape != (n, h, w):
            raise XCompileError(f"mask array of shape {list(b.shape)}; expected [{n}, {h}, {w}]")
        return b.astype(bool)
    b = np.broadcast_to(b.reshape(-1, 4), (n, 4)) if b.size == 4 else b
    if b.shape != (n, 4):
        raise XCompileError(f"boxes of shape {list(b.shape)}; expected [4] or [{n}, 4] (y0, x0, y1, x1)")
    m = np.zeros((n, h, w), bool)
    for i, (y0, x0, y1, x1) in enumerate(b.astype(int)):
        m[i, max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return m


@dataclass
class Pooled:
    inside: np.ndarray      # [N]
    outside: np.ndarray     # [N]
    total: np.ndarray       # [N]
    context: np.ndarray     # [N] outside / inside
    area: np.ndarray        # [N] fraction of pixels inside the box

    def summary(self) -> dict:
        sin, sout = float(self.inside.sum()), float(self.outside.sum())
        return {"images": int(len(self.inside)), "relevance_inside": sin, "relevance_outside": sout,
                "importance_of_context": sout / sin if sin else float("inf"),
                "median_context_per_image": float(np.median(self.context)),
                "mean_box_area": float(self.area.mean()),
                "context_if_uniform": float(np.mean((1 - self.area) / np.maximum(self.area, 1e-12)))}

    def rows(self, names=None) -> list[dict]:
        names = names or [str(i) for i in range(len(self.inside))]
        return [{"name": n, "inside": float(a), "outside": float(b), "total": float(t), "context": float(c),
                 "box_area": float(s)} for n, a, b, t, c, s in
                zip(names, self.inside, self.outside, self.total, self.context, self.area)]


def pool_relevance(relevance: np.ndarray, boxes, positive: bool = False) -> Pooled:
    """relevance [N, C, H, W] (or [N, H, W]); channels are summed. ``positive``: pool max(R, 0) only."""
    r = np.asarray(relevance, np.float64)
    if r.ndim == 4:
        r = r.sum(axis=1)
    if r.ndim != 3:
        raise XCompileError(f"relevance pooling needs image-shaped relevance [N, C, H, W]; got {list(np.shape(relevance))}")
    if positive:
        r = np.maximum(r, 0)
    m = box_masks(boxes, len(r), r.shape[1:])
    inside = (r * m).sum(axis=(1, 2))
    outside = (r * ~m).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        context = np.where(inside != 0, outside / inside, np.inf)
    return Pooled(inside, outside, inside + outside, context, m.mean(axis=(1, 2)))
