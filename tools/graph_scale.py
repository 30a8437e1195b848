"""How compile time grows with the graph: a chain of N (Gemm 8x8 + Relu) blocks compiled with `gradient` at
N/2 = 10k and 100k nodes, each in a fresh child process (peak memory from getrusage). Every pass of ours is meant
to be linear, so 10x the nodes should cost about 10x the time (docs/deployment.md "Serving: security" quotes the
ratio; the bound we hold is 12x). Stages are timed with cProfile-free wall clocks around load_forward, build and
assemble, so the share of onnx shape inference and onnxruntime's probe session is visible.

    python tools/graph_scale.py --nodes 10000 100000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, resource, sys, time
import numpy as np
from onnx import TensorProto, helper
n = int(sys.argv[1]) // 2
w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], (np.eye(8) * 0.9).astype(np.float32).ravel().tolist())
nodes, prev = [], "x"
for i in range(n):
    nodes.append(helper.make_node("Gemm", [prev, "w"], [f"g{i}"], name=f"gemm{i}"))
    nodes.append(helper.make_node("Relu", [f"g{i}"], [f"r{i}"], name=f"relu{i}"))
    prev = f"r{i}"
g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                      [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", 8])], [w])
model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
import xcompile
from xcompile import compiler
from xcompile.load import forward
stages = {}
def timed(name, fn):
    def wrap(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
    return wrap
compiler.load_forward = timed("load_forward (read, check, canonicalize, probe)", compiler.load_forward)
compiler.assemble = timed("assemble (write + full checker)", compiler.assemble)
t0 = time.perf_counter()
m = xcompile.compile(model, "gradient")
total = time.perf_counter() - t0
t1 = time.perf_counter()
xcompile.Explainer(m)
session = time.perf_counter() - t1
print(json.dumps({"nodes": 2 * n, "compile_s": total, "session_s": session, "stages": stages,
                  "explainer_nodes": len(m.graph.node),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[10_000, 100_000])
    a = ap.parse_args()
    rows = []
    for n in a.nodes:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True)
        if r.returncode:
            sys.exit(r.stderr[-3000:])
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        rows[-1]["wall_s"] = time.perf_counter() - t0
        print(json.dumps(rows[-1]))
    if len(rows) > 1:
        a0, a1 = rows[0], rows[-1]
        print(f"nodes x{a1['nodes'] / a0['nodes']:.0f}: compile x{a1['compile_s'] / a0['compile_s']:.1f}, "
              f"session x{a1['session_s'] / a0['session_s']:.1f}, peak memory x{a1['peak_mb'] / a0['peak_mb']:.1f}")


if __name__ == "__main__":
    main()
