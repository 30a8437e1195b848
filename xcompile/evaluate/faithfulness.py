"""Faithfulness of several explanation methods on the same rows: pixel flipping, most relevant first
(Bach et al. 2015; Samek et al. 2017, "Evaluating the visualization of what a deep neural network has learned"),
with a random-relevance reference flipped on the same rows with the same settings.

Every method explains the same inputs for the same class (the original model's predicted class, resolved once),
and every relevance map -- the random reference included -- is scored by one :class:`flipping.Scorer` with one set
of :func:`flipping.pixel_flipping` settings, so the areas under the curves are comparable row by row. The
headline measure is the evaluator's pixel-flipping AUC (docs/evaluation.md: trapezoid rule, dx = 1, lower = the
score falls faster = more faithful). Because the AUC's scale differs from row to row (and from model to model),
:func:`summarize` also reports paired, scale-free figures: the share of rows on which a method's AUC is below the
random reference's, and the median over rows of AUC(method) - AUC(random) divided by the row's unperturbed score
(the AOPC-like gap; Samek et al. 2017 average f(x) - f(x perturbed) over the steps)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import flipping

RANDOM = "random"
DEFAULT_METHODS = ("lrp:auto,lrp:attnlrp,lrp:epsilon-plus-flat,gradient,input_x_gradient,"
                   "integrated_gradients{steps=16}")


def random_relevance(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The reference every method has to beat: a Gaussian random map (as docs/evaluation.md's 'random (reference)')."""
    return np.random.default_rng(seed).standard_normal(np.shape(x)).astype(np.float32)


@dataclass
class Faithfulness:
    """Pixel-flipping curves per method on the same rows; ``curves[RANDOM]`` is the random reference (its AUC per
    row is the mean over ``settings['random_draws']`` maps)."""
    curves: dict                       # label -> flipping.Curves
    target: np.ndarray                 # [N] explained class, the same for every method
    errors: dict = field(default_factory=dict)    # label -> why it could not be compiled / run
    seconds: dict = field(default_factory=dict)   # label -> explanation time
    settings: dict = field(default_factory=dict)
    relevance: dict = field(default_factory=dict)  # label -> the maps flipped (not the random reference)

    def summary(self) -> dict:
        return summarize(self.curves)


def summarize(curves: dict, reference: str = RANDOM) -> dict:
    """label -> {mean, std, sem, median, n, beats_random (share of rows with AUC below the reference's),
    gap (median over rows of (AUC - AUC_reference) / |unperturbed score| / steps: negative = better than random)}."""
    ref = curves.get(reference)
    out = {}
    for label, c in curves.items():
        a = np.asarray(c.auc, np.float64)
        d = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
             "median": float(np.median(a)), "n": int(len(a)), "steps": int(c.curves.shape[1])}
        d["sem"] = d["std"] / np.sqrt(len(a)) if len(a) else float("nan")
        if ref is not None:
            d["beats_random"] = float(np.mean(a < ref.auc))
            scale = np.maximum(np.abs(c.original), 1e-12) * max(c.curves.shape[1] - 1, 1)
            d["gap"] = float(np.median((a - ref.auc) / scale))
        out[label] = d
    return out


def flip_compare(model, relevances: dict, x: np.ndarray, target=None, *, steps: int = 16, baseline="zero",
                 score: str = "softmax", batch_size: int = 256, seed: int = 0, random_draws: int = 1,
                 scorer: flipping.Scorer | None = None) -> tuple[dict, np.ndarray]:
    """Pixel-flip every map in ``relevances`` (label -> [N, ...]) and ``random_draws`` random maps on the same rows
    with the same settings. Returns ({label: Curves, RANDOM: Curves}, target)."""
    x = np.asarray(x, np.float32)
    scorer = scorer or flipping.Scorer(model, score=score, batch_size=batch_size)
    t, _ = flipping._resolve_targets(scorer, x, target)
    kw = dict(steps=steps, baseline=baseline, seed=seed)
    res = {label: flipping.pixel_flipping(scorer, x, r, t, **kw) for label, r in relevances.items()}
    draws = [flipping.pixel_flipping(scorer, x, random_relevance(x, seed + 1000 + k), t, **kw)
             for k in range(max(1, random_draws))]
    rnd = draws[0]
    if len(draws) > 1:
        cv = np.mean([d.curves for d in draws], axis=0)
        rnd = flipping.Curves(rnd.metric, cv, flipping.auc(cv), rnd.fraction, rnd.original, rnd.target,
                              {**rnd.settings, "random_draws": len(draws)},
                              sum(d.model_calls for d in draws))
    res[RANDOM] = rnd
    return res, t


def faithfulness(model, specs=DEFAULT_METHODS, x=None, target=None, *, steps: int = 16, baseline="zero",
                 score: str = "softmax", explain_batch: int = 8, batch_size: int = 256, seed: int = 0,
                 random_draws: int = 1, extra: dict | None = None, echo=None) -> Faithfulness:
    """Compile every method spec (``method[:rules][{key=value}]``, docs/evaluation.md), explain ``x`` for one target
    per row (default: the predicted class) with each, and flip all maps plus the random reference on the same rows.
    A method that cannot be compiled or run is recorded in ``errors`` and left out. ``extra``: label -> relevance
    maps computed elsewhere, flipped alongside."""
    from .run import compile_specs, parse_specs
    x = np.asarray(x, np.float32)
    scorer = flipping.Scorer(model, score=score, batch_size=batch_size)
    t, _ = flipping._resolve_targets(scorer, x, target)
    specs = parse_specs(specs) if isinstance(specs, str) else specs
    errors, seconds, relevances = {}, {}, {}
    for s in specs:
        try:
            exs = compile_specs(model, [s], echo=lambda m, s=s: errors.__setitem__(s.label, m))
        except Exception as e:  # noqa: BLE001 - reported per method
            errors[s.label] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            continue
        if s.label not in exs:
            continue
        t0 = time.perf_counter()
        try:
            parts = [exs[s.label].explain(x[i:i + explain_batch], t[i:i + explain_batch]).relevance
                     for i in range(0, len(x), explain_batch)]
        except Exception as e:  # noqa: BLE001 - a method that fails to run is reported, the others still count
            errors[s.label] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            continue
        r = np.concatenate(parts)
        if not np.isfinite(r).all():
            errors[s.label] = "non-finite relevance"
            continue
        relevances[s.label] = r
        seconds[s.label] = time.perf_counter() - t0
        if echo:
            echo(f"  explained {s.label} ({seconds[s.label]:.1f}s)")
    relevances.update(extra or {})
    curves, t = flip_compare(model, relevances, x, t, steps=steps, baseline=baseline, seed=seed,
                             random_draws=random_draws, scorer=scorer)
    return Faithfulness(curves, t, errors, seconds,
                        {"steps": steps, "baseline": str(baseline), "score": score, "rows": len(x),
                         "random_draws": max(1, random_draws)}, relevances)
