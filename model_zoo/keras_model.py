"""Train a small Keras 3 CNN on digits (torch backend) and export it with model.export(format="onnx").

    KERAS_BACKEND=torch python model_zoo/keras_model.py [--out DIR]

Needs `pip install keras` (3.x). With the torch backend, Keras' ONNX export goes through torch.onnx.export
(TorchScript-based), so neither TensorFlow nor tf2onnx is needed. The exported input is channels-last
[batch,8,8,1] (a Transpose to NCHW precedes the first Conv).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from model_zoo.zoo import BUILD, build_keras_digits, op_types, ort_run, sha256  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(BUILD / "keras"))
    args = ap.parse_args(argv)
    import onnx

    t0 = time.perf_counter()
    path, model, acc, (xte, yte) = build_keras_digits(args.out)
    m = onnx.load(str(path))
    iname = m.graph.input[0].name
    got = ort_run(path, xte, iname)
    oacc = float((got.argmax(1) == yte).mean())
    ref = np.asarray(model.predict(xte, verbose=0))
    print(f"digits_keras: Keras held-out accuracy {acc:.4f}; onnxruntime {oacc:.4f}; "
          f"max |ort - keras| {np.abs(got - ref).max():.2e}")
    print(f"  {path} ({path.stat().st_size} bytes, sha256 {sha256(path)[:16]}); input {iname!r} "
          f"output {m.graph.output[0].name!r}")
    print(f"  ops: {' '.join(op_types(path))}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0 if oacc == acc else 1


if __name__ == "__main__":
    raise SystemExit(main())
