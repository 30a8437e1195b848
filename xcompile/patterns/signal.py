"""Signal-estimator quality (the ρ table of Kindermans et al. 2018; docs/patterns.md), on held-out data, per neuron:

    ρ(S) = 1 − max_v corr(wᵀx, vᵀ(x − S(x)))

for S_x (identity: x − S(x) ≡ 0, so nothing is left to correlate and ρ = 1 trivially — reported, flagged),
S_w (filter: w wᵀx / wᵀw), S_a (linear pattern: a y), S_a+- (two-component: a₊ y where the neuron is active,
a₋ y elsewhere) and S_rand (a random direction r: r y / wᵀr, the paper's baseline).

v is found by least squares. So that v cannot simply memorize the held-out rows (dense layers can have more
inputs than our held-out set has rows), it is fitted on one half of the held-out samples and the correlation
measured on the other half, both ways, with a ridge chosen from a small grid (max over the grid — the
criterion maximizes over v anyway). Everything is computed from second moments: the patch covariance is
eigendecomposed once per layer (group) and half, and each neuron/estimator is a low-rank (Woodbury) update
of it, so a neuron costs O(S·D + D²), not a regression over the raw samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files import csv_text, save_figure, write_text

ESTIMATORS = ("S_x", "S_w", "S_a", "S_a+-", "S_rand")
RIDGE = (1e-6, 1e-3, 1e-2, 1e-1)


class _Half:
    """Second moments of the patches of one group on one half of the samples (shared by its neurons)."""

    def __init__(self, X, tr, te):
        Xt = X[tr]
        self.tr, self.te, self.n = tr, te, len(tr)
        self.mx = Xt.mean(0)
        self.Cxx = Xt.T @ Xt / self.n - np.outer(self.mx, self.mx)
        e, self.Q = np.linalg.eigh((self.Cxx + self.Cxx.T) / 2)
        self.e = np.maximum(e, 0)
        self.Xte = X[te]


def _rho_estimator(h: _Half, X, y, R, U):
    """max over the ridge grid of corr(y_te, vᵀd_te), v = least squares on the training half.
    cov[d] = Cxx + Z M Zᵀ with Z = [Uᵀ, B], M = [[C_RR, −I], [−I, 0]] (d = x − R U), solved by Woodbury."""
    tr, n = h.tr, h.n
    Rt, yt = R[tr], y[tr]
    mR, my = Rt.mean(0), yt.mean()
    Xt = X[tr]
    B = Xt.T @ Rt / n - np.outer(h.mx, mR)                 # cov(x, R)   [D, K]
    CRR = Rt.T @ Rt / n - np.outer(mR, mR)                 # cov(R)      [K, K]
    cxy = Xt.T @ yt / n - h.mx * my                        # cov(x, y)   [D]
    cRy = Rt.T @ yt / n - mR * my                          # cov(R, y)   [K]
    cdy = cxy - U.T @ cRy
    K = R.shape[1]
    Z = np.concatenate([U.T, B], 1)                        # [D, 2K]
    Minv = np.block([[np.zeros((K, K)), -np.eye(K)], [-np.eye(K), -CRR]])
    trace = h.e.sum() - 2 * np.trace(B @ U) + np.trace(U.T @ CRR @ U)
    scale = max(trace / len(h.e), 1e-30)
    QZ, Qb = h.Q.T @ Z, h.Q.T @ cdy
    V = []
    for lam in RIDGE:
        inv = 1.0 / (h.e + lam * scale)
        AZ = h.Q @ (QZ * inv[:, None])                     # A⁻¹ Z
        Ab = h.Q @ (Qb * inv)                              # A⁻¹ b
        S = Minv + Z.T @ AZ
        try:
            V.append(Ab - AZ @ np.linalg.solve(S, Z.T @ Ab))
        except np.linalg.LinAlgError:
            V.append(Ab)
    V = np.stack(V, 1)                                     # [D, n_ridge]
    pred = h.Xte @ V - R[h.te] @ (U @ V)
    yte = y[h.te]
    out = np.zeros(len(RIDGE))
    for j in range(len(RIDGE)):
        p = pred[:, j]
        if p.std() > 0 and yte.std() > 0:
            out[j] = max(float(np.nan_to_num(np.corrcoef(p, yte)[0, 1])), 0.0)
    return out


def _rho_neuron(X, y, m, w, a, ap, an, rnd, halves):
    """ρ for every estimator for one neuron. X [S, D] patches, y [S] pre-bias outputs, m [S] gate;
    halves: [_Half, _Half] built on X."""
    out = {"S_x": 1.0}
    ests = {
        "S_w": ([y], [w / max(w @ w, 1e-30)]),
        "S_a": ([y], [a]),
        "S_a+-": ([y * m, y * (1 - m)], [ap, an]),
        "S_rand": ([y], [rnd / (w @ rnd if abs(w @ rnd) > 1e-12 else 1e-12)]),
    }
    for name, (rs, us) in ests.items():
        R, U = np.stack(rs, 1), np.stack(us, 0)
        corr = sum(_rho_estimator(h, X, y, R, U) for h in halves) / len(halves)
        out[name] = 1.0 - float(corr.max())
    return out


@dataclass
class SignalQuality:
    layers: list                      # layer keys
    rho: dict                         # layer -> estimator -> (mean, std, n neurons)
    samples: dict = field(default_factory=dict)

    def table(self) -> str:
        head = "| layer | samples | " + " | ".join(ESTIMATORS) + " |"
        lines = [head, "|" + "---|" * (len(ESTIMATORS) + 2)]
        for k in self.layers:
            r = self.rho[k]
            cells = []
            best = max(r[e][0] for e in ESTIMATORS if e != "S_x")
            for e in ESTIMATORS:
                txt = f"{r[e][0]:.3f}"
                if e == "S_x":
                    txt += "†"
                elif r[e][0] == best:
                    txt = f"**{txt}**"
                cells.append(txt)
            lines.append(f"| {k} | {self.samples.get(k, '')} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("† S_x: x − S(x) ≡ 0, so no correlation can remain: ρ = 1 by construction (not informative).")
        return "\n".join(lines)


def evaluate_signal(model, patterns, data, max_rows=2000, max_neurons=32, max_samples=20000, preprocess=None,
                    where="model", batch_size=64, seed=0) -> SignalQuality:
    from .fit import DataSource, Fitter, RawActivations, load_stats
    fitter = Fitter(model, where)
    g, layers = fitter.g, fitter.layers
    stats = load_stats(patterns)
    stats.check(fitter.fingerprint, str(patterns))
    src = DataSource(data, fitter.sample_shape, preprocess)
    rows = min(src.rows, max_rows)
    rng = np.random.default_rng(seed)
    # collect a random subset of samples per layer (streamed in batches)
    keep = [dict(X=[], y=[], m=[]) for _ in layers]
    total = [rows * L.positions for L in layers]
    raw = RawActivations(g, layers)
    for xb in src.batches(batch_size, 0, rows):
        acts = raw(xb)
        for i, (L, A) in enumerate(zip(layers, acts)):
            S = A["patches"].shape[1]
            p = min(1.0, max_samples / total[i])
            sel = np.flatnonzero(rng.random(S) < p) if p < 1 else np.arange(S)
            keep[i]["X"].append(A["patches"][:, sel].astype(np.float64))    # [g, s, Dg]
            keep[i]["y"].append(A["y"][:, :, sel].astype(np.float64))        # [g, Cg, s]
            keep[i]["m"].append(A["gate"][:, :, sel].astype(np.float64))
    res, samples = {}, {}
    for i, L in enumerate(layers):
        X = np.concatenate(keep[i]["X"], 1)
        Y = np.concatenate(keep[i]["y"], 2)
        M = np.concatenate(keep[i]["m"], 2)
        S = X.shape[1]
        samples[L.key] = S
        perm = rng.permutation(S)
        halves = [(perm[: S // 2], perm[S // 2:]), (perm[S // 2:], perm[: S // 2])]
        a = stats.patterns2d(i, L, "linear")
        ap = stats.patterns2d(i, L, "relu")
        an = stats.patterns2d(i, L, "relu_neg")
        C = L.channels
        Cg = C // L.groups
        neurons = np.unique(np.linspace(0, C - 1, min(C, max_neurons)).round().astype(int))
        per = {e: [] for e in ESTIMATORS}
        cache = {}
        for c in neurons:
            gi, j = divmod(int(c), Cg)
            if gi not in cache:
                cache = {gi: [_Half(X[gi], tr, te) for tr, te in halves]}
            rnd = rng.standard_normal(L.w2d.shape[1])
            r = _rho_neuron(X[gi], Y[gi, j], M[gi, j], L.w2d[c], a[c], ap[c], an[c], rnd, cache[gi])
            for e in ESTIMATORS:
                per[e].append(r[e])
        res[L.key] = {e: (float(np.mean(v)), float(np.std(v)), len(v)) for e, v in per.items()}
    return SignalQuality([L.key for L in layers], res, samples)


def write_report(res: SignalQuality, out, title: str = "") -> list:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "rho.csv", csv_text(
        ["layer", "samples"] + [f"{e}_{s}" for e in ESTIMATORS for s in ("mean", "std")],
        [[k, res.samples.get(k, "")] + [f"{v:.6f}" for e in ESTIMATORS for v in res.rho[k][e][:2]] for k in res.layers]))
    write_text(out / "rho.md", res.table() + "\n")
    png = out / "rho.png"
    plot_rho(res, png, title)
    return [out / "rho.csv", out / "rho.md", png]


def short_name(key: str) -> str:
    parts = [p for p in key.replace("_output_0", "").split("/") if p]
    return parts[0] if parts else key


def plot_rho(res: SignalQuality, path, title: str = "") -> None:

    from ..guards import plain_text_plots
    plt = plain_text_plots()  # Agg, and names in titles are never parsed as mathtext
    ests = list(ESTIMATORS)
    colors = {"S_x": "#bbbbbb", "S_w": "#4c72b0", "S_a": "#dd8452", "S_a+-": "#c44e52", "S_rand": "#8c8c8c"}
    n = len(res.layers)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * n, 2.8), dpi=90)
    width = 0.8 / len(ests)
    for k, e in enumerate(ests):
        vals = [res.rho[L][e][0] for L in res.layers]
        errs = [res.rho[L][e][1] for L in res.layers]
        xs = np.arange(n) + (k - (len(ests) - 1) / 2) * width
        ax.bar(xs, vals, width, yerr=errs, color=colors[e], label=e + (" (trivial)" if e == "S_x" else ""),
               hatch="//" if e == "S_x" else None, error_kw={"lw": 0.6})
    ax.set_xticks(np.arange(n))
    ax.set_xticklabels([short_name(L) for L in res.layers], fontsize=7)
    ax.set_ylabel("ρ(S)  (higher = better)", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, ncol=5, loc="upper center", bbox_to_anchor=(0.5, 1.18), frameon=False)
    if title:
        ax.set_title(title, fontsize=8, pad=22)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
