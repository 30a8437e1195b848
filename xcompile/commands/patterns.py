"""Commands: `xcompile fit-patterns`, `xcompile merge-patterns`, `xcompile evaluate-signal`."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import XCompileError
from ..files import check_output


def _shard(v: Optional[str]):
    if not v:
        return None
    try:
        k, n = (int(t) for t in v.split("/"))
    except ValueError:
        raise XCompileError(f"--shard {v!r}: expected K/N, e.g. 0/4") from None
    return k, n


def register(app: typer.Typer) -> None:
    @app.command("fit-patterns")
    def fit_patterns_cmd(
        model: Path = typer.Argument(..., help="the ONNX classifier"),
        data: Path = typer.Option(..., "--data", "-d", help=".npy/.npz array [N, ...] (key x or the first array), an image, or a folder of them"),
        out: Path = typer.Option(..., "-o", "--out", help="the patterns .npz to write"),
        batch_size: int = typer.Option(64, "--batch-size", help="rows per onnxruntime call"),
        preprocess: Optional[str] = typer.Option(None, "--preprocess", help="for images, as `xcompile run --preprocess`"),
        shard: Optional[str] = typer.Option(None, "--shard", help="K/N: fit only the K-th of N contiguous row ranges (merge the files with merge-patterns)"),
        resume: bool = typer.Option(False, "--resume", help="continue from OUT.partial (written every 30 s and on Ctrl-C)"),
        no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="model reading options (input=, output=, input_shape=)"),
        engine: str = typer.Option("local", "--engine", help="local or ray (shards fitted by Ray actors, merged exactly)"),
        address: Optional[str] = typer.Option(None, "--address", help="with --engine ray: the cluster address (default: a local Ray)"),
        workers: int = typer.Option(2, "--workers", help="with --engine ray: actors (= shards)"),
    ):
        """Fit PatternNet/PatternAttribution statistics (linear and two-component patterns) in one streaming pass."""
        from ..options import parse_sets
        from ..patterns.fit import fit_file
        if batch_size < 1:
            raise XCompileError(f"--batch-size {batch_size}: expected a positive integer")
        if workers < 1:
            raise XCompileError(f"--workers {workers}: expected a positive integer")
        check_output(out, inputs=[model, data])
        if engine not in ("local", "ray"):
            raise XCompileError(f"--engine {engine!r}: expected local or ray")
        t0 = time.perf_counter()
        if engine == "ray":
            if shard or resume:
                raise XCompileError("--engine ray shards the data itself: drop --shard/--resume")
            from ..serving.ray_batch import fit_patterns_ray
            st = fit_patterns_ray(model, data, out, address=address, num_workers=workers, batch_size=batch_size,
                                  preprocess=preprocess, **parse_sets(set_))
            typer.echo(f"wrote {out}: {len(st.layers)} linear layers, {st.rows} rows on {workers} Ray workers "
                       f"in {time.perf_counter() - t0:.1f} s")
            return
        st = fit_file(model, data, out, batch_size=batch_size, preprocess=preprocess, shard=_shard(shard),
                      resume=resume, progress=not no_progress, where=str(model), echo=typer.echo, **parse_sets(set_))
        typer.echo(f"wrote {out}: {len(st.layers)} linear layers, {st.rows} rows in {time.perf_counter() - t0:.1f} s")

    @app.command("merge-patterns")
    def merge_patterns_cmd(
        shards: List[Path] = typer.Argument(..., help="patterns files fitted on shards of the data (same model)"),
        out: Path = typer.Option(..., "-o", "--out", help="the merged patterns .npz"),
    ):
        """Merge pattern statistics fitted on several shards (sums and counts add up exactly)."""
        from ..patterns.fit import merge_stats
        check_output(out, inputs=shards)
        st = merge_stats(shards, out)
        typer.echo(f"wrote {out}: {len(shards)} shards, {st.rows} rows")

    @app.command("evaluate-signal")
    def evaluate_signal_cmd(
        model: Path = typer.Argument(..., help="the ONNX classifier"),
        patterns: Path = typer.Option(..., "--patterns", "-p", help="patterns file from fit-patterns (fitted on training data)"),
        data: Path = typer.Option(..., "--data", "-d", help="HELD-OUT data (.npy/.npz/images)"),
        out: Path = typer.Option(Path("signal_quality"), "--out", help="folder for rho.csv, rho.md and rho.png"),
        max_rows: int = typer.Option(2000, "--max-rows", help="held-out rows used"),
        max_neurons: int = typer.Option(32, "--max-neurons", help="neurons per layer evaluated (evenly spaced)"),
        max_samples: int = typer.Option(20000, "--max-samples", help="samples per neuron (positions x rows, random subset)"),
        preprocess: Optional[str] = typer.Option(None, "--preprocess", help="for images, as `xcompile run --preprocess`"),
    ):
        """ρ(S) per layer for S_x, S_w, S_a, S_a+- (and a random-direction baseline), as in the PatternNet paper."""
        from ..patterns.signal import evaluate_signal, write_report
        check_output(out, what="--out", folder=True)
        if min(max_rows, max_neurons, max_samples) < 1:
            raise XCompileError("--max-rows, --max-neurons and --max-samples must be positive integers")
        res = evaluate_signal(model, patterns, data, max_rows=max_rows, max_neurons=max_neurons,
                              max_samples=max_samples, preprocess=preprocess, where=str(model))
        paths = write_report(res, out, title=model.name)
        typer.echo(res.table())
        typer.echo(f"wrote {', '.join(str(p) for p in paths)}")
