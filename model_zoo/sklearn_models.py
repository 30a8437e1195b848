"""Fit scikit-learn models on digits and export them with skl2onnx (deterministic).

    python model_zoo/sklearn_models.py [--out DIR] [--models kmeans,svc_scaled,...]

Models: kmeans, minibatch_kmeans, ocsvm (OneClassSVM rbf), svc (SVC rbf, 3 vs 8), each also as
*_scaled = Pipeline(StandardScaler, model). Target opset {'': 17, 'ai.onnx.ml': 3}.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from model_zoo.zoo import BUILD, SKLEARN_MODELS, build_sklearn, op_types, sha256  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(BUILD / "sklearn"))
    ap.add_argument("--models", default=",".join(SKLEARN_MODELS))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rc = 0
    for name in args.models.split(","):
        path, est, X = build_sklearn(name, args.out)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {"input": X})
        names = [o.name for o in sess.get_outputs()]
        label, scores = outs[0], outs[1]
        if hasattr(est, "decision_function"):
            ref = est.decision_function(X)
            got = scores[:, -1] if scores.ndim == 2 else scores
            diff = float(np.abs(got.ravel() - ref.ravel()).max())
            what = "decision_function"
        else:
            ref = est.transform(X)
            diff = float(np.abs(scores - ref).max())
            what = "transform (distances)"
        lab_ok = float((label.ravel() == est.predict(X).ravel()).mean())
        print(f"{name:24s} outputs {names} {[list(o.shape) for o in outs]}; max|ort - sklearn {what}| {diff:.2e}; "
              f"label agreement {lab_ok:.4f}; sha256 {sha256(path)[:12]}")
        print(f"{'':24s} ops: {' '.join(op_types(path))}")
        if diff > 1e-3 or lab_ok < 0.99:
            rc = 1
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
