"""Pixel-flipping and region-perturbation curves (definitions of Quantus ``PixelFlipping`` and
``RegionPerturbation``; Bach et al. 2015, Samek et al. 2017), with every perturbed copy scored in batched
calls of a plain onnxruntime session on the ORIGINAL model (not the explainer).

Pixel flipping (Quantus): sort the relevance (channels summed) descending; step k = 1..S replaces the
``features_in_step`` next most relevant pixels (all channels) by the baseline, cumulatively; the curve is
the target score after each step (the unperturbed score is not part of it); AUC = trapezoid rule with
dx = 1 (``quantus.helpers.utils.calculate_auc``). Lower is better (the score falls fast).

Region perturbation (Quantus): every patch_size x patch_size patch whose top-left corner lies in the image
(clipped at the bottom/right border) gets the sum of its relevance; patches are ranked (most relevant
first = 'morf', 'lerf', 'random'), overlapping patches are dropped greedily, the first
``regions_evaluation`` are filled cumulatively; the curve is F_c(x) - F_c(x perturbed) after each step;
AUC as above. Higher is better (AOPC-like).

Both follow Quantus's defaults for the attribution: ``abs=False``, ``normalise=True`` with
``normalise_by_negative`` (positive part / max, negative part / |min|; this matters for region sums), and
the baseline ``black`` = min of the sample. Differences to Quantus, on purpose: the ``uniform`` baseline
draws one noise image per sample (seeded) instead of a fresh draw per step; the score is softmax
probability by default (Quantus's ``softmax=True``) or the logit (``score='logit'``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import XCompileError

BASELINES = ("black", "white", "mean", "uniform", "zero")


# ------------------------------------------------------------------ scoring the original model
class Scorer:
    """Batched target scores of the original model: ``scorer(x [B, ...], target [B]) -> [B]``."""

    def __init__(self, model, score: str = "softmax", batch_size: int = 256, threads: int | None = None,
                 providers=None):
        from ..sessions import session
        if score not in ("softmax", "logit"):
            raise XCompileError(f"score {score!r}: use 'softmax' or 'logit'")
        try:
            self.session = session(model, threads=threads, providers=providers)
        except Exception as e:  # noqa: BLE001
            raise XCompileError(f"{model if isinstance(model, (str, os.PathLike)) else 'model'}: onnxruntime "
                                f"cannot load it: {str(e).strip().splitlines()[0]}") from None
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.score, self.batch_size = score, batch_size
        self.calls = 0

    def outputs(self, x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(x), self.batch_size):
            out.append(self.session.run([self.output], {self.input: np.ascontiguousarray(x[i:i + self.batch_size], np.float32)})[0])
            self.calls += 1
        s = np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))
        if self.score == "softmax":
            s = np.exp(s - s.max(axis=1, keepdims=True))
            s /= s.sum(axis=1, keepdims=True)
        return s

    def __call__(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        s = self.outputs(x)
        return s[np.arange(len(s)), np.asarray(target, np.int64)]


def score_stream(scorer: Scorer, blocks: Iterable[tuple[np.ndarray, np.ndarray]], advance: Callable | None = None) -> np.ndarray:
    """Score (x, target) blocks of any size in onnxruntime batches of ``scorer.batch_size`` rows
    (blocks from several samples share a batch). Returns the scores in order."""
    buf_x, buf_t, n_buf, out = [], [], 0, []

    def flush():
        nonlocal buf_x, buf_t, n_buf
        if n_buf:
            out.append(scorer(np.concatenate(buf_x), np.concatenate(buf_t)))
            if advance:
                advance(n_buf)
        buf_x, buf_t, n_buf = [], [], 0

    for xb, tb in blocks:
        start = 0
        while start < len(xb):
            take = min(scorer.batch_size - n_buf, len(xb) - start)
            buf_x.append(xb[start:start + take])
            buf_t.append(tb[start:start + take])
            n_buf += take
            start += take
            if n_buf >= scorer.batch_size:
                flush()
    flush()
    return np.concatenate(out) if out else np.zeros(0)


# ------------------------------------------------------------------ attribution handling (Quantus)
def normalise_by_negative(a: np.ndarray) -> np.ndarray:
    """Quantus's default: positives / max, negatives / |min| (per sample)."""
    a = np.asarray(a, np.float64)
    mx, mn = a.max(), a.min()
    if mn >= 0:
        return a / mx if mx > 0 else a
    if mx <= 0:
        return -a / mn
    return (a > 0) * a / mx - (a < 0) * a / mn


def pixel_map(relevance: np.ndarray, sample_shape: tuple, channel_reduce: str = "sum") -> np.ndarray:
    """[N, C, H, W] relevance -> [N, H, W] (channels summed) so a pixel is flipped in all channels;
    'none' keeps one entry per input element. Flat inputs [N, D] stay as they are."""
    r = np.asarray(relevance, np.float64)
    if channel_reduce == "none" or len(sample_shape) < 2:
        return r
    if channel_reduce != "sum":
        raise XCompileError(f"channel_reduce {channel_reduce!r}: use 'sum' or 'none'")
    return r.sum(axis=1)


