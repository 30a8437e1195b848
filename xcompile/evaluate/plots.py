"""Matplotlib figures for the evaluation commands (Agg backend, small PNGs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import save_figure


def _plt():

    from ..guards import plain_text_plots
    plt = plain_text_plots()  # Agg, and names in titles are never parsed as mathtext
    return plt


def plot_curves(path, results: dict, metric: str, title: str = "") -> Path:
    """results: {label: Curves}; one mean curve per method with its mean AUC in the legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=90)
    colors = plt.get_cmap("tab20").colors
    for k, (label, c) in enumerate(results.items()):
        steps = np.arange(1, c.curves.shape[1] + 1)
        style = dict(color="black", ls="--") if "random" in label else dict(color=colors[(2 * k) % 20 + (k // 10) % 2],
                                                                            ls=("-", "-.", ":")[k % 3])
        ax.plot(steps, c.mean_curve, label=f"{label} (AUC {c.mean_auc:.3g})", lw=1.3, **style)
    ylabel = {"pixel_flipping": "target score after flipping",
              "region_perturbation": "score drop f(x) - f(x perturbed)"}.get(metric, metric)
    ax.set_xlabel("perturbation step (most relevant first)")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title or metric.replace("_", " "), fontsize=9)
    ax.legend(fontsize=6.5, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_eigengap(path, eigenvalues: np.ndarray, n_clusters: int, title: str = "") -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3), dpi=90)
    k = np.arange(1, len(eigenvalues) + 1)
    ax.plot(k, eigenvalues, "o-", ms=4)
    if 1 <= n_clusters < len(eigenvalues):
        ax.axvspan(n_clusters + 0.1, n_clusters + 0.9, color="tab:red", alpha=0.2, label=f"largest gap: {n_clusters} clusters")
        ax.legend(fontsize=7)
    ax.set_xlabel("k")
    ax.set_ylabel("eigenvalue of normalized Laplacian", fontsize=8)
    ax.set_title(title or "SpRAY eigengap", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def plot_prototypes(path, prototypes: np.ndarray, sizes, images=None, title: str = "") -> Path:
    """Mean relevance map per cluster (diverging colormap), with the cluster's mean input above it."""
    plt = _plt()
    k = len(prototypes)
    rows = 2 if images is not None else 1
    fig, axes = plt.subplots(rows, k, figsize=(1.6 * k + 0.4, 1.7 * rows + 0.3), dpi=90, squeeze=False)
    for j in range(k):
        r = prototypes[j]
        m = np.abs(r).max() or 1.0
        if images is not None:
            img = images[j]
            axes[0, j].imshow(img if img.ndim == 3 else img, cmap=None if img.ndim == 3 else "gray", interpolation="nearest")
            axes[0, j].set_title(f"cluster {j} (n={int(sizes[j])})", fontsize=7)
        axes[-1, j].imshow(r, cmap="bwr", vmin=-m, vmax=m, interpolation="nearest")
        if images is None:
            axes[-1, j].set_title(f"cluster {j} (n={int(sizes[j])})", fontsize=7)
        for a in axes[:, j]:
            a.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return Path(path)


def display_image(x: np.ndarray) -> np.ndarray:
    """A model input [C, H, W] -> something imshow can show (min-max scaled)."""
    a = np.asarray(x, np.float64)
    if a.ndim == 3:
        a = a.transpose(1, 2, 0) if a.shape[0] in (1, 3) else a
        if a.shape[-1] == 1:
            a = a[..., 0]
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
