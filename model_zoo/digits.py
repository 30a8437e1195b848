"""Train the digits CNN and MLP (scikit-learn load_digits, 8x8) and export them to ONNX.

    python model_zoo/digits.py [--out DIR] [--no-ship]

Writes to DIR (default model_zoo/build/digits):
    digits_cnn.onnx         legacy exporter, opset 17, BatchNormalization kept (not folded)
    digits_cnn_dynamo.onnx  dynamo exporter, dynamic batch (BN folded by the exporter's optimizer)
    digits_mlp.onnx         legacy exporter, opset 17
    digits_mlp_dynamo.onnx  dynamo exporter
    digits_heldout.npz      x float32 [M,1,8,8] in [0,1], y int64
and ships (unless --no-ship) xcompile/data/digits_cnn.onnx, digits_cnn.json, digits_heldout.npz.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

from model_zoo.zoo import BUILD, DATA, export_onnx, op_types, ort_run, sha256, train_digits  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(BUILD / "digits"))
    ap.add_argument("--no-ship", action="store_true", help="do not copy into xcompile/data")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    results = {}
    for kind in ("cnn", "mlp"):
        model, acc, (xte, yte) = train_digits(kind, verbose=args.verbose)
        print(f"digits_{kind}: PyTorch held-out accuracy {acc:.4f} (M={len(yte)})")
        x1 = torch.from_numpy(xte[:2])  # batch 2: torch.export specializes sizes 0/1
        legacy = out / f"digits_{kind}.onnx"
        dyn = out / f"digits_{kind}_dynamo.onnx"
        export_onnx(model, x1, legacy, "legacy", preserve_batchnorm=(kind == "cnn"))
        export_onnx(model, x1, dyn, "dynamo")
        with torch.no_grad():
            ref = model(torch.from_numpy(xte)).numpy()
        for p in (legacy, dyn):
            onnx.checker.check_model(onnx.load(str(p)), full_check=True)
            got = ort_run(p, xte)
            oacc = float((got.argmax(1) == yte).mean())
            diff = float(np.abs(got - ref).max())
            print(f"  {p.name}: onnxruntime accuracy {oacc:.4f}, max |ort - torch| {diff:.2e}, "
                  f"{p.stat().st_size} bytes, sha256 {sha256(p)[:16]}")
            print(f"    ops: {' '.join(op_types(p))}")
            assert oacc == acc, (p, oacc, acc)
        if kind == "cnn":
            ops = op_types(legacy)
            assert "BatchNormalization" in ops, ops
            first = [n.op_type for n in onnx.load(str(legacy)).graph.node if n.op_type != "Constant"][:2]
            assert first == ["Sub", "Div"], first
            np.savez(out / "digits_heldout.npz", x=xte.astype(np.float32), y=yte.astype(np.int64))
        results[kind] = (acc, legacy)

    if not args.no_ship:
        DATA.mkdir(parents=True, exist_ok=True)
        acc, legacy = results["cnn"]
        assert legacy.stat().st_size < 200_000
        shutil.copyfile(legacy, DATA / "digits_cnn.onnx")
        shutil.copyfile(out / "digits_heldout.npz", DATA / "digits_heldout.npz")
        meta = {
            "input_name": "input",
            "output_name": "scores",
            "classes": [str(i) for i in range(10)],
            "heldout_accuracy": round(acc, 6),
            "input_range": [0, 1],
            "input_shape": ["N", 1, 8, 8],
            "source": "model_zoo/digits.py (scikit-learn load_digits / 16, train_test_split test_size=0.25 "
                      "random_state=0 stratified)",
            # for the web page (xcompile/web/models.py): a photo of a dark digit on paper is inverted
            "preprocess": {"invert": True},
            "preprocess_note": "pictures of dark digits on a light background are inverted (the training digits "
                               "are light strokes on dark, values in [0, 1]) and stretched to 8x8",
        }
        (DATA / "digits_cnn.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"shipped {DATA / 'digits_cnn.onnx'} sha256 {sha256(DATA / 'digits_cnn.onnx')}")
        print(f"shipped {DATA / 'digits_heldout.npz'} sha256 {sha256(DATA / 'digits_heldout.npz')}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
