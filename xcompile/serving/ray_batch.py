"""Batch explanation (and pattern fitting) over a Ray cluster.

* ``ray_map_shards(fn, shards, setup=None)`` - the generic engine: ``num_workers`` actors, each calls
  ``state = setup()`` ONCE (e.g. an onnxruntime session) and then ``fn(state, shard)`` per shard (or
  ``fn(shard)`` without setup); results come back in shard order.
* ``run_ray(explainer, inputs, out_dir)`` - explain a dataset: contiguous row shards, one Explainer
  (one onnxruntime session) per worker actor, one ``shard_NNNNN.npz`` per shard + ``manifest.json``.
* ``run_with_ray(explainer, x, target, out, address, workers)`` - what ``xcompile run --engine ray`` calls;
  returns the merged ``Explanation``, equal (bit for bit) to a local ``Explainer.explain`` on the same rows.
* ``fit_patterns_ray(model, data)`` - PatternNet statistics per shard on the workers, merged by sums and
  counts on the driver (``xcompile fit-patterns --engine ray``).

``address=None`` starts a local Ray (``ray.init(num_cpus=num_workers)``) and shuts it down afterwards;
``address="auto"`` or ``"ray://host:10001"`` joins a running cluster (xcompile must be installed on the
nodes; shard files are written by the driver, so no shared file system is needed for ``run_ray``;
``fit_patterns_ray`` reads the data path on the workers, so that path must be visible to them).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import onnx

from ..errors import XCompileError
from ..files import atomic_write, write_text
from ..runtime.explainer import Explanation


# ------------------------------------------------------------------------------------------ engine
def _ray():
    try:
        import ray
    except ImportError:
        raise XCompileError("the ray engine needs Ray: pip install -e '.[serve]'") from None
    return ray


def ray_session(address: Optional[str] = None, num_workers: int = 2):
    """Context manager: join/start Ray; shut it down on exit only if we started it."""
    ray = _ray()

    class _S:
        def __enter__(self):
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            self.started = not ray.is_initialized()
            if self.started:
                kw = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
                import warnings
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # the Ray client's own timeout warning: our line says it
                        if address:
                            ray.init(address=address, **kw)
                        else:
                            ray.init(num_cpus=max(1, num_workers), **kw)
                except (ConnectionError, TimeoutError, RuntimeError, ValueError, OSError) as e:
                    where = f"--address {address!r}" if address else "a local Ray"
                    first = " ".join(str(e).split())[:200] or type(e).__name__
                    raise XCompileError(f"{where}: cannot connect to the Ray cluster ({first})") from None
            return ray

        def __exit__(self, *exc):
            if self.started:
                ray.shutdown()
            return False

    return _S()


class _Worker:
    """A Ray actor body: holds ``setup()``'s result (e.g. a session) for its whole life."""

    def __init__(self, setup):
        self.state = setup() if setup is not None else None
        self.has_state = setup is not None

    def call(self, fn, i, shard):
        return i, (fn(self.state, shard) if self.has_state else fn(shard))


def _unwrap(ray, e):
    cause = getattr(e, "cause", None)
    if isinstance(cause, XCompileError):
        return XCompileError(str(cause))
    return e


def ray_map_shards(fn: Callable, shards: Iterable, setup: Optional[Callable[[], Any]] = None,
                   address: Optional[str] = None, num_workers: int = 2, cpus_per_worker: float = 1,
                   on_result: Optional[Callable[[int, Any], None]] = None) -> list:
    """Apply ``fn`` to every shard on ``num_workers`` Ray actors; return the results in shard order.

    ``setup`` (picklable, no arguments) runs once per actor; ``fn(state, shard)`` then gets its result.
    ``on_result(i, result)`` is called on the driver as each shard finishes (any order).
    An ``XCompileError`` raised on a worker is re-raised as such on the driver.
    """
    shards = list(shards)
    if not shards:
        return []
    if num_workers < 1:
        raise XCompileError(f"--workers {num_workers}: need at least 1")
    with ray_session(address, num_workers) as ray:
        from ray.util import ActorPool
        Actor = ray.remote(num_cpus=cpus_per_worker)(_Worker)
        actors = [Actor.remote(setup) for _ in range(min(num_workers, len(shards)))]
        fn_ref = ray.put(fn)
        pool = ActorPool(actors)
        out = [None] * len(shards)
        try:
            for i, res in pool.map_unordered(lambda a, v: a.call.remote(fn_ref, *v), list(enumerate(shards))):
                out[i] = res
                if on_result is not None:
                    on_result(i, res)
        except ray.exceptions.RayError as e:
            raise _unwrap(ray, e) from None
        finally:
            for a in actors:
                ray.kill(a)
        return out


