"""Shrinkage of unreliable patterns toward the weight direction, so PatternNet / PatternAttribution stay finite.

A pattern a (normalized so that wᵀa = 1) is estimated from the samples where the neuron is active (the
two-component a₊) or from all samples (the linear a). It is unreliable when

* few samples enter it: a neuron almost never active on the fitting data (n₊ = 3 of 10⁵ patches), or
* the covariance along w is tiny or negative, wᵀ(E₊[x y] − E₊[x] E[y]) ≤ τ·E[y²], so that dividing by it
  blows the pattern up (we measured ‖a‖·‖w‖ = 500 on EfficientNet-Lite0 fitted on 8 photos), or
* its gain ‖a‖·‖w‖ (≥ 1 by Cauchy-Schwarz; the factor by which PatternNet's back-projected signal can grow in
  this layer) is huge: 50 layers of gain 10 overflow float32.

Every pattern is written a = u + r with u = w / ‖w‖² (the "filter" pattern S_w: wᵀu = 1) and r ⊥ w (wᵀr = 0),
and replaced by a' = u + λ r with

    λ = min(1, n / N_MIN, gain cap, covariance ramp)
    gain cap:        ‖u + λ r‖·‖w‖ = sqrt(1 + λ² ‖w‖² ‖r‖²) ≤ G_MAX   ->  λ ≤ sqrt(G_MAX² − 1) / (‖w‖ ‖r‖)
    covariance ramp: λ = 0 where wᵀcov ≤ τ·E[y²], linear up to 1 at 2τ·E[y²]

so wᵀa' = 1 still holds, a reliable pattern is unchanged (λ = 1), and a neuron seen active on no sample gets
the weight direction (PatternNet = the gradient there, PatternAttribution = w ⊙ w / ‖w‖²). A zero weight row
gets a zero pattern. The thresholds are documented in docs/patterns.md.
"""
from __future__ import annotations

import numpy as np

N_MIN = 100       # samples (active samples for a₊) below which a pattern is shrunk proportionally (n / N_MIN)
TAU = 1e-4        # relative covariance floor: wᵀcov ≤ TAU·E[y²] -> the weight direction
G_MAX = 10.0      # largest allowed gain ‖a‖·‖w‖


def shrink(num: np.ndarray, w2d: np.ndarray, count: np.ndarray, eyy: np.ndarray,
           n_min: float = N_MIN, tau: float = TAU, g_max: float = G_MAX):
    """num [C, D]: the pattern's numerator (a covariance); w2d [C, D]; count [C]: samples behind it;
    eyy [C]: E[y²] over all samples. Returns (patterns [C, D] with wᵀa = 1 or 0, λ [C])."""
    num = np.asarray(num, np.float64)
    w = np.asarray(w2d, np.float64)
    count = np.broadcast_to(np.asarray(count, np.float64).reshape(-1), (w.shape[0],))
    eyy = np.broadcast_to(np.asarray(eyy, np.float64).reshape(-1), (w.shape[0],))
    ww = np.sum(w * w, axis=1)
    den = np.sum(w * num, axis=1)
    floor = tau * np.maximum(eyy, 0.0)
    ok = np.isfinite(den) & np.isfinite(num).all(axis=1) & (den > floor) & (den > 0) & (ww > 0)
    safe_den = np.where(ok, den, 1.0)
    safe_ww = np.where(ww > 0, ww, 1.0)
    u = w / safe_ww[:, None]
    a = np.where(ok[:, None], num / safe_den[:, None], u)
    r = a - u
    r -= u * np.sum(w * r, axis=1, keepdims=True)  # exact orthogonality against rounding
    rn = np.sqrt(np.sum(r * r, axis=1)) * np.sqrt(ww)
    lam = np.minimum(1.0, count / n_min)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.minimum(lam, np.where(rn > 0, np.sqrt(g_max ** 2 - 1.0) / rn, 1.0))
        ramp = np.where(floor > 0, (den - floor) / floor, 1.0)
    lam = np.where(ok, np.minimum(lam, np.clip(ramp, 0.0, 1.0)), 0.0)
    lam = np.clip(np.nan_to_num(lam, nan=0.0), 0.0, 1.0)
    out = u + lam[:, None] * r
    out[ww == 0] = 0.0
    return out, lam


def gain(a: np.ndarray, w2d: np.ndarray) -> np.ndarray:
    """‖a‖·‖w‖ per neuron (the growth factor of PatternNet's signal through the layer)."""
    return np.sqrt(np.sum(a * a, axis=1) * np.sum(np.asarray(w2d) ** 2, axis=1))
