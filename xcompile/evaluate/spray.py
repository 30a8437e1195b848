"""SpRAY (spectral relevance analysis, Lapuschkin et al. 2019, "Unmasking Clever Hans predictors"):
spectral clustering of one class's relevance maps over a dataset. Maps are summed over channels,
optionally block-averaged to a small size, normalized per map (L2), then an affinity is built (default:
self-tuning Gaussian with the k-th neighbour distance as local scale; ``affinity='knn'``: SpRAY's symmetric
k-nearest-neighbour graph); the eigenvalues of its normalized Laplacian give the eigengap (number of clusters =
position of the largest gap, unless given), and scikit-learn's SpectralClustering (affinity
'precomputed', same affinity) assigns the clusters. Prototypes = the mean relevance map (and mean input)
per cluster."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import XCompileError


def preprocess_maps(relevance: np.ndarray, size: int | None = 32, normalize: str = "l2") -> np.ndarray:
    """[N, C, H, W] / [N, H, W] / [N, D] -> [N, F] feature vectors for clustering."""
    r = np.asarray(relevance, np.float64)
    if r.ndim == 4:
        r = r.sum(axis=1)
    if r.ndim == 3 and size and max(r.shape[1:]) > size:
        fh, fw = max(1, r.shape[1] // size), max(1, r.shape[2] // size)
        h, w = r.shape[1] // fh * fh, r.shape[2] // fw * fw
        r = r[:, :h, :w].reshape(len(r), h // fh, fh, w // fw, fw).mean(axis=(2, 4))
    f = r.reshape(len(r), -1)
    if normalize == "l2":
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    elif normalize == "max":
        f = f / np.maximum(np.abs(f).max(axis=1, keepdims=True), 1e-12)
    elif normalize != "none":
        raise XCompileError(f"normalize {normalize!r}: use l2, max or none")
    return f


def knn_affinity(f: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Symmetric k-nearest-neighbour connectivity (SpRAY's original choice; may split into many components)."""
    from sklearn.neighbors import kneighbors_graph
    k = max(1, min(n_neighbors, len(f) - 1))
    a = kneighbors_graph(f, k, mode="connectivity", include_self=False).toarray()
    return 0.5 * (a + a.T)


def self_tuning_affinity(f: np.ndarray, n_neighbors: int) -> np.ndarray:
    """exp(-d_ij^2 / (s_i s_j)), s_i = distance to the k-th neighbour (Zelnik-Manor & Perona 2004): a
    connected graph whose eigengap is not inflated by small disconnected pieces."""
    from scipy.spatial.distance import cdist
    d = cdist(f, f)
    k = max(1, min(n_neighbors, len(f) - 1))
    s = np.maximum(np.sort(d, axis=1)[:, k], 1e-12)
    a = np.exp(-d ** 2 / (s[:, None] * s[None, :]))
    np.fill_diagonal(a, 0.0)
    return a


def laplacian_eigenvalues(affinity: np.ndarray, k: int) -> np.ndarray:
    """Smallest k eigenvalues of the symmetric normalized Laplacian I - D^-1/2 A D^-1/2."""
    d = affinity.sum(axis=1)
    inv = 1.0 / np.sqrt(np.maximum(d, 1e-12))
    lap = np.eye(len(affinity)) - inv[:, None] * affinity * inv[None, :]
    ev = np.linalg.eigvalsh(lap)
    return np.clip(ev[:k], 0, None)


@dataclass
class SprayResult:
    labels: np.ndarray         # [N]
    n_clusters: int
    eigenvalues: np.ndarray    # smallest eigenvalues of the normalized Laplacian
    eigengaps: np.ndarray      # eigenvalues[k] - eigenvalues[k-1], k = 1..
    prototypes: np.ndarray     # [K, H, W] mean relevance (channels summed) per cluster
    sizes: np.ndarray          # [K]

    def as_dict(self) -> dict:
        return {"n_clusters": self.n_clusters, "labels": self.labels.tolist(), "sizes": self.sizes.tolist(),
                "eigenvalues": self.eigenvalues.tolist(), "eigengaps": self.eigengaps.tolist()}


def spray(relevance: np.ndarray, n_clusters: int | None = None, *, max_clusters: int = 10, min_clusters: int = 2,
          n_neighbors: int = 10,
          size: int | None = 32, normalize: str = "l2", affinity: str = "self_tuning", seed: int = 0) -> SprayResult:
    from sklearn.cluster import SpectralClustering
    r = np.asarray(relevance, np.float64)
    if len(r) < 3:
        raise XCompileError(f"SpRAY needs at least 3 relevance maps; got {len(r)}")
    f = preprocess_maps(r, size, normalize)
    if affinity not in ("self_tuning", "knn"):
        raise XCompileError(f"affinity {affinity!r}: self_tuning or knn")
    aff = (self_tuning_affinity if affinity == "self_tuning" else knn_affinity)(f, n_neighbors)
    ev = laplacian_eigenvalues(aff, min(len(f), max_clusters + 1))
    gaps = np.diff(ev)
    if n_clusters is None:
        lo = max(1, min_clusters)  # gaps[k-1] = eigenvalue k+1 - eigenvalue k: the gap after k clusters
        n_clusters = int(lo + np.argmax(gaps[lo - 1: max_clusters])) if len(gaps) >= lo else 1
    if n_clusters == 1:
        labels = np.zeros(len(f), np.int64)
    else:
        sc = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                                assign_labels="kmeans", n_init=10)
        labels = sc.fit_predict(aff).astype(np.int64)
    maps = r.sum(axis=1) if r.ndim == 4 else r
    # order clusters by size (largest first) so the output is stable
    sizes = np.bincount(labels, minlength=n_clusters)
    order = np.argsort(-sizes, kind="stable")
    remap = np.empty_like(order)
    remap[order] = np.arange(n_clusters)
    labels = remap[labels]
    sizes = sizes[order]
    protos = np.stack([maps[labels == k].mean(axis=0) for k in range(n_clusters)])
    return SprayResult(labels, n_clusters, ev, gaps, protos, sizes)
