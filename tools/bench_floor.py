"""Where an explainer's time goes, against the forward pass it is built on: onnxruntime's own profiler, kernel
time per node, split into the work any input-gradient must do and the rest.

    python tools/bench_floor.py model_zoo/build/bench/resnet50.onnx \
        model_zoo/build/bench/resnet50__gradient.onnx model_zoo/build/bench/resnet50__lrp-epsilon-plus-flat.onnx \
        --batch 4 --runs 5 --threads 2

Every session runs in this one process: warm-up calls first, then `--runs` rounds in which the forward and each
explainer take turns (so that a drifting load hits them alike); per node the median over the rounds. Nodes are
classified by name: the compiler names every node it adds `xc/...`, the model's own nodes keep theirs (onnxruntime
keeps the name when it fuses a node, and names a node it moves to the NCHWc layout after its output).

  forward linear      the model's own Conv / MatMul / Gemm (fused or NCHWc) inside the explainer
  modified forward    linear nodes the explainer adds whose input is a forward tensor (LRP's z+ = W+ a, ...)
  adjoint linear      linear nodes on the backward pass (Conv / ConvTranspose / MatMul / Gemm on a gradient)
  layout              onnxruntime's Reorder* nodes (NCHWc <-> NCHW)
  other               everything else, by operator

The "linear floor" is (forward linear + modified forward + adjoint linear) / the forward session's kernel time: what
the explainer would cost if every mask, stabilizer, layout change and sum were free. Both ratios are printed: against
the forward interleaved with the explainers (the caches shared, as `tools/bench_ab.py` measures) and against the
forward run back to back before them (its buffers stay in cache between calls, as in `tools/bench.py`'s own process). A target below it cannot be met
by changing the graph around the linear layers; only faster kernels (or fewer linear layers) move it.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

LINEAR = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "NchwcConv",
          "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def feeds_for(session, batch: int, length: int, seed: int = 0) -> dict:
    """Inputs for any classifier: float data uniform in [0, 1), token ids in [1, 100), masks 1, token types 0,
    the target -1 (the predicted class). Symbolic dims: the first is `batch`, the others `length`."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in session.get_inputs():
        if i.name == "target":
            out[i.name] = np.full(batch, -1, np.int64)
            continue
        shape = [d if isinstance(d, int) else (batch if k == 0 else length) for k, d in enumerate(i.shape)]
        if "float" in i.type:
            dt = np.float16 if "float16" in i.type else np.float32
            out[i.name] = rng.uniform(0, 1, shape).astype(dt)
        else:
            dt = np.int32 if "int32" in i.type else np.int64
            low = i.name.lower()
            v = np.ones(shape) if "mask" in low else np.zeros(shape) if "type" in low else rng.integers(1, 100, shape)
            out[i.name] = v.astype(dt)
    return out


