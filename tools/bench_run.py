"""`xcompile run` throughput on the shipped digits CNN (rows/s, whole command: load, explain, write every output).

    python tools/bench_run.py [--rows 450] [--method gradient] [--outputs all|relevance] [--engine local|ray]

Also reachable as `python tools/bench.py --run-throughput` (docs/benchmarks.md, "`xcompile run` throughput")."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(rows: int = 450, method: str = "gradient", outputs: str = "all", engine: str = "local",
            workers: int = 2, repeat: int = 2) -> dict:
    import xcompile
    from xcompile.commands.demo import shipped
    from xcompile.commands.main import app
    from xcompile.write.writer import save
    tmp = Path(tempfile.mkdtemp(prefix="xc_bench_run_"))
    try:
        x = np.load(shipped("digits_heldout.npz"))["x"].astype(np.float32)
        x = np.concatenate([x] * (-(-rows // len(x))))[:rows]
        np.save(tmp / "digits.npy", x)
        save(xcompile.compile(shipped("digits_cnn.onnx"), method), tmp / "explainer.onnx")
        argv = ["run", str(tmp / "explainer.onnx"), "-i", str(tmp / "digits.npy"), "--engine", engine,
                "--workers", str(workers)]
        if outputs != "all":
            argv += ["--outputs", outputs]
        times = []
        for k in range(repeat):
            out = tmp / f"out{k}"
            t0 = time.perf_counter()
            app(args=argv + ["--out", str(out)], prog_name="xcompile", standalone_mode=False)
            times.append(time.perf_counter() - t0)
        files = len(list((tmp / "out0").iterdir()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = min(times)
    return {"rows": rows, "method": method, "outputs": outputs, "engine": engine, "seconds": round(best, 3),
            "rows_per_s": round(rows / best, 1), "files": files}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=450)
    p.add_argument("--method", default="gradient")
    p.add_argument("--outputs", default="all")
    p.add_argument("--engine", default="local")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args(argv)
    r = measure(a.rows, a.method, a.outputs, a.engine, a.workers, a.repeat)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
