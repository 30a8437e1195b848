"""timm classification models (random seeded weights) exported with both ONNX exporters, for
``tools/coverage.py --source timm``.

    python model_zoo/timm_zoo.py --list [--n 150]                  # the selection, in sweep order
    python model_zoo/timm_zoo.py --models a,b [--exporters legacy,dynamo] [--out DIR] [--force]
    python model_zoo/timm_zoo.py --param-table                     # rebuild model_zoo/timm_models.json

Selection: timm's model -> module mapping (``timm.models._registry._model_to_module``) groups the registered
architectures into families (one module = one family). ``model_zoo/timm_models.json`` (committed, rebuilt by
``--param-table``: every model instantiated on the meta device) records each model's family and parameter count.
The sweep order is the smallest variant of every family (ascending size), then the next-smallest variant of every
family, round after round, until ``--n`` models; variants over ``MAX_PARAMS`` are left out (memory), and so are
families whose smallest variant is over it (listed by ``--list``).

Models: ``timm.create_model(name, pretrained=False, num_classes=10, **kwargs)`` after ``torch.manual_seed(0)``;
parameters that timm initialises to zero (classifier heads, layer scales, biases) are redrawn at random (else scores
and explanations are trivially 0), then BatchNorm statistics are calibrated on seeded images
(``model_zoo.zoo.calibrate_batchnorm``). Input size: the first of ``img_size=64`` at 64x64, 64x64 without kwargs, and
the model's default configuration (``pretrained_cfg.input_size``) whose forward runs;
the legacy exporter writes opset 17 unless an operator needs a later one (it says which: VOLO's col2im, 18); ``OVERRIDES`` for the few that
need a matching window. The choice is stored in each export record (``build``) so the oracle rebuilds the very same
weights.

Writes DIR/{name}_{exporter}.onnx (default DIR = model_zoo/build/timm) with .npz (seeded batch-2 input ``x``, PyTorch
``logits``) and .json (export record, as model_zoo/torchvision_zoo.py writes them). Every export runs in its own
subprocess under a wall-clock and resident-memory limit (``run_limited``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_zoo.zoo import (  # noqa: E402
    BUILD,
    EXPORTERS,
    _n_nodes,
    _short,
    calibrate_batchnorm,
    export_onnx,
    op_types,
    ort_run,
    seed_for,
)

BUILD_TIMM = BUILD / "timm"
TABLE = ROOT / "model_zoo" / "timm_models.json"
MAX_PARAMS = 60e6         # later rounds: variants above this are skipped (a worker holds the model, its float64
FAMILY_MAX_PARAMS = 170e6  # copy, the export and an explainer); round 1 (a family's smallest variant) up to this
MEM_LIMIT_MB = 6000    # resident memory of one worker
NUM_CLASSES = 10
# name -> (kwargs, input size): models whose windows must divide the feature maps
OVERRIDES = {
    "swin_tiny_patch4_window7_224": ({"img_size": 56, "window_size": 7}, 56),
}


# ------------------------------------------------------------------------------------------------ selection
def param_table() -> dict:
    """name -> [family (timm module), parameter count or None] for every registered timm model (meta device)."""
    import warnings

    import timm
    import torch
    from timm.models import _registry

    warnings.filterwarnings("ignore")
    out = {}
    for n in timm.list_models():
        fam = _registry._model_to_module[n]
        try:
            with torch.device("meta"):
                m = timm.create_model(n, pretrained=False, num_classes=NUM_CLASSES)
            out[n] = [fam, int(sum(p.numel() for p in m.parameters()))]
            del m
        except Exception:  # noqa: BLE001 - a model that cannot be built on meta: size unknown
            out[n] = [fam, None]
    return out


def load_table() -> dict:
    data = json.loads(TABLE.read_text())
    return data["models"]


def families(table: dict | None = None) -> dict[str, list[str]]:
    """family -> its models, smallest first (unknown sizes last)."""
    table = table or load_table()
    fams: dict[str, list[str]] = {}
    for n, (fam, params) in table.items():
        fams.setdefault(fam, []).append(n)
    for fam, names in fams.items():
        names.sort(key=lambda n: (table[n][1] is None, table[n][1] or 0, n))
    return dict(sorted(fams.items()))


def selection(n: int = 150, table: dict | None = None) -> tuple[list[str], dict[str, str]]:
    """(models in sweep order, {family: why it is left out}). Round 1: the smallest variant of every family
    (ascending size; the first ``len(families) - len(skipped)`` names); later rounds: the next-smallest variant of
    every family, until n models."""
    table = table or load_table()
    fams = families(table)
    usable = {f: [m for i, m in enumerate(ms) if table[m][1] is not None
                  and table[m][1] <= (FAMILY_MAX_PARAMS if i == 0 else MAX_PARAMS)] for f, ms in fams.items()}
    skipped = {}
    for f, ms in fams.items():
        if not usable[f]:
            sizes = [table[m][1] for m in ms if table[m][1] is not None]
            skipped[f] = (f"smallest variant {ms[0]} has {min(sizes) / 1e6:.0f}M parameters "
                          f"(> {FAMILY_MAX_PARAMS / 1e6:.0f}M)" if sizes else "no variant can be built on the meta device")
    usable = {f: ms for f, ms in usable.items() if ms}
    order: list[str] = []
    rnd = 0
    while True:
        batch = [ms[rnd] for f, ms in usable.items() if len(ms) > rnd]
        if not batch:
            break
        batch.sort(key=lambda m: (table[m][1], m))
        if rnd == 0:
            order += batch
        else:
            order += batch[: max(0, n - len(order))]
        if len(order) >= n:
            break
        rnd += 1
    return order, skipped


# ------------------------------------------------------------------------------------------------ models
def _candidates(name: str):
    import timm

    if name in OVERRIDES:
        yield OVERRIDES[name]
    yield {"img_size": 64}, 64
    yield {}, 64
    cfg = timm.get_pretrained_cfg(name)
    size = (getattr(cfg, "input_size", None) or (3, 224, 224))[-1] if cfg is not None else 224
    yield {}, int(size)


def timm_model(name: str, kwargs: dict | None = None, size: int = 64):
    """The seeded random-weight timm classifier (identical weights on every call with the same kwargs / size)."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **(kwargs or {}))
    return randomize(model, size)


