"""Round-trip latency and throughput of an explainer served by MLServer (V2 REST), client tritonclient.http.

    python tools/serve_bench.py                         # the shipped digits CNN, method gradient
    python tools/serve_bench.py --explainer E.onnx --data x.npy --requests 300 --threads 8

Starts MLServer on 127.0.0.1 (free ports) in a child process - once without and once with adaptive
batching - and prints a markdown table: sequential latency (p50/p90/p99) at batch 1 and 32, and
throughput with N client threads; plus the in-process Explainer latency for reference.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.http as th

import xcompile
from xcompile.serving.server import MLServerProcess
from xcompile.write.writer import save

DATA = Path(xcompile.__file__).parent / "data"
MODEL = "bench"


def make_request(ex, x, t):
    i = [th.InferInput(ex.data_input.name, list(x.shape), "FP32"), th.InferInput("target", [len(t)], "INT64")]
    i[0].set_data_from_numpy(x, binary_data=False)
    i[1].set_data_from_numpy(t, binary_data=False)
    return i, [th.InferRequestedOutput(n, binary_data=False) for n in (ex.score_output, "relevance")]


def pct(a, q):
    return float(np.percentile(np.asarray(a) * 1e3, q))


def sequential(url, ex, x, batch, n):
    c = th.InferenceServerClient(url)
    t = np.full(batch, -1, np.int64)
    lat = []
    for k in range(n + 10):
        rows = np.arange(k * batch, (k + 1) * batch) % len(x)
        inp, out = make_request(ex, x[rows], t)
        t0 = time.perf_counter()
        c.infer(MODEL, inp, outputs=out)
        if k >= 10:  # warm-up
            lat.append(time.perf_counter() - t0)
    c.close()
    return lat


def concurrent(url, ex, x, batch, threads, per_thread):
    t = np.full(batch, -1, np.int64)
    errors = []

    def work(w):
        c = th.InferenceServerClient(url)
        for k in range(per_thread):
            rows = (np.arange(batch) + (w * per_thread + k) * batch) % len(x)
            inp, out = make_request(ex, x[rows], t)
            try:
                c.infer(MODEL, inp, outputs=out)
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
        c.close()

    ts = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    t0 = time.perf_counter()
    for th_ in ts:
        th_.start()
    for th_ in ts:
        th_.join()
    dt = time.perf_counter() - t0
    n = threads * per_thread
    return {"requests_per_s": n / dt, "rows_per_s": n * batch / dt, "seconds": dt, "errors": len(errors)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--explainer", type=Path, help="default: compile the shipped digits CNN with --method")
    ap.add_argument("--method", default="gradient")
    ap.add_argument("--data", type=Path, help=".npy/.npz inputs (default: the shipped held-out digits)")
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per batch size")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--per-thread", type=int, default=100)
    ap.add_argument("--ort-threads", type=int, default=None, help="onnxruntime intra-op threads in the server")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = a.explainer
        if path is None:
            path = tmp / f"digits_{a.method}.onnx"
            save(xcompile.compile(DATA / "digits_cnn.onnx", a.method), path)
        ex = xcompile.Explainer(path, threads=a.ort_threads)
        if a.data:
            x = np.load(a.data)
            x = x["x"] if hasattr(x, "files") else x
        else:
            x = np.load(DATA / "digits_heldout.npz")["x"]
        x = np.ascontiguousarray(x, np.float32)

        res = {"cpu_cores": os.cpu_count(), "load_avg_1min_before": os.getloadavg()[0], "explainer": str(a.explainer or f"digits_cnn + {a.method}"),
               "local": {}, "servers": {}}
        for b in (1, 32):
            lat = []
            for k in range(a.requests + 10):
                xb = x[np.arange(k * b, (k + 1) * b) % len(x)]
                t0 = time.perf_counter()
                ex.explain(xb)
                if k >= 10:
                    lat.append(time.perf_counter() - t0)
            res["local"][b] = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}

        for label, extra in (("no batching", {}), ("adaptive batching (max 32 rows, 2 ms)", {"max_batch": 32, "max_batch_time": 0.002})):
            with MLServerProcess(path, tmp / label.split()[0], name=MODEL, threads=a.ort_threads, **extra) as srv:
                r = {"startup_s": srv.startup_s}
                for b in (1, 32):
                    lat = sequential(srv.url, ex, x, b, a.requests)
                    r[f"seq_b{b}"] = {"p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
                                      "rows_per_s": b * len(lat) / sum(lat)}
                for b in (1, 32):
                    r[f"conc_b{b}"] = concurrent(srv.url, ex, x, b, a.threads, a.per_thread)
                res["servers"][label] = r

    print(f"\nMLServer + XCompileRuntime, client tritonclient.http (JSON tensors), {res['cpu_cores']} CPU cores, "
          f"explainer: {res['explainer']}\n")
    print("| server | batch | sequential p50 / p90 / p99 (ms) | sequential rows/s | "
          f"{a.threads} threads: requests/s | rows/s | errors |")
    print("|---|---|---|---|---|---|---|")
    for label, r in res["servers"].items():
        for b in (1, 32):
            s, c = r[f"seq_b{b}"], r[f"conc_b{b}"]
            print(f"| {label} | {b} | {s['p50_ms']:.2f} / {s['p90_ms']:.2f} / {s['p99_ms']:.2f} | {s['rows_per_s']:.0f} | "
                  f"{c['requests_per_s']:.0f} | {c['rows_per_s']:.0f} | {c['errors']} |")
    for b, r in res["local"].items():
        print(f"| in-process Explainer (no server) | {b} | {r['p50_ms']:.3f} p50, {r['p99_ms']:.3f} p99 | | | | |")
    ups = ", ".join(f"{k}: {v['startup_s']:.1f} s" for k, v in res["servers"].items())
    print(f"\nserver start-up to ready: {ups}; 1-min load average before/after the run: "
          f"{res['load_avg_1min_before']:.1f} / {os.getloadavg()[0]:.1f} (other processes compete for the cores)")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
