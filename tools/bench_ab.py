"""Interleaved before/after timing of compiled explainers in ONE process: the calls of every session alternate, so
drift in the load of a shared machine hits all of them alike (tools/bench.py measures each in its own process, one
after the other, which a loaded machine skews). Medians and ratios to the forward pass and to the gradient.

    python tools/bench_ab.py resnet50 --batch 8 --rounds 3 --methods gradient,lrp-epsilon-plus-flat \
        --before /tmp/before_build --after model_zoo/build/bench

Each folder holds `<model>__<method>.onnx` (tools/bench.py's build folder); the forward model is
`<after>/<model>.onnx`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="gradient,lrp-epsilon-plus-flat")
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=str(bench.OUT))
    a = ap.parse_args(argv)
    x = bench.make_input(a.model, bench.input_shape(Path(a.after) / f"{a.model}.onnx"), a.batch)
    paths = {"forward": Path(a.after) / f"{a.model}.onnx"}
    for tag, folder in (("before", a.before), ("after", a.after)):
        for m in a.methods.split(","):
            paths[f"{m} {tag}"] = Path(folder) / f"{a.model}__{m}.onnx"
    sessions = {k: bench._ort_session(p, a.threads, "cpu") for k, p in paths.items()}

    def call(k):
        s = sessions[k]
        feeds = {s.get_inputs()[0].name: x}
        if len(s.get_inputs()) > 1:
            feeds[s.get_inputs()[1].name] = np.full(a.batch, -1, np.int64)
        t = time.perf_counter()
        s.run(None, feeds)
        return time.perf_counter() - t

    for k in sessions:  # warm-up
        call(k)
    times = {k: [] for k in sessions}
    for _ in range(a.rounds):
        for k in sessions:
            times[k].append(call(k))
    med = {k: float(np.median(v)) for k, v in times.items()}
    for k in sessions:
        g = med.get("gradient " + k.split()[-1]) if k != "forward" else None
        print(f"{a.model} b={a.batch} {k:34s} {med[k]:.3f} s  / forward {med[k] / med['forward']:.2f}"
              + (f"  / gradient {med[k] / g:.2f}" if g else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