def randomize(model, size: int, seed: int = 1):
    """Redraw the parameters timm initialises to zero (heads, layer scales, biases: every score would be 0) and
    calibrate BatchNorm statistics on seeded (3, size, size) images; eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    redraw_zero_parameters(model, g)
    with torch.no_grad():
        calibrate_batchnorm(model, "", g, shape=(3, size, size))
    return model.eval()


def redraw_zero_parameters(model, g):
    """Parameters timm initialises to zero (heads, layer scales, some biases; every score would be 0) redrawn from
    the generator g: N(0, 0.1^2) for vectors, N(0, 1/fan_in) for matrices and kernels."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.dim() < 2 else 1 / p.shape[-1] ** 0.5))
    return model


def seeded_input(name: str, size: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed_for(name)).standard_normal((batch, 3, size, size)).astype(np.float32)


def resolve(name: str, out_dir: Path) -> dict:
    """{"kwargs", "size"}: the first configuration whose forward runs (cached in DIR/{name}.build.json)."""
    import torch

    cache = out_dir / f"{name}.build.json"
    if cache.exists():
        return json.loads(cache.read_text())
    errors = []
    for kwargs, size in _candidates(name):
        try:
            m = timm_model(name, kwargs, size)
            with torch.no_grad():
                y = m(torch.from_numpy(seeded_input(name, size)))
            if tuple(y.shape) != (2, NUM_CLASSES):
                raise ValueError(f"output shape {tuple(y.shape)}")
            build = {"kwargs": kwargs, "size": size}
            cache.write_text(json.dumps(build))
            return build
        except Exception as e:  # noqa: BLE001 - try the next configuration
            errors.append(f"{kwargs or '{}'}@{size}: {_short(e, 160)}")
    raise RuntimeError("no input configuration runs: " + " || ".join(errors))


