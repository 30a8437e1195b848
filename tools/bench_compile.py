"""Compile time, before / after: each round runs one child process per checkout (alternating, so that the load of a
shared machine hits both alike); a child imports that checkout's xcompile, compiles `--warmup` once (imports and
onnxruntime start-up are not counted), then times `xcompile.compile(MODEL, METHOD)`. Medians over `--rounds`.

    python tools/bench.py --models resnet50 --batches 4 --methods gradient --frameworks ort   # exports resnet50.onnx
    python tools/bench_compile.py model_zoo/build/bench/resnet50.onnx --before /path/to/other/checkout --rounds 3"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CHILD = ("import sys, time, json; sys.path.insert(0, sys.argv[1]); import xcompile\n"
         "if sys.argv[4]: xcompile.compile(sys.argv[4], sys.argv[3])\n"
         "t = time.perf_counter(); xcompile.compile(sys.argv[2], sys.argv[3])\n"
         "print('@@' + json.dumps(time.perf_counter() - t))\n")


def once(root: Path, model: str, method: str, warmup: str) -> float:
    p = subprocess.run([sys.executable, "-c", CHILD, str(root), model, method, warmup], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(root)))
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("@@")), None)
    if line is None:
        raise SystemExit(f"compiling with {root} failed:\n{p.stderr[-3000:]}")
    return float(json.loads(line[2:]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--method", default="gradient")
    ap.add_argument("--before", default=None, help="another checkout, timed in alternation with this one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", default="", help="a small model compiled first in each child (not timed)")
    a = ap.parse_args(argv)
    roots = {"after": ROOT} | ({"before": Path(a.before).resolve()} if a.before else {})
    times = {k: [] for k in roots}
    for _ in range(a.rounds):
        for k, r in roots.items():
            times[k].append(once(r, a.model, a.method, a.warmup))
    for k, v in times.items():
        print(f"{k:6s} compile {a.method} {Path(a.model).name}: median {np.median(v):.2f} s  "
              f"({', '.join(f'{t:.2f}' for t in v)}; load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
