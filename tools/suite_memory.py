"""Run pytest under a memory sampler: the peak resident memory of the whole process tree (pytest, the CLI
subprocesses and servers it starts) and the test running at that moment.

    python tools/suite_memory.py [--interval 0.5] [--out DIR] -- [pytest arguments]
    python tools/suite_memory.py -- tests/lrp --durations=30

Every ``--interval`` seconds it sums RSS and PSS (proportional set size: shared pages split between the processes
that map them, so forked workers are not counted twice) over pytest and all its descendants, and charges the sample
to the test running then (this file is also a pytest plugin, loaded with ``-p suite_memory``, that names the
running test in a file). It prints the peak tree RSS / PSS, the test and the processes alive at that moment, the
wall time, the tests with the highest tree peak, and writes DIR/samples.jsonl and DIR/per_test.json (default
DIR: a fresh temporary folder). The in-process ledger of tests/conftest.py (``XCOMPILE_TEST_MEMORY``) is set
as well, to DIR/ledger.jsonl: the pytest process's own RSS after each test (what fixtures and caches still hold).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_CURRENT = os.environ.get("SUITE_MEMORY_CURRENT")


# ------------------------------------------------------------------------------------------ pytest plugin side
def pytest_runtest_logstart(nodeid, location):
    if _CURRENT:
        Path(_CURRENT).write_text(nodeid)


def pytest_runtest_logfinish(nodeid, location):
    if _CURRENT:
        Path(_CURRENT).write_text(f"(after {nodeid})")


# ------------------------------------------------------------------------------------------ sampler side
def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(proc):
    import psutil

    try:
        return [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _sample(proc) -> dict:
    import psutil

    rss = pss = 0
    procs = []
    for p in _tree(proc):
        try:
            r = p.memory_info().rss
            name = " ".join(p.cmdline()[:4])[:120]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        k = _pss_kb(p.pid) * 1024
        rss += r
        pss += k
        procs.append((round(r / 2 ** 20), round(k / 2 ** 20), p.pid, name))
    return {"rss_mb": round(rss / 2 ** 20), "pss_mb": round(pss / 2 ** 20), "procs": sorted(procs, reverse=True)}


def main(argv=None) -> int:
    import psutil

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--out", default=None, help="folder for samples.jsonl, per_test.json, ledger.jsonl")
    ap.add_argument("--top", type=int, default=25, help="tests listed by their tree peak")
    ap.add_argument("pytest_args", nargs="*")
    a = ap.parse_args(argv)
    out = Path(a.out or tempfile.mkdtemp(prefix="suite_memory_"))
    out.mkdir(parents=True, exist_ok=True)
    current = out / "current.txt"
    current.write_text("(collection)")
    env = dict(os.environ, SUITE_MEMORY_CURRENT=str(current), XCOMPILE_TEST_MEMORY=str(out / "ledger.jsonl"))
    # the plugin is this file, reached through a folder of its own: tools/ itself on the path would shadow
    # packages by our tool names (tools/coverage.py hides coverage, which numba imports)
    plugin = out / "plugin"
    plugin.mkdir(exist_ok=True)
    (plugin / "suite_memory.py").unlink(missing_ok=True)
    (plugin / "suite_memory.py").symlink_to(Path(__file__).resolve())
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(plugin), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    (out / "ledger.jsonl").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-p", "suite_memory", *a.pytest_args]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, env=env)
    proc = psutil.Process(child.pid)
    peak, per_test, last = None, {}, time.perf_counter()
    with open(out / "samples.jsonl", "w") as log:
        while child.poll() is None:
            s = _sample(proc)
            now = time.perf_counter()
            try:
                test = current.read_text()
            except OSError:
                test = "?"
            s["t"], s["test"] = round(time.perf_counter() - t0, 1), test
            log.write(json.dumps({k: s[k] for k in ("t", "rss_mb", "pss_mb", "test")}) + "\n")
            rec = per_test.setdefault(test, {"rss_mb": 0, "pss_mb": 0, "seconds": 0.0})
            rec["rss_mb"] = max(rec["rss_mb"], s["rss_mb"])
            rec["pss_mb"] = max(rec["pss_mb"], s["pss_mb"])
            rec["seconds"] = round(rec["seconds"] + now - last, 1)  # a sample of a large tree takes a while
            last = now
            if peak is None or s["rss_mb"] > peak["rss_mb"]:
                peak = s
            time.sleep(a.interval)
    wall = time.perf_counter() - t0
    (out / "per_test.json").write_text(json.dumps(per_test, indent=1))
    print(f"\n[suite_memory] exit {child.returncode}, wall {wall:.0f} s ({wall / 60:.1f} min), samples in {out}")
    if peak:
        print(f"[suite_memory] peak tree RSS {peak['rss_mb']} MB (PSS {peak['pss_mb']} MB) at {peak['t']} s "
              f"during {peak['test']}")
        for r, k, pid, name in peak["procs"][:8]:
            print(f"    {r:>6} MB rss {k:>6} MB pss  pid {pid}  {name}")
    top = sorted(per_test.items(), key=lambda kv: -kv[1]["rss_mb"])[:a.top]
    print("[suite_memory] tests by tree peak (RSS / PSS MB, seconds sampled):")
    for test, rec in top:
        print(f"    {rec['rss_mb']:>6} {rec['pss_mb']:>6} {rec['seconds']:>7.1f}  {test}")
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