def export_timm(name: str, exporter: str, out_dir) -> dict:
    """Export and return a manifest record (never raises on export errors)."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}_{exporter}.onnx"
    table = load_table()
    rec: dict = {"model": name, "exporter": exporter, "source": "timm", "family": table.get(name, [None])[0],
                 "params": table.get(name, [None, None])[1], "file": path.name, "status": "error"}
    t0 = time.perf_counter()
    try:
        try:
            build = resolve(name, out_dir)
        except Exception as e:  # noqa: BLE001
            rec["stage"] = "pytorch"
            raise e
        rec["build"] = build
        rec["input_shape"] = [1, 3, build["size"], build["size"]]
        model = timm_model(name, build["kwargs"], build["size"])
        xs = seeded_input(name, build["size"])
        with torch.no_grad():
            logits = model(torch.from_numpy(xs)).numpy()
        np.savez(out_dir / f"{name}_{exporter}.npz", x=xs, logits=logits)
        x = torch.from_numpy(xs)  # batch 2: torch.export specializes sizes 0/1
        opset = None
        try:
            try:
                info = export_onnx(model, x, path, exporter, dynamic_batch=True)
            except Exception as e:  # noqa: BLE001
                newer = re.search(r"added in (?:opset )?version (\d+)", str(e))
                if exporter != "legacy" or not newer:
                    raise
                # an aten op the legacy exporter maps only at a later opset (col2im: 18): export at that opset
                rec["opset_error"] = _short(e, 200)
                opset = int(newer.group(1))
                info = export_onnx(model, x, path, exporter, dynamic_batch=True, opset=opset)
        except Exception as e:  # noqa: BLE001
            # a static batch of one (the sweep then explains one row per call): some ops do not export with a
            # symbolic batch (dynamo's guards; legacy Col2Im / Unfold: "input size not accessible")
            rec["dynamic_error"] = _short(e)
            info = export_onnx(model, x[:1], path, exporter, dynamic_batch=False, opset=opset)
        rec.update(info)
        rec["status"] = "ok"
        rec["file_bytes"] = path.stat().st_size
        rec["op_types"] = op_types(path)
        rec["n_nodes"] = _n_nodes(path)
        xin = xs if info["dynamic_batch"] else xs[:1]
        ref = logits if info["dynamic_batch"] else logits[:1]
        got = ort_run(path, xin)
        rec["ort_max_abs_diff"] = float(np.max(np.abs(got - ref)))
        rec["ort_max_abs_logit"] = float(np.max(np.abs(ref)))
    except Exception as e:  # noqa: BLE001
        rec["error"] = _short(e)
    rec["total_seconds"] = round(time.perf_counter() - t0, 2)
    (out_dir / f"{name}_{exporter}.json").write_text(json.dumps(rec, indent=1))
    return rec


# ------------------------------------------------------------------------------------------------ subprocesses
def _rss_mb(pid: int) -> float:
    """Resident memory of pid and its descendants (Linux /proc), in MB."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def run_limited(cmd: list[str], timeout: float, mem_mb: float = MEM_LIMIT_MB, env=None) -> tuple[object, str]:
    """Run cmd; kill it past ``timeout`` seconds or ``mem_mb`` resident MB. Returns (returncode | "timeout" |
    "memory", stderr tail)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=str(ROOT), text=True)
        t0, peak, why = time.perf_counter(), 0.0, None
        while p.poll() is None:
            time.sleep(0.5)
            peak = max(peak, _rss_mb(p.pid))
            if peak > mem_mb:
                why = "memory"
            elif time.perf_counter() - t0 > timeout:
                why = "timeout"
            if why:
                p.kill()
                p.wait()
                break
        err.seek(0)
        tail = " | ".join(err.read().strip().splitlines()[-2:])[:300]
    if why == "memory":
        return why, f"killed at {peak:.0f} MB resident (limit {mem_mb:.0f} MB)"
    if why == "timeout":
        return why, f"timed out after {timeout:.0f}s"
    return p.returncode, tail


def export_pair(name: str, exporter: str, out_dir: Path, timeout: float = 900) -> dict:
    """Export in a subprocess (one thread, memory-limited); the record, also when the worker died."""
    rec_path = out_dir / f"{name}_{exporter}.json"
    rec_path.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    rc, tail = run_limited([sys.executable, __file__, "--worker", name, exporter, str(out_dir)], timeout, env=env)
    if rec_path.exists():
        return json.loads(rec_path.read_text())
    rec = {"model": name, "exporter": exporter, "source": "timm", "status": "error",
           "error": f"export worker died ({rc}): {tail}"[:600], "total_seconds": round(time.perf_counter() - t0, 1)}
    rec_path.write_text(json.dumps(rec, indent=1))
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="print the selection in sweep order")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--param-table", action="store_true", help=f"rebuild {TABLE.name}")
    ap.add_argument("--models", default="")
    ap.add_argument("--exporters", default="legacy,dynamo")
    ap.add_argument("--out", default=str(BUILD_TIMM))
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        import torch

        torch.set_num_threads(1)
        rec = export_timm(*a.worker)
        print(json.dumps({k: rec.get(k) for k in ("model", "exporter", "status", "error")}))
        return 0
    if a.param_table:
        import timm

        TABLE.write_text(json.dumps({"timm": timm.__version__, "models": param_table()}, indent=0, sort_keys=True)
                         + "\n")
        print("wrote", TABLE)
        return 0
    if a.list:
        order, skipped = selection(a.n)
        table = load_table()
        for i, m in enumerate(order):
            print(f"{i + 1:4d} {table[m][0]:28s} {m:45s} {table[m][1] / 1e6:7.2f}M")
        for f, why in skipped.items():
            print(f"     skipped family {f}: {why}")
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [m for m in a.models.split(",") if m] or selection(a.n)[0]
    for e in [e for e in a.exporters.split(",") if e]:
        if e not in EXPORTERS:
            ap.error(f"unknown exporter {e!r}")
        for n in names:
            rp = out / f"{n}_{e}.json"
            if not a.force and rp.exists() and json.loads(rp.read_text()).get("status") == "ok":
                continue
            rec = export_pair(n, e, out, a.timeout)
            print(f"{n:40s} {e:6s} {rec.get('total_seconds', 0):7.1f}s {rec['status']} {rec.get('error', '')[:160]}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
