"""Export every torchvision classification model (random seeded weights) with both ONNX exporters.

    python model_zoo/torchvision_zoo.py [--models resnet18,vgg11_bn,...] [--exporters legacy,dynamo]
                                        [--out DIR] [--jobs 2] [--timeout 1800] [--force]

Writes DIR/{name}_{exporter}.onnx (default DIR = model_zoo/build/torchvision), next to each a .npz with
the seeded input ``x`` (batch 2) and PyTorch ``logits``, a per-export .json record, and DIR/manifest.json
(all records: input shape, exporter, opset, status / error, export seconds, file size, op types,
onnxruntime-vs-PyTorch max abs diff). Each export runs in its own subprocess (isolation, memory).
Models over 250M parameters run one at a time, after the others.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_zoo.zoo import BUILD, EXPORTERS, export_torchvision, input_shape, list_torchvision  # noqa: E402

# approximate parameter counts (millions) of the heavy models: run them serially, last
HEAVY = {"regnet_y_128gf": 645, "vit_h_14": 633, "vit_l_16": 304, "vit_l_32": 306}


def _worker(name: str, exporter: str, out: str) -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("ZOO_THREADS", "1")))
    rec = export_torchvision(name, exporter, out)
    print(json.dumps({k: rec.get(k) for k in ("model", "exporter", "status", "total_seconds", "error")}))
    return 0


def _run_one(name, exporter, out: Path, timeout: float, threads: int) -> dict:
    rec_path = out / f"{name}_{exporter}.json"
    if rec_path.exists():
        rec_path.unlink()
    env = dict(os.environ, ZOO_THREADS=str(threads), OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", name, exporter, str(out)], env=env,
                           capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
        err = (p.stderr or "").strip().splitlines()[-3:]
        rc = p.returncode
    except subprocess.TimeoutExpired:
        rc, err = "timeout", [f"timed out after {timeout:.0f}s"]
    if rec_path.exists():
        rec = json.loads(rec_path.read_text())
    else:
        rec = {"model": name, "exporter": exporter, "input_shape": list(input_shape(name)), "status": "error",
               "error": f"worker died (rc={rc}): {' | '.join(err)}"[:600]}
        rec["total_seconds"] = round(time.perf_counter() - t0, 2)
        rec_path.write_text(json.dumps(rec, indent=1))
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma-separated names (default: all of torchvision.models)")
    ap.add_argument("--exporters", default="legacy,dynamo")
    ap.add_argument("--out", default=str(BUILD / "torchvision"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--force", action="store_true", help="re-export models that already have an ok record")
    ap.add_argument("--summary", action="store_true",
                    help="export nothing: rebuild manifest.json from the per-export .json records in --out and print it")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(*args.worker)
    if args.summary:
        out = Path(args.out)
        recs = [json.loads(p.read_text()) for p in sorted(out.glob("*_*.json")) if p.name != "manifest.json"]
        return _write_manifest(out, recs, merge=False)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.models.split(",") if n] or list_torchvision()
    exporters = [e for e in args.exporters.split(",") if e]
    for e in exporters:
        if e not in EXPORTERS:
            ap.error(f"unknown exporter {e!r}")
    jobs = max(1, args.jobs)
    threads = max(1, (os.cpu_count() or 2) // jobs)

    todo, done = [], []
    for n in names:
        for e in exporters:
            rp = out / f"{n}_{e}.json"
            if not args.force and rp.exists() and (out / f"{n}_{e}.onnx").exists():
                rec = json.loads(rp.read_text())
                if rec.get("status") == "ok":
                    done.append(rec)
                    continue
            todo.append((n, e))
    light = [t for t in todo if t[0] not in HEAVY]
    heavy = [t for t in todo if t[0] in HEAVY]
    lock = threading.Lock()
    t0 = time.perf_counter()

    def go(t):
        rec = _run_one(*t, out, args.timeout, threads)
        with lock:
            msg = rec["status"] if rec["status"] == "ok" else f"ERROR {rec.get('error', '')[:160]}"
            print(f"[{time.perf_counter() - t0:7.1f}s] {t[0]:22s} {t[1]:6s} {rec.get('total_seconds', 0):7.1f}s {msg}",
                  flush=True)
        return rec

    with ThreadPoolExecutor(jobs) as ex:
        done += list(ex.map(go, light))
    for t in heavy:  # one at a time, all cores
        rec = _run_one(*t, out, args.timeout, os.cpu_count() or 2)
        print(f"[{time.perf_counter() - t0:7.1f}s] {t[0]:22s} {t[1]:6s} {rec.get('total_seconds', 0):7.1f}s "
              f"{rec['status']} {rec.get('error', '')[:160]}", flush=True)
        done.append(rec)

    print(f"wall {time.perf_counter() - t0:.0f}s")
    return _write_manifest(out, done, merge=True)


def _write_manifest(out: Path, done: list, merge: bool) -> int:
    # merge with an existing manifest (other models / exporters)
    mpath = out / "manifest.json"
    manifest = {}
    if merge and mpath.exists():
        try:
            manifest = {(r["model"], r["exporter"]): r for r in json.loads(mpath.read_text())["exports"]}
        except Exception:  # noqa: BLE001
            manifest = {}
    for r in done:
        manifest[(r["model"], r["exporter"])] = r
    recs = sorted(manifest.values(), key=lambda r: (r["model"], r["exporter"]))
    import torch
    import torchvision

    mpath.write_text(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                                 "exports": recs}, indent=1) + "\n")
    ok = sum(r["status"] == "ok" for r in recs)
    print(f"{ok}/{len(recs)} exports ok; manifest {mpath}")
    for r in recs:
        if r["status"] != "ok":
            print(f"  FAIL {r['model']} ({r['exporter']}): {r.get('error', '')[:300]}")
        elif r.get("dynamic_error"):
            print(f"  STATIC {r['model']} ({r['exporter']}): dynamic batch failed: {r['dynamic_error'][:200]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
