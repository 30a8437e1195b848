"""The self-check's share of a compile (docs/selfcheck.md, "Measured"): process CPU time (onnxruntime's threads
included) and wall time of `verify.prepare` + `verify.check` against the whole `compile`.

    PYTHONPATH=$PWD python tools/selfcheck_overhead.py MODEL.onnx gradient lrp ...
"""
from __future__ import annotations

import json
import sys
import time

import xcompile.compiler as compiler
from xcompile import verify


def main(path: str, methods: list, repeats: int = 2) -> None:
    acc = {"cpu": 0.0, "wall": 0.0}

    def timed(fn):
        def wrapped(*a, **k):
            t, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                acc["wall"] += time.perf_counter() - t
                acc["cpu"] += time.process_time() - c
        return wrapped

    verify.prepare, verify.check = timed(verify.prepare), timed(verify.check)
    for method in methods:
        for _ in range(repeats):
            acc.update(cpu=0.0, wall=0.0)
            t, c = time.perf_counter(), time.process_time()
            model = compiler.compile(path, method)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            v = json.loads({p.key: p.value for p in model.metadata_props}["xcompile.verify"])
            print(f"{path} {method}: compile cpu {cpu:.1f} s wall {wall:.1f} s; self-check cpu {acc['cpu']:.1f} s "
                  f"wall {acc['wall']:.1f} s ({100 * acc['cpu'] / max(cpu - acc['cpu'], 1e-9):.0f} % cpu overhead); "
                  f"{v['check']} error {v.get('error', 0):.3g} tolerance {v.get('tolerance', 0):.3g}", flush=True)
            del model


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