# ------------------------------------------------------------------------------------------ explain
def _make_explainer(model_bytes: bytes, threads: Optional[int], device: str):
    from ..runtime.explainer import Explainer
    return Explainer(onnx.load_from_string(model_bytes), device=device, threads=threads)


def _explain_shard(explainer, shard, batch_size=None):
    lo, hi, x, t, *render = shard
    res = explainer.explain(x, t, batch_size=batch_size)
    if render and render[0] is not None:  # the worker draws its rows' heatmaps; the driver only writes the bytes
        from ..errors import clean
        from ..runtime.io import image_heatmap
        from ..runtime.render import png_bytes
        names, images = render[0]
        rel, pred = np.asarray(res.relevance), np.asarray(res.predicted)
        res.rendered = [png_bytes(rel[i], images[i], f"{clean(names[i])}: class {int(pred[i])}")
                        if image_heatmap(x[i], rel[i]) else None for i in range(len(x))]
    return lo, hi, res


def _read_inputs(inputs) -> np.ndarray:
    if isinstance(inputs, (str, os.PathLike)):
        p = Path(os.fspath(inputs))
        if p.suffix == ".npy":
            return np.load(p)
        if p.suffix == ".npz":
            with np.load(p) as z:
                key = "x" if "x" in z.files else z.files[0]
                return z[key]
        raise XCompileError(f"{p}: the ray engine reads .npy or .npz (key 'x') arrays")
    return np.asarray(inputs)


def _targets(target, n: int) -> np.ndarray:
    if target is None:
        return np.full(n, -1, np.int64)
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise XCompileError(f"target must be integer class indices, got dtype {t.dtype}")
    if t.ndim == 0:
        return np.full(n, int(t), np.int64)
    if t.shape != (n,):
        raise XCompileError(f"target has shape {list(t.shape)}; expected [{n}] (one class per input row)")
    return t.astype(np.int64)


def run_ray(explainer_path, inputs, out_dir, target=None, address: Optional[str] = None, num_workers: int = 2,
            shard_size: int = 256, batch_size: Optional[int] = None, threads: Optional[int] = 1,
            device: str = "cpu", render=None, rendered: list | None = None) -> dict:
    """Explain ``inputs`` (array or .npy/.npz path) on Ray; write ``out_dir/shard_NNNNN.npz`` per shard.
    ``render`` = (a name per row, a display image or None per row): the workers also draw each row's heatmap PNG,
    put into ``rendered`` (a list, one entry per row) on the driver.

    Each shard file holds ``rows`` ([lo, hi)), ``scores``, ``relevance`` and any extra outputs.
    Returns the manifest (also written to ``out_dir/manifest.json``). ``threads`` = onnxruntime
    intra-op threads per worker (1: one core per actor).
    """
    path = Path(os.fspath(explainer_path))
    if not path.is_file():
        raise XCompileError(f"{path}: no such explainer file")
    if shard_size < 1:
        raise XCompileError(f"--shard-size {shard_size}: need at least 1")
    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    takes = [i for i in model.graph.input if i.name not in inits and i.name != "target"]
    if len(takes) != 1 or takes[0].type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
        raise XCompileError(f"{path}: the ray engine explains explainers of one float input; this one takes "
                            f"{[i.name for i in takes]} (use the local engine, Explainer.explain with a dict)")
    x = _read_inputs(inputs)
    if x.dtype.kind != "f":
        raise XCompileError(f"input has dtype {x.dtype}; {path} expects float32")
    x = np.ascontiguousarray(x, np.float32)
    t = _targets(target, len(x))
    out_dir = Path(os.fspath(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    def part(lo):
        hi = min(lo + shard_size, len(x))
        return None if render is None else (list(render[0][lo:hi]), list(render[1][lo:hi]))
    shards = [(lo, min(lo + shard_size, len(x)), x[lo:lo + shard_size], t[lo:lo + shard_size], part(lo))
              for lo in range(0, len(x), shard_size)]
    if rendered is not None:
        rendered[:] = [None] * len(x)
    files = [None] * len(shards)

    def write(i, res):
        lo, hi, ex = res
        if rendered is not None and getattr(ex, "rendered", None) is not None:
            rendered[lo:hi] = ex.rendered
        f = out_dir / f"shard_{i:05d}.npz"

        def save(tmp):
            with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to the temporary name
                np.savez(fh, rows=np.array([lo, hi], np.int64), scores=ex.scores, relevance=ex.relevance,
                         **{f"extra_{k}": v for k, v in ex.extras.items()})
        atomic_write(f, save, "--out")
        files[i] = f.name

    t0 = time.perf_counter()
    ray_map_shards(partial(_explain_shard, batch_size=batch_size), shards,
                   setup=partial(_make_explainer, model.SerializeToString(), threads, device),
                   address=address, num_workers=num_workers, on_result=write)
    manifest = {"explainer": str(path), "rows": int(len(x)), "shard_size": int(shard_size),
                "workers": int(num_workers), "address": address or "local", "shards": files,
                "seconds": round(time.perf_counter() - t0, 3)}
    write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2), "--out")
    return manifest


