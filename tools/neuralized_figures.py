"""Figures for docs/neuralized.md (issue 5): neuralized k-means and one-class SVM on sklearn digits.

    python tools/neuralized_figures.py [--out docs/img]

Writes docs/img/neuralized_kmeans_digits.png and docs/img/neuralized_ocsvm_digits.png. Every
explanation comes from ONE onnxruntime call of the compiled explainer (pure ai.onnx graph).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from skl2onnx import to_onnx  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.svm import OneClassSVM  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from xcompile.methods.neuralized import compile_neuralized  # noqa: E402

warnings.filterwarnings("ignore")


def run(m, X, target=None):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    t = np.full(len(X), -1, np.int64) if target is None else target
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"X": X, "target": t})))


def heat(ax, R, title, vmax=None):
    v = vmax or np.abs(R).max() or 1.0
    ax.imshow(R.reshape(8, 8), cmap="bwr", vmin=-v, vmax=v)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def digit(ax, x, title):
    ax.imshow(x.reshape(8, 8), cmap="gray_r", vmin=0, vmax=16)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def kmeans_figure(X, y, out):
    km = KMeans(10, n_init=4, random_state=0).fit(X)
    m = compile_neuralized(to_onnx(km, X[:1]), data=X)        # beta = 1/mean f over the data
    rng = np.random.RandomState(1)
    idx = rng.choice(len(X), 6, replace=False)
    o = run(m, X[idx])
    d = o["scores"]
    fig, axes = plt.subplots(4, 6, figsize=(6.4, 4.6))
    for j, n in enumerate(idx):
        c = o["label"][j]
        comp = np.argsort(d[j])[1]
        digit(axes[0, j], X[n], f"digit {y[n]} -> cluster {c}")
        digit(axes[1, j], km.cluster_centers_[c], f"centroid {c}")
        digit(axes[2, j], km.cluster_centers_[comp], f"nearest rival {comp}")
        heat(axes[3, j], o["relevance"][j], f"R, f_c={o['explained_score'][j]:.0f}")
    fig.suptitle("Neuralized k-means (NEON): why this cluster rather than the competitors\n"
                 "red = pixel supports the assignment, blue = speaks for a competitor", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def corrupt(x, rng):
    """Stroke artefacts as in the seed: a bright straight stroke through the image."""
    img = x.reshape(8, 8).copy()
    if rng.rand() < 0.5:
        r = rng.randint(8)
        img[r, :] = 16
    else:
        c = rng.randint(8)
        img[:, c] = 16
    return img.ravel()


def ocsvm_figure(X, y, out):
    rng = np.random.RandomState(0)
    oc = OneClassSVM(gamma=1.0 / (64 * X.var()), nu=0.1).fit(X)
    m = compile_neuralized(to_onnx(oc, X[:1]))
    idx = rng.choice(len(X), 5, replace=False)
    clean = X[idx]
    bad = np.stack([corrupt(x, rng) for x in clean]).astype(np.float32)
    o_c, o_b = run(m, clean), run(m, bad)
    fig, axes = plt.subplots(4, 5, figsize=(5.6, 4.8))
    for j in range(5):
        digit(axes[0, j], clean[j], f"clean, o={o_c['explained_score'][j]:.0f} ({'in' if o_c['label'][j] > 0 else 'out'})")
        v = max(np.abs(o_c["relevance"][j]).max(), np.abs(o_b["relevance"][j]).max())
        heat(axes[1, j], o_c["relevance"][j], "R (clean)", v)
        digit(axes[2, j], bad[j], f"stroke, o={o_b['explained_score'][j]:.0f} ({'in' if o_b['label'][j] > 0 else 'out'})")
        heat(axes[3, j], o_b["relevance"][j], "R (corrupted)", v)
    fig.suptitle("Neuralized one-class SVM: relevance of the outlier score o(x)\n"
                 "(one colour scale per column; the artefact stroke collects the extra relevance)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "img"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    dg = load_digits()
    X, y = dg.data.astype(np.float32), dg.target
    kmeans_figure(X, y, os.path.join(a.out, "neuralized_kmeans_digits.png"))
    ocsvm_figure(X, y, os.path.join(a.out, "neuralized_ocsvm_digits.png"))
    for f in ("neuralized_kmeans_digits.png", "neuralized_ocsvm_digits.png"):
        p = os.path.join(a.out, f)
        print(p, os.path.getsize(p) // 1024, "KB")


if __name__ == "__main__":
    main()
