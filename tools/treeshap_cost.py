"""Cost of `treeshap` on a 500-tree, depth-8 LightGBM model (docs/tabular.md "Cost"): compile time, explainer size,
ms per row in onnxruntime (CPU) against shap's TreeExplainer on the same rows, and the error against shap.

    PYTHONPATH=$PWD python tools/treeshap_cost.py [--trees 500] [--depth 8] [--rows 200]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# tools/coverage.py would shadow the `coverage` package that numba (under shap) imports
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", type=int, default=500)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--leaves", type=int, default=255)
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None, help="pickle of the trained model: reused when it exists")
    a = ap.parse_args()
    import lightgbm as lgb
    import onnxruntime as ort
    import shap
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification

    from xcompile.compiler import compile as xc

    X, y = make_classification(6000, 30, n_informative=15, random_state=0)
    X = X.astype(np.float32)
    import pickle
    if a.cache and Path(a.cache).exists():
        m = pickle.loads(Path(a.cache).read_bytes())
    else:
        m = lgb.LGBMClassifier(n_estimators=a.trees, max_depth=a.depth, num_leaves=a.leaves, verbose=-1).fit(X, y)
        if a.cache:
            Path(a.cache).write_bytes(pickle.dumps(m))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = convert_lightgbm(m, initial_types=[("X", FloatTensorType([None, 30]))])
    D = X[:100]
    t0 = time.perf_counter()
    e = xc(o, "treeshap", data=D)
    compile_s = time.perf_counter() - t0
    meta = {p.key: p.value for p in e.metadata_props}
    size_mb = len(e.SerializeToString()) / 2**20
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    s = ort.InferenceSession(e.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rows = X[-a.rows:]
    feed = {"X": rows[:10], "target": np.ones(10, np.int64)}
    s.run(None, feed)
    t0 = time.perf_counter()
    outs = [s.run(None, {"X": rows[i:i + 10], "target": np.ones(10, np.int64)})[1] for i in range(0, len(rows), 10)]
    ours_ms = (time.perf_counter() - t0) * 1000 / len(rows)
    ours = np.concatenate(outs)
    ex = shap.TreeExplainer(m, data=D.astype(np.float64), feature_perturbation="tree_path_dependent")
    t0 = time.perf_counter()
    ref = np.asarray(ex.shap_values(rows.astype(np.float64)))
    shap_ms = (time.perf_counter() - t0) * 1000 / len(rows)
    ref = ref[..., 1] if ref.ndim == 3 else ref
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"| {a.trees} trees, max_depth {a.depth}, num_leaves {a.leaves} | paths {meta['xcompile.paths']} x depth "
          f"{meta['xcompile.path_depth']} | compile {compile_s:.1f} s | explainer {size_mb:.1f} MiB | "
          f"{ours_ms:.2f} ms/row (onnxruntime CPU, {a.threads} threads, batches of 10) | shap TreeExplainer "
          f"{shap_ms:.2f} ms/row | max|ours-shap|/max|shap| = {err:.1e} |")


if __name__ == "__main__":
    main()
