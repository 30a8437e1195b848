"""Signal-estimator quality ρ(S) per layer (as in Kindermans et al. 2018, "Learning how to explain neural networks") for S_x, S_w, S_a, S_a+- (+ a random baseline).

    python tools/signal_quality.py                       # the shipped digits CNN (fit on the train split)
    python tools/signal_quality.py --model M.onnx --train TRAIN.npy --heldout TEST.npy --out DIR

Patterns are fitted on the training data with the same code as `xcompile fit-patterns`; ρ is measured on
held-out data (`xcompile evaluate-signal` does the same for an existing patterns file). Writes rho.csv,
rho.md (markdown table) and rho.png (bar plot) to --out, and prints the table.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from xcompile.patterns.fit import fit_file  # noqa: E402
from xcompile.patterns.signal import evaluate_signal, write_report  # noqa: E402

DATA = ROOT / "xcompile" / "data"


def digits_train(path: Path) -> Path:
    """The digits CNN's training split (model_zoo/digits.py: load_digits / 16, test_size=0.25, random_state=0,
    stratified), as [N, 1, 8, 8] float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    xtr, _, ytr, _ = train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)
    np.savez(path, x=xtr.reshape(-1, 1, 8, 8), y=ytr)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DATA / "digits_cnn.onnx"))
    ap.add_argument("--train", default=None, help="training data (.npy/.npz/images); default: the digits train split")
    ap.add_argument("--heldout", default=str(DATA / "digits_heldout.npz"))
    ap.add_argument("--out", default=str(ROOT / "build" / "signal_quality"))
    ap.add_argument("--png", default=None, help="also copy the bar plot here (e.g. docs/img/patterns_rho_digits.png)")
    ap.add_argument("--max-neurons", type=int, default=32)
    ap.add_argument("--max-samples", type=int, default=20000)
    ap.add_argument("--preprocess", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = Path(args.train) if args.train else digits_train(out / "digits_train.npz")
    t0 = time.perf_counter()
    patterns = out / "patterns.npz"
    st = fit_file(args.model, train, patterns, preprocess=args.preprocess, progress=False)
    t1 = time.perf_counter()
    res = evaluate_signal(args.model, patterns, args.heldout, max_neurons=args.max_neurons,
                          max_samples=args.max_samples, preprocess=args.preprocess, where=args.model)
    t2 = time.perf_counter()
    paths = write_report(res, out, title=f"ρ(S) on held-out data — {Path(args.model).name}")
    print(f"fit on {st.rows} rows in {t1 - t0:.1f} s; ρ evaluated in {t2 - t1:.1f} s")
    print(res.table())
    if args.png:
        shutil.copyfile(out / "rho.png", args.png)
        paths.append(Path(args.png))
    print("wrote " + ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
