"""How the cost of a compiled explainer scales: batch size, image size, IG steps / SmoothGrad samples, occlusion
windows (CNNs; BERT's sequence length is tools/bench_text.py --lengths). Every point is timed INTERLEAVED with the
forward pass of the same model and batch in one process (a shared machine's load hits both alike), so the
ratio "explainer / forward" is the number to read; seconds are given too.

    python tools/bench_scaling.py batch --model mobilenet_v2 --values 1,8,64
    python tools/bench_scaling.py image --model mobilenet_v2 --values 112,224,448
    python tools/bench_scaling.py ig --model mobilenet_v2 --values 8,32,128        # IG steps (chunk 4)
    python tools/bench_scaling.py smoothgrad --model mobilenet_v2 --values 4,16,64 # SmoothGrad samples (chunk 4)
    python tools/bench_scaling.py occlusion --model mobilenet_v2 --values 56,28,14 # window = stride (pixels)

Results are appended to model_zoo/build/bench/scaling.jsonl (`--json`); models and explainers are cached in the
build folder of tools/bench.py."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def model_at(name: str, size: int) -> Path:
    """The model exported at size x size (the benchmark's own export at 224)."""
    if size == 224:
        return Path(bench.export_model(name, {})["onnx"])
    path = bench.OUT / f"{name}_{size}.onnx"
    if not path.exists():
        import torch

        from model_zoo import zoo
        x = torch.from_numpy(bench.make_input(name, (3, size, size), 2))
        zoo.export_onnx(bench.torch_model(name), x, path, "legacy", dynamic_batch=True)
    return path


def explainer(model: Path, tag: str, method: str, rules=None, **params) -> Path:
    import xcompile
    from xcompile.write.writer import save
    dest = bench.OUT / f"{model.stem}__{tag}.onnx"
    if not dest.exists():
        save(xcompile.compile(str(model), method, rules=rules, **params), dest)
    return dest


def points(kind: str, name: str, values):
    """-> [(value, model path, batch, {label: explainer path})]"""
    out = []
    for v in values:
        if kind == "batch":
            m = model_at(name, 224)
            out.append((v, m, v, {"gradient": explainer(m, "gradient", "gradient"),
                                  "lrp-epsilon-plus-flat": explainer(m, "lrp-epsilon-plus-flat", "lrp", "epsilon-plus-flat")}))
        elif kind == "image":
            m = model_at(name, v)
            out.append((v, m, 8, {"gradient": explainer(m, "gradient", "gradient"),
                                  "lrp-epsilon-plus-flat": explainer(m, "lrp-epsilon-plus-flat", "lrp", "epsilon-plus-flat")}))
        elif kind == "ig":
            m = model_at(name, 224)
            out.append((v, m, 1, {f"ig steps={v}": explainer(m, f"ig{v}", "integrated_gradients", steps=v, chunk=4)}))
        elif kind == "smoothgrad":
            m = model_at(name, 224)
            out.append((v, m, 1, {f"smoothgrad samples={v}": explainer(m, f"sg{v}", "smoothgrad", samples=v, chunk=4,
                                                                       noise_level=0.1)}))
        elif kind == "occlusion":
            m = model_at(name, 224)
            out.append((v, m, 1, {f"occlusion window={v}": explainer(m, f"occ{v}", "occlusion", window=str(v),
                                                                     stride=str(v), chunk=16)}))
        else:
            raise SystemExit(f"unknown kind {kind!r}")
    return out


def time_point(name: str, model: Path, batch: int, explainers: dict, threads: int, rounds: int) -> dict:
    x = bench.make_input(name, bench.input_shape(model), batch)
    sessions = {"forward": bench._ort_session(model, threads, "cpu")}
    sessions.update({k: bench._ort_session(p, threads, "cpu") for k, p in explainers.items()})
    target = np.argmax(sessions["forward"].run(None, {sessions["forward"].get_inputs()[0].name: x})[0], 1)

    def call(k):
        s = sessions[k]
        feeds = {s.get_inputs()[0].name: x}
        if len(s.get_inputs()) > 1:
            feeds[s.get_inputs()[1].name] = target.astype(np.int64)
        t = time.perf_counter()
        s.run(None, feeds)
        return time.perf_counter() - t

    for k in sessions:
        call(k)
    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for k in sessions:
            times[k].append(call(k))
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["batch", "image", "ig", "smoothgrad", "occlusion"])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--values", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=str(bench.OUT / "scaling.jsonl"))
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    bench.OUT.mkdir(parents=True, exist_ok=True)
    for v, model, batch, exps in points(a.kind, a.model, [int(s) for s in a.values.split(",")]):
        med = time_point(a.model, model, batch, exps, a.threads, a.rounds)
        rec = {"kind": a.kind, "model": a.model, "value": v, "batch": batch, "threads": a.threads, "rounds": a.rounds,
               "median_s": med, "loadavg": os.getloadavg()[0]}
        print(f"{a.kind}={v} {a.model} batch {batch} (load {rec['loadavg']:.1f}): " + ", ".join(
            f"{k} {t:.3f} s ({t / med['forward']:.2f}x fwd)" for k, t in med.items()), flush=True)
        with open(a.json, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