def baseline_values(x: np.ndarray, baseline, rng: np.random.Generator) -> np.ndarray:
    """Per-sample fill: array broadcastable to x[i] (Quantus names: black=min, white=max, mean, uniform)."""
    if isinstance(baseline, (int, float, np.floating)):
        return np.full(x.shape, float(baseline), np.float32)
    b = str(baseline).lower()
    try:
        return np.full(x.shape, float(b), np.float32)
    except ValueError:
        pass
    if b == "black":
        return np.full(x.shape, x.min(), np.float32)
    if b == "white":
        return np.full(x.shape, x.max(), np.float32)
    if b == "mean":
        return np.full(x.shape, x.mean(), np.float32)
    if b == "zero":
        return np.zeros(x.shape, np.float32)
    if b == "uniform":
        return rng.uniform(0.0, 1.0, size=x.shape).astype(np.float32)
    raise XCompileError(f"baseline {baseline!r}: use a number or one of {', '.join(BASELINES)}")


# ------------------------------------------------------------------ curves
@dataclass
class Curves:
    metric: str
    curves: np.ndarray            # [N, S]
    auc: np.ndarray               # [N]
    fraction: np.ndarray          # [S] fraction of the input perturbed after each step (mean over samples)
    original: np.ndarray          # [N] target score of the unperturbed input
    target: np.ndarray            # [N]
    settings: dict = field(default_factory=dict)
    model_calls: int = 0

    @property
    def mean_curve(self) -> np.ndarray:
        return self.curves.mean(axis=0)

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())

    def as_dict(self) -> dict:
        return {"metric": self.metric, "mean_auc": self.mean_auc, "auc": self.auc.tolist(),
                "mean_curve": self.mean_curve.tolist(), "fraction": self.fraction.tolist(),
                "original_score": self.original.tolist(), "target": self.target.tolist(),
                "settings": self.settings, "model_calls": self.model_calls}


def auc(curve: np.ndarray) -> np.ndarray:
    """Quantus calculate_auc: trapezoid rule, dx = 1 (along the last axis)."""
    c = np.asarray(curve, np.float64)
    if c.shape[-1] < 2:
        return np.zeros(c.shape[:-1])
    return ((c[..., 1:] + c[..., :-1]) / 2).sum(axis=-1)


def _resolve_targets(scorer: Scorer, x: np.ndarray, target) -> tuple[np.ndarray, np.ndarray]:
    """-> (target [N] with -1 replaced by the predicted class, original target score [N])."""
    s = scorer.outputs(x)
    t = np.full(len(x), -1, np.int64) if target is None else np.broadcast_to(np.asarray(target, np.int64), (len(x),)).copy()
    t = np.where(t < 0, s.argmax(axis=1), t)
    return t, s[np.arange(len(x)), t]


def _rank_from_order(order: np.ndarray) -> np.ndarray:
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank


def pixel_flipping(scorer: Scorer, x: np.ndarray, relevance: np.ndarray, target=None, *,
                   features_in_step: int | None = None, steps: int | None = None, baseline="black",
                   abs: bool = False, normalise: bool = True, channel_reduce: str = "sum", seed: int = 0,
                   advance: Callable | None = None) -> Curves:
    """Quantus PixelFlipping, all perturbed copies scored in batches. Give ``features_in_step`` (Quantus)
    or ``steps`` (the number of curve points; features_in_step = ceil(features / steps))."""
    x = np.asarray(x, np.float32)
    sample = x.shape[1:]
    a = pixel_map(relevance, sample, channel_reduce).reshape(len(x), -1)
    n_feat = a.shape[1]
    if features_in_step is None:
        features_in_step = int(np.ceil(n_feat / steps)) if steps else 1
    if features_in_step <= 0:
        raise XCompileError("features_in_step must be positive")
    n_steps = len(range(0, n_feat, features_in_step))
    t, original = _resolve_targets(scorer, x, target)
    rng = np.random.default_rng(seed)
    thresholds = np.minimum(np.arange(1, n_steps + 1) * features_in_step, n_feat)

    def blocks() -> Iterator:
        for i in range(len(x)):
            ai = np.abs(a[i]) if abs else a[i]
            ai = normalise_by_negative(ai) if normalise else ai
            rank = _rank_from_order(np.argsort(-ai, kind="quicksort"))
            base = baseline_values(x[i], baseline, rng)
            for k0 in range(0, n_steps, scorer.batch_size):
                th = thresholds[k0:k0 + scorer.batch_size]
                mask = rank[None, :] < th[:, None]  # [k, F]
                if channel_reduce == "sum" and len(sample) >= 2:
                    mask = mask.reshape((len(th), 1) + sample[1:])
                else:
                    mask = mask.reshape((len(th),) + sample)
                yield np.where(mask, base[None], x[i][None]), np.full(len(th), t[i], np.int64)

    calls0 = scorer.calls
    flat = score_stream(scorer, blocks(), advance)
    curves = flat.reshape(len(x), n_steps)
    return Curves("pixel_flipping", curves, auc(curves), thresholds / n_feat, original, t,
                  {"features_in_step": int(features_in_step), "steps": int(n_steps), "baseline": str(baseline),
                   "abs": abs, "normalise": normalise, "channel_reduce": channel_reduce, "score": scorer.score},
                  scorer.calls - calls0)


