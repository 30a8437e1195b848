"""Fit the PatternNet statistics (Kindermans et al. 2018, "Learning how to explain neural networks: PatternNet and PatternAttribution") in ONE streaming pass, computed by onnxruntime.

For every linear layer on the relevance path (Conv of any group/stride/dilation/padding, Gemm, MatMul with
a constant 2-D weight) an *instrumented* copy of the canonical forward graph computes, per batch:

* y  = W * x without the bias (a bias-free copy of the layer that shares its weight initializer),
* m  = 1[post-activation > 0] (the following ReLU/Clip output, else the layer output itself),
* x  = the layer input patches: for Conv an im2col done by onnxruntime as a depthwise Conv with an
  identity kernel (same strides/dilations/pads), for dense layers the input rows,

and reduces them in-graph (float64) to, per output channel c (Cg channels per group, Dg = patch size):

    XY [g, 3Cg, Dg] = [Σ y x ; Σ y m x ; Σ m x]        (one MatMul per layer over all samples of the batch)
    V  [g, 5Cg]     = [Σ y ; Σ y m ; Σ m ; Σ y² ; Σ y² m]
    SX [g, Dg]      = Σ x

Python only adds these per-batch sums in float64 (so memory does not grow with the data, and shards merge
exactly: sums and counts are what the .npz stores, with a fingerprint of the model's linear layers).
Patterns follow from the sums (``PatternStats.patterns``):

    linear: a  = cov[x, y] / wᵀcov[x, y]
    relu:   a₊ = (E₊[x y] − E₊[x] E[y]) / wᵀ(E₊[x y] − E₊[x] E[y])     (E₊ over active samples, E[y] over all)
            a₋ likewise over the inactive samples (used by the signal-quality tool)
A zero denominator is replaced by 1.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from ..errors import XCompileError
from .data import DataSource, iter_batches  # noqa: F401 - re-exported
from .instrument import RawActivations, _session, instrument  # noqa: F401 - re-exported
from .layers import LinearLayer, fingerprint, linear_layers  # noqa: F401 - re-exported
from .stats import FORMAT, MAT, VEC, VERSION, PatternStats, load_stats, merge_stats  # noqa: F401 - re-exported


def forward_graph(model, where: str = "model", **common):
    """The canonical forward graph exactly as `compile` sees it (same canonicalization, same names)."""
    from ..graph import ForwardGraph
    from ..load.forward import load_forward, split_params
    if isinstance(model, ForwardGraph):
        return model
    c, rest = split_params(common)
    if rest:
        raise XCompileError(f"unknown option(s) {', '.join(sorted(rest))}")
    return load_forward(model, c, where)


class Fitter:
    """Holds the instrumented session; feed it batches."""

    def __init__(self, model, where: str = "model", threads: Optional[int] = None, **common):
        self.where = where
        self.g = forward_graph(model, where, **common)
        self.layers = linear_layers(self.g, where)
        self.fingerprint = fingerprint(self.g, self.layers)
        self.sample_shape = tuple(self.g.shape(self.g.data_input)[1:])
        m, self.outs = instrument(self.g, self.layers)
        self.session = _session(m, threads)
        self.input_name = self.g.data_input
        self.names = [n for o in self.outs for n in (o["xy"], o["v"], o["sx"])]

    def new_stats(self, info=None) -> PatternStats:
        return PatternStats.empty(self.fingerprint, self.layers, info)

    def check_batch(self, x, what: str = "data") -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != len(self.sample_shape) + 1 or tuple(x.shape[1:]) != self.sample_shape:
            raise XCompileError(f"{what}: batch of shape {list(x.shape)}; the model {self.where} takes [N, {', '.join(map(str, self.sample_shape))}]")
        if x.dtype.kind not in "fiu":
            raise XCompileError(f"{what}: dtype {x.dtype}; expected numbers")
        return np.ascontiguousarray(x, dtype=np.float32)

    def add(self, stats: PatternStats, x) -> None:
        x = self.check_batch(x)
        res = self.session.run(self.names, {self.input_name: x})
        outs = [res[3 * i:3 * i + 3] for i in range(len(self.layers))]
        with _defer_sigint():  # a Ctrl-C never leaves half a batch in the sums
            stats.add_batch(self.layers, outs, len(x))


class _defer_sigint:
    def __enter__(self):
        import signal
        import threading
        self.got, self.old = False, None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, lambda *a: setattr(self, "got", True))
        return self

    def __exit__(self, *exc):
        import signal
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
            if self.got:
                raise KeyboardInterrupt
        return False


def fit_patterns(model, batches: Iterable, where: str = "model", stats: Optional[PatternStats] = None,
                 on_batch: Optional[Callable[[PatternStats, int], None]] = None, **common) -> PatternStats:
    """One pass over `batches` (arrays [N, *sample_shape]); returns the accumulated statistics.
    Pass `stats` to continue a previous (interrupted) pass."""
    fitter = model if isinstance(model, Fitter) else Fitter(model, where, **common)
    st = stats if stats is not None else fitter.new_stats()
    st.check(fitter.fingerprint, where)
    for x in batches:
        fitter.add(st, x)
        if on_batch:
            on_batch(st, len(x))
    return st


def fit_file(model, data, out=None, batch_size: int = 64, preprocess=None, shard: Optional[tuple] = None,
             resume: bool = False, checkpoint_s: float = 30.0, progress: bool = True, where: Optional[str] = None,
             echo=None, **common) -> PatternStats:
    """The `fit-patterns` command: stream `data` through the instrumented model, with a progress bar and an
    ETA; checkpoint to OUT.partial every `checkpoint_s` seconds and on Ctrl-C; `resume` continues from it.
    shard = (k, n): fit only the k-th of n contiguous row ranges (merge the shard files afterwards)."""
    where = where or str(model)
    fitter = Fitter(model, where, **common)
    src = DataSource(data, fitter.sample_shape, preprocess)
    start, stop = 0, src.rows
    if shard:
        k, n = shard
        if not (0 <= k < n):
            raise XCompileError(f"--shard {k}/{n}: expected K/N with 0 <= K < N")
        start, stop = src.rows * k // n, src.rows * (k + 1) // n
    info = {"data": str(data), "rows_total": src.rows, "start": start, "stop": stop, "batch_size": batch_size,
            "preprocess": preprocess or ""}
    partial = Path(str(out) + ".partial") if out is not None else None
    stats = None
    if resume and partial is not None and partial.is_file():
        stats = load_stats(partial)
        stats.check(fitter.fingerprint, str(partial))
        old = {k: stats.info.get(k) for k in ("data", "start", "stop", "batch_size", "preprocess")}
        new = {k: info[k] for k in old}
        if old != new:
            raise XCompileError(f"{partial}: was started with other data options ({old}); cannot resume with {new}")
        if echo:
            echo(f"resuming {partial}: {stats.rows} of {stop - start} rows done")
    if stats is None:
        stats = fitter.new_stats(info)
    done = stats.rows
    batches = src.batches(batch_size, start + done, stop)
    last = [time.monotonic()]

    def checkpoint(st):
        if partial is not None:
            st.save(partial)
        last[0] = time.monotonic()

    bar = None
    try:
        if progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            bar = Progress(TextColumn("fit-patterns"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                           TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False)
            bar.start()
            task = bar.add_task("fit", total=stop - start, completed=done)

        def on_batch(st, n):
            if bar is not None:
                bar.update(task, advance=n)
            if time.monotonic() - last[0] > checkpoint_s:
                checkpoint(st)

        stats = fit_patterns(fitter, batches, where, stats=stats, on_batch=on_batch)
    except KeyboardInterrupt:
        if bar is not None:
            bar.stop()
            bar = None
        if partial is not None:
            stats.save(partial)
            raise XCompileError(f"interrupted after {stats.rows} rows; progress saved to {partial} (run again with --resume)") from None
        raise
    finally:
        if bar is not None:
            bar.stop()
    if out is not None:
        stats.save(out)
        if partial is not None and partial.exists():
            partial.unlink()
    return stats
