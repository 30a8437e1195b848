"""`xcompile demo --task tabular`: a gradient-boosted tree model trained here on scikit-learn's breast cancer data,
converted by skl2onnx, compiled with `treeshap` (covers counted from training rows), run on held-out rows:
relevance.csv and one bar chart per row (docs/tabular.md)."""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import XCompileError
from ..files import check_output


def run_tabular_demo(out: Path, n: int, echo) -> dict:
    try:
        from skl2onnx import to_onnx
        from sklearn.datasets import load_breast_cancer
        from sklearn.ensemble import GradientBoostingClassifier
    except ImportError:
        raise XCompileError("demo --task tabular needs scikit-learn and skl2onnx: pip install 'xcompile[sklearn]'") from None
    from .. import compile as compile_model
    from ..runtime.explainer import Explainer
    from ..runtime.tabular import write_tabular
    from ..write.writer import save

    check_output(out, what="--out", folder=True)
    d = load_breast_cancer()
    X, y = d.data.astype(np.float32), d.target
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    train, test = order[:450], order[450:]
    if not 1 <= n <= len(test):
        raise XCompileError(f"--n {n}: between 1 and {len(test)} (the held-out rows)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = GradientBoostingClassifier(n_estimators=50, max_depth=3, random_state=0).fit(X[train], y[train])
    echo(f"model: GradientBoostingClassifier (50 trees, depth 3) trained on scikit-learn breast_cancer "
         f"({len(train)} rows, {X.shape[1]} features) in {time.perf_counter() - t0:.1f} s; held-out accuracy "
         f"{(model.predict(X[test]) == y[test]).mean():.3f}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = to_onnx(model, X[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    save(onx, out / "breast_cancer_gb.onnx")
    covers = X[train][:200]
    np.save(out / "covers.npy", covers)
    t0 = time.perf_counter()
    explainer = compile_model(onx, "treeshap", data=covers)
    path = out / "breast_cancer_gb_treeshap.onnx"
    save(explainer, path)
    echo(f"compiled treeshap in {time.perf_counter() - t0:.2f} s -> {path} "
         f"(xcompile compile {out / 'breast_cancer_gb.onnx'} --method treeshap --set data={out / 'covers.npy'})")
    ex = Explainer(path)
    rows = X[test][:n]
    res = ex.explain(rows, -1)
    names = [str(f) for f in d.feature_names]
    paths = write_tabular(out, names, rows, res, "heldout")
    cons = np.asarray(res.extras.get("conservation", np.full(n, np.nan)))
    for k in range(n):
        r = np.asarray(res.relevance)[k]
        top = np.argsort(-np.abs(r))[:3]
        label = d.target_names[int(res.predicted[k])]
        echo(f"  row {k}: {label:<9} (true {d.target_names[y[test][k]]}); top features: "
             + ", ".join(f"{names[i]} {r[i]:+.3f}" for i in top)
             + f"; sum + expected value = raw score x {cons[k]:.6f}")
    echo(f"wrote {len(paths)} files (relevance.csv, one bar chart per row) to {out}")
    return {"explainer": path, "relevance": np.asarray(res.relevance), "conservation": cons}