def load_shards(out_dir) -> Explanation:
    """Concatenate the shard files of ``run_ray`` (in row order) into one Explanation."""
    out_dir = Path(os.fspath(out_dir))
    mf = out_dir / "manifest.json"
    if not mf.is_file():
        raise XCompileError(f"{out_dir}: no manifest.json (not a run_ray output folder)")
    parts = []
    for name in json.loads(mf.read_text())["shards"]:
        with np.load(out_dir / name) as z:
            parts.append({k: z[k] for k in z.files})
    parts.sort(key=lambda p: int(p["rows"][0]))
    extras = [k for k in parts[0] if k.startswith("extra_")]
    return Explanation(np.concatenate([p["scores"] for p in parts]), np.concatenate([p["relevance"] for p in parts]),
                       {k[len("extra_"):]: np.concatenate([p[k] for p in parts]) for k in extras})


def run_with_ray(explainer, x, target, out, address: Optional[str] = None, workers: int = 2,
                 shard_size: int = 256, batch_size: Optional[int] = None, device: str = "cpu",
                 render=None) -> Explanation:
    """``xcompile run --engine ray``: shards go to ``out/shards``; returns the merged Explanation
    (same rows, same order as the input) for the usual ``write_results``; with ``render`` (names, images) the
    workers draw the heatmaps, returned as ``.rendered`` (PNG bytes per row)."""
    shards = Path(os.fspath(out)) / "shards"
    if len(x) == 0:
        raise XCompileError("input has 0 rows (an empty batch); give at least one row")
    created = [p for p in (shards.parent, shards) if not p.exists()]
    try:
        rendered = [] if render is not None else None
        run_ray(explainer, x, shards, target=target, address=address, num_workers=workers,
                shard_size=shard_size, batch_size=batch_size, device=device, render=render, rendered=rendered)
        res = load_shards(shards)
        res.rendered = rendered
        return res
    except BaseException:  # an error or an interrupt leaves no half-written shards/ folder behind
        shutil.rmtree(shards, ignore_errors=True)
        for p in created[:1]:  # the --out folder too, if this run created it and left it empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise


# ------------------------------------------------------------------------------------------ patterns
def _make_fitter(model_bytes: bytes, threads: Optional[int], common: dict):
    from ..patterns.fit import Fitter
    return Fitter(onnx.load_from_string(model_bytes), threads=threads, **common)


def _fit_shard(fitter, shard, data=None, batch_size=64, preprocess=None):
    from ..patterns.fit import DataSource, fit_patterns
    k, n = shard
    src = DataSource(data, fitter.sample_shape, preprocess)
    start, stop = src.rows * k // n, src.rows * (k + 1) // n
    st = fitter.new_stats({"data": str(data), "start": start, "stop": stop, "batch_size": batch_size})
    return fit_patterns(fitter, src.batches(batch_size, start, stop), fitter.where, stats=st)


def fit_patterns_ray(model, data, out=None, address: Optional[str] = None, num_workers: int = 2,
                     n_shards: Optional[int] = None, batch_size: int = 64, preprocess: Optional[str] = None,
                     threads: Optional[int] = 1, **common):
    """``xcompile fit-patterns --engine ray``: shard k of n = rows [R*k//n, R*(k+1)//n) on a worker
    (one instrumented session per worker), statistics merged by adding sums and counts in shard order."""
    from ..patterns.fit import PatternStats  # noqa: F401  (fails early if patterns is absent)
    if isinstance(model, (str, os.PathLike)):
        m = onnx.load(os.fspath(model))
    else:
        m = model
    n = n_shards or num_workers
    stats = ray_map_shards(partial(_fit_shard, data=os.fspath(data), batch_size=batch_size, preprocess=preprocess),
                           [(k, n) for k in range(n)],
                           setup=partial(_make_fitter, m.SerializeToString(), threads, common),
                           address=address, num_workers=num_workers)
    total = stats[0]
    for s in stats[1:]:
        total = total.merge(s)
    if out is not None:
        total.save(out)
    return total