def _session(path: str, threads: int, batch: int, fix_batch: bool):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="xc_floor_"), "p")
    if fix_batch:  # the batch as a constant at session creation (what a fixed-batch deployment could do)
        import onnx
        first = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0].dim_param
        if first:
            so.add_free_dimension_override_by_name(first, batch)
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def profile(paths, batch: int, length: int, runs: int, warmup: int, threads: int, fix_batch: bool = False) -> list:
    """Per path: {"nodes": {node name: (op, median kernel microseconds)}, "wall_s": median call}. The calls of all
    sessions alternate (forward, explainer, explainer, forward, ...) so that a drifting load hits them alike."""
    import time
    sessions = [_session(p, threads, batch, fix_batch) for p in paths]
    feeds = [feeds_for(s, batch, length) for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(warmup):
            s.run(None, f)
    alone = []
    for _ in range(runs):  # the first session (the forward) back to back first: its cache kept, as in bench.py
        t = time.perf_counter()
        sessions[0].run(None, feeds[0])
        alone.append(time.perf_counter() - t)
    walls = [[] for _ in sessions]
    for _ in range(runs):
        for k, (s, f) in enumerate(zip(sessions, feeds)):
            t = time.perf_counter()
            s.run(None, f)
            walls[k].append(time.perf_counter() - t)
    out = []
    for k, s in enumerate(sessions):
        events = json.loads(Path(s.end_profiling()).read_text())
        per = collections.defaultdict(list)
        op_of = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                name = e["name"][: -len("_kernel_time")]
                per[name].append(e["dur"])
                op_of[name] = e["args"].get("op_name", "?")
        # the last `runs` occurrences of each node are the interleaved calls (warm-up calls come first)
        nodes = {n: (op_of[n], float(np.median(v[-runs:]))) for n, v in per.items()}
        out.append({"nodes": nodes, "wall_s": float(np.median(walls[k]))})
        if k == 0:
            out[0]["alone"] = {n: (op_of[n], float(np.median(v[warmup:warmup + runs]))) for n, v in per.items()}
            out[0]["alone_wall_s"] = float(np.median(alone))
    return out


def classify(path: str, prof: dict) -> dict:
    """Kernel milliseconds per category (see the module docstring)."""
    import onnx
    g = onnx.load(path, load_external_data=False).graph
    produced_by_xc = {o for n in g.node if n.name.startswith("xc/") or any(t.startswith("xc/") for t in n.output)
                      for o in n.output}
    by_name = {n.name: n for n in g.node}
    by_output = {o: n for n in g.node for o in n.output}
    cats = collections.Counter()
    counts = collections.Counter()
    for name, (op, us) in prof["nodes"].items():
        if op.startswith("Reorder"):
            key = "layout"
        elif op in LINEAR:
            if "xc/" not in name:
                key = "forward linear"
            else:
                # onnxruntime names a node it moves to the NCHWc layout after its output: "<output>_nchwc"
                src = by_name.get(name) or by_output.get(name.removesuffix("_nchwc"))
                # an added linear node reading a forward tensor (not a gradient / relevance) is a modified forward
                data_in = src.input[0] if src is not None and src.input else ""
                key = "adjoint linear" if (src is None or data_in in produced_by_xc) else "modified forward"
        else:
            key = f"other: {op}"
        cats[key] += us / 1000.0
        counts[key] += 1
    return {k: (round(v, 2), counts[k]) for k, v in cats.most_common()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="the forward model (.onnx)")
    ap.add_argument("explainers", nargs="+", help="explainers compiled from it")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=128, help="value of the other symbolic dims (sequence length)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fix-batch", action="store_true", help="give onnxruntime the batch as a constant")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)
    for path in [a.model] + a.explainers:  # before any session (a failed one logs onnxruntime's profiler error)
        import onnx
        try:
            ok = Path(path).is_file() and len(onnx.load(path, load_external_data=False).graph.node) > 0
        except Exception:  # noqa: BLE001
            ok = False
        if not ok:
            print(f"bench_floor: {path}: not an ONNX model file", file=sys.stderr)
            return 2
    try:
        fwd, *profs = profile([a.model] + a.explainers, a.batch, a.length, a.runs, a.warmup, a.threads, a.fix_batch)
    except Exception as e:  # noqa: BLE001  (a file onnxruntime cannot load or run: one line, exit 2)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"bench_floor: {first}", file=sys.stderr)
        return 2
    fwd_ms = sum(us for _, us in fwd["nodes"].values()) / 1000.0
    fwd_linear = sum(us for op, us in fwd["nodes"].values() if op in LINEAR) / 1000.0
    alone_ms = sum(us for _, us in fwd["alone"].values()) / 1000.0
    print(f"forward {Path(a.model).name}: kernel {fwd_ms:.1f} ms interleaved (linear {fwd_linear:.1f} ms), "
          f"{alone_ms:.1f} ms back to back; call {fwd['wall_s'] * 1000:.1f} / {fwd['alone_wall_s'] * 1000:.1f} ms")
    report = {"model": a.model, "batch": a.batch, "threads": a.threads, "forward_kernel_ms": round(fwd_ms, 2),
              "forward_linear_ms": round(fwd_linear, 2), "forward_call_ms": round(fwd["wall_s"] * 1000, 2),
              "forward_alone_kernel_ms": round(alone_ms, 2), "forward_alone_call_ms": round(fwd["alone_wall_s"] * 1000, 2),
              "explainers": {}}
    for path, prof in zip(a.explainers, profs):
        cats = classify(path, prof)
        total = sum(v for v, _ in cats.values())
        floor = sum(cats.get(k, (0.0, 0))[0] for k in ("forward linear", "modified forward", "adjoint linear"))
        print(f"\n{Path(path).name}: kernel {total:.1f} ms = {total / fwd_ms:.2f}x the forward's "
              f"({total / alone_ms:.2f}x back to back), call {prof['wall_s'] * 1000:.1f} ms; "
              f"linear floor {floor:.1f} ms = {floor / fwd_ms:.2f}x ({floor / alone_ms:.2f}x back to back)")
        for k, (ms, n) in cats.items():
            # the linear categories and layout always, the others from 0.5 % of the kernel time
            if ms >= 0.005 * total or k in ("forward linear", "modified forward", "adjoint linear", "layout"):
                print(f"  {k:28s} {ms:8.1f} ms  {ms / fwd_ms:5.2f}x fwd  nodes {n}")
        report["explainers"][path] = {"kernel_ms": round(total, 2), "call_ms": round(prof["wall_s"] * 1000, 2),
                                      "ratio": round(total / fwd_ms, 3), "linear_floor_ratio": round(floor / fwd_ms, 3),
                                      "ratio_alone": round(total / alone_ms, 3),
                                      "linear_floor_ratio_alone": round(floor / alone_ms, 3),
                                      "categories": cats}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