def region_order(a: np.ndarray, patch_size: int, regions: int, order: str = "morf",
                 rng: np.random.Generator | None = None) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping patches to perturb, in order (Quantus RegionPerturbation).
    ``a`` is a 2-D map [H, W]."""
    h, w = a.shape
    p = patch_size
    pad = np.zeros((h + p, w + p))
    pad[:h, :w] = a
    # patch sums for every top-left corner, row-major (the order of Quantus's itertools.product)
    sums = np.lib.stride_tricks.sliding_window_view(pad, (p, p))[:h, :w].sum(axis=(-1, -2)).ravel()
    if order == "morf":
        idx = np.argsort(sums)[::-1]
    elif order == "lerf":
        idx = np.argsort(sums)
    elif order == "random":
        idx = (rng or np.random.default_rng(0)).permutation(len(sums))
    else:
        raise XCompileError(f"order {order!r}: use morf, lerf or random")
    blocked = np.zeros((h, w), bool)
    chosen = []
    for k in idx:
        r, q = divmod(int(k), w)
        if not blocked[r:r + p, q:q + p].any():
            blocked[r:r + p, q:q + p] = True
            chosen.append((r, q))
            if len(chosen) >= regions:
                break
    return chosen


def region_perturbation(scorer: Scorer, x: np.ndarray, relevance: np.ndarray, target=None, *,
                        patch_size: int = 8, regions_evaluation: int = 100, order: str = "morf",
                        baseline="black", abs: bool = False, normalise: bool = True, seed: int = 0,
                        advance: Callable | None = None) -> Curves:
    """Quantus RegionPerturbation: curve = F_c(x) - F_c(x with the first k patches filled), k = 1..K."""
    x = np.asarray(x, np.float32)
    sample = x.shape[1:]
    if len(sample) == 1:  # flat input: a 1 x D "image"
        a_all = np.asarray(relevance, np.float64).reshape(len(x), 1, -1)
    else:
        a_all = pixel_map(relevance, sample, "sum").reshape((len(x),) + sample[-2:]) if len(sample) >= 2 else None
    t, original = _resolve_targets(scorer, x, target)
    rng = np.random.default_rng(seed)
    plans = []
    for i in range(len(x)):
        ai = np.abs(a_all[i]) if abs else a_all[i]
        ai = normalise_by_negative(ai) if normalise else ai
        plans.append(region_order(ai, patch_size, regions_evaluation, order, rng))
    n_steps = min(len(pl) for pl in plans)
    if n_steps < 1:
        raise XCompileError("region_perturbation: no patch fits the input")
    h, w = a_all.shape[1:]

    def blocks() -> Iterator:
        for i in range(len(x)):
            label = np.full((h, w), n_steps, np.int64)
            for k, (r, q) in reversed(list(enumerate(plans[i][:n_steps]))):
                label[r:r + patch_size, q:q + patch_size] = k
            base = baseline_values(x[i], baseline, rng)
            for k0 in range(0, n_steps, scorer.batch_size):
                ks = np.arange(k0, min(n_steps, k0 + scorer.batch_size))
                mask = label[None] <= ks[:, None, None]  # [k, H, W]
                mask = mask.reshape((len(ks),) + (1,) * (len(sample) - 2) + (h, w)) if len(sample) >= 2 else mask.reshape(len(ks), -1)
                yield np.where(mask, base[None], x[i][None]), np.full(len(ks), t[i], np.int64)

    calls0 = scorer.calls
    flat = score_stream(scorer, blocks(), advance)
    curves = original[:, None] - flat.reshape(len(x), n_steps)
    frac = np.array([np.mean([min(k + 1, len(pl)) for pl in plans]) for k in range(n_steps)]) * patch_size ** 2 / (h * w)
    return Curves("region_perturbation", curves, auc(curves), np.minimum(frac, 1.0), original, t,
                  {"patch_size": patch_size, "regions_evaluation": regions_evaluation, "steps": int(n_steps),
                   "order": order, "baseline": str(baseline), "abs": abs, "normalise": normalise,
                   "score": scorer.score}, scorer.calls - calls0)


def total_copies(metric: str, n: int, sample: tuple, **kw) -> int:
    """How many perturbed copies a run scores (for progress bars)."""
    if metric == "pixel_flipping":
        feat = int(np.prod(sample[1:])) if len(sample) >= 2 and kw.get("channel_reduce", "sum") == "sum" else int(np.prod(sample))
        fis = kw.get("features_in_step") or (int(np.ceil(feat / kw["steps"])) if kw.get("steps") else 1)
        return n * len(range(0, feat, fis))
    return n * int(kw.get("regions_evaluation", 100))
