"""Command line: xcompile compile | run | inspect | demo (+ commands contributed by feature modules).

Errors a user can cause print ONE line on stderr and exit with code 2 (no traceback)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import XCompileError
from ..guards import clean, one_line
from ..options import parse_sets

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compile an ONNX classifier into an ONNX explainer that returns scores AND relevance in one call.")


@app.command("compile")
def compile_cmd(
    model: Path = typer.Argument(..., help="the ONNX classifier (or skl2onnx model) to explain"),
    method: str = typer.Option(..., "--method", "-m", help="gradient, input_x_gradient, smoothgrad, integrated_gradients, guided_backprop, deconvnet, gradcam, occlusion, lrp, deep_taylor, patternnet, patternattribution, deeplift, neuralized"),
    rules: Optional[str] = typer.Option(None, "--rules", "-r", help="LRP rule set: a built-in name (see rules/) or a path to a rule file"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="method option key=value (repeatable), e.g. --set steps=32"),
    out: Path = typer.Option(..., "-o", "--out", help="where to write the explainer .onnx"),
):
    """Compile MODEL into an explainer: inputs (data, target), outputs (scores, relevance)."""
    from .. import compiler
    from ..files import check_output
    from ..write.writer import save
    t0 = time.perf_counter()
    sets = parse_sets(set_)
    from ..guards import set_paths
    inputs = [model] + ([Path(rules)] if rules else []) + set_paths(sets)  # FIFOs refused; long values are not paths
    check_output(out, inputs)  # before the work: -o at a folder, below a file, unwritable or onto any input file
    explainer = compiler.compile(model, method, rules=rules, where=str(model), **sets)
    save(explainer, out, inputs)
    typer.echo(f"wrote {clean(out)} ({out.stat().st_size / 1e6:.2f} MB, {len(explainer.graph.node)} nodes) in {time.perf_counter() - t0:.2f} s")


@app.command("run")
def run_cmd(
    explainer: Path = typer.Argument(..., help="an explainer written by `xcompile compile`"),
    input: List[str] = typer.Option(..., "--input", "-i", help="the explained input: .npy array, image file (PNG/JPEG) or a folder of them; token ids as an integer .npy [N, L] or a .txt file of lines (with --tokenizer). Other inputs of the explainer as NAME=FILE.npy (repeat --input)"),
    target: int = typer.Option(-1, "--target", "-t", help="class to explain (-1: the predicted class)"),
    out: Path = typer.Option(Path("xcompile_out"), "--out", help="output folder for relevance .npy and heatmaps (PNG; HTML for tokens)"),
    preprocess: Optional[str] = typer.Option(None, "--preprocess", help="for images: 'resize=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225' (pixels scaled to [0,1] first)"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="for token ids: a tokenizer.json (needs the 'text' extra) or a vocabulary JSON; shows token strings, encodes .txt input, adds word-level heatmaps"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    batch_size: int = typer.Option(32, "--batch-size", help="rows per onnxruntime call"),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (shards over a Ray cluster)"),
    address: Optional[str] = typer.Option(None, "--address", help="with --engine ray: the cluster address (default: a local Ray)"),
    workers: int = typer.Option(2, "--workers", help="with --engine ray: actors, one onnxruntime session each"),
    shard_size: int = typer.Option(256, "--shard-size", help="with --engine ray: rows per shard file"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace files in --out that an earlier run did not write"),
    outputs: str = typer.Option("all", "--outputs", help="all: relevance .npy + heatmaps; relevance: the arrays only"),
):
    """Explain inputs with a compiled explainer; write relevance arrays and heatmaps."""
    from ..files import check_output
    from ..runtime.explainer import Explainer
    from ..runtime.feeds import load_batch
    from ..runtime.io import write_results
    from ..runtime.outputs import class_label, row_scores, score_of, unique_names
    check_output(out, what="--out", folder=True)  # before the work: a file, /dev/null, an unwritable folder
    if engine not in ("local", "ray"):
        raise XCompileError(f"--engine {engine!r}: expected local or ray")
    if outputs not in ("all", "relevance"):
        raise XCompileError(f"--outputs {outputs!r}: expected all or relevance")
    if batch_size < 1 or workers < 1:
        raise XCompileError("--batch-size and --workers must be positive integers")
    ex = Explainer(explainer, device=device)
    from ..runtime.tabular import is_tabular, run_tabular
    if is_tabular(ex, input) and engine == "local":  # feature rows: one CSV + a bar chart per row (runtime/tabular.py)
        return run_tabular(ex, input[0], target, out, batch_size, typer.echo, overwrite)
    batch = load_batch(input, ex, preprocess, tokenizer)
    batch.names[:] = unique_names(list(batch.names))  # before any worker draws a titled heatmap
    if batch.rows == 0:
        raise XCompileError(f"{input[0]}: 0 rows (an empty batch); give at least one input row")
    if batch.x is not None and batch.x.size and not np.isfinite(batch.x).any():  # the input is the cause
        raise XCompileError(f"--input {clean(input[0])}: every value is NaN or infinite; nothing to explain")
    if engine == "ray":
        if batch.feeds is not None:
            raise XCompileError("--engine ray: explainers with one float input only; use --engine local for "
                                "token ids or several inputs")
        from ..serving.ray_batch import run_with_ray
        res = run_with_ray(explainer, batch.x, target, out, address=address, workers=workers, shard_size=shard_size,
                           batch_size=batch_size, device=device,
                           render=(batch.names, batch.images) if outputs == "all" else None)
    else:
        res = _explain_with_progress(ex, batch.model_input, batch.rows, target, batch_size)
    from ..runtime.outputs import guarded_results
    with guarded_results(out, input, overwrite, batch):  # never over an input or a file no xcompile run wrote
        paths = write_results(out, batch.names, batch.x, batch.images, res, batch, heatmaps=outputs == "all",
                              rendered=getattr(res, "rendered", None))
    from ..lrp.rulesets import warn_run
    warn_run(ex, res)  # one line: non-finite relevance, or conservation outside the rule set's band
    what = "predicted" if target < 0 else "explained class"
    classes = np.asarray(res.predicted) if target < 0 else np.full(batch.rows, target)  # the class each row explains
    for name, score, cls in zip(batch.names, row_scores(res), classes):
        typer.echo(f"{clean(name)}: {what} {class_label(ex, cls)} (score {score_of(score, cls):.4g})")
    typer.echo(f"wrote {len(paths)} files to {clean(out)}")


def _explain_with_progress(ex, x, rows, target, batch_size):
    """A progress bar (rich, on stderr) for inputs of several batches when stderr is a terminal; none otherwise.
    ``x``: one array, or a dict of every input (token ids and masks) of ``rows`` rows."""
    if rows <= batch_size or not sys.stderr.isatty():
        return ex.explain(x, target, batch_size=batch_size)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    with Progress("explaining", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("explain", total=rows)
        return ex.explain(x, target, batch_size=batch_size, progress=lambda done: bar.update(task, completed=done))


@app.command("inspect")
def inspect_cmd(
    model: Path = typer.Argument(..., help="the ONNX model to inspect"),
    method: str = typer.Option("gradient", "--method", "-m", help="method whose per-node treatment to show"),
    rules: Optional[str] = typer.Option(None, "--rules", "-r", help="LRP rule set name or file"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="method option key=value"),
):
    """Print, per forward node, how the method treats it, and every unsupported node."""
    from .inspect_model import inspect_model
    code = inspect_model(model, method, rules, parse_sets(set_), lambda line: typer.echo(clean(line)))  # node names
    if code:
        raise typer.Exit(code)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("xcompile_demo"), "--out", help="folder for the explainers and the heatmaps"),
    n: int = typer.Option(8, "--n", help="held-out digits (or words, with --task text) to show"),
    task: str = typer.Option("image", "--task", help="image: the digits CNN with several methods (a PNG grid); "
                             "text: the character-level language identifier (token heatmaps); "
                             "tabular: a tree model on breast_cancer explained by treeshap"),
):
    """Compile a shipped model, explain held-out examples, write heatmaps (image: digits CNN; text: langid)."""
    from .demo import run_demo, run_text_demo
    if task == "image":
        run_demo(out, n, typer.echo)
    elif task == "text":
        run_text_demo(out, n, typer.echo)
    elif task == "tabular":
        from .demo_tabular import run_tabular_demo
        run_tabular_demo(out, n, typer.echo)
    else:
        raise XCompileError(f"--task {task!r}: expected image, text or tabular")


# feature commands live beside this module, each with a `register(app)` function
from . import evaluate, patterns, serving, visualize, web  # noqa: E402

for _plugin in (patterns, evaluate, serving, visualize, web):
    _plugin.register(app)

import numpy as np  # noqa: E402  (after the command definitions to keep --help fast)


def _class_names(e: BaseException) -> set:
    return {c.__name__ for c in type(e).__mro__}


def _usage_line(e: BaseException) -> str:
    """One line for a click/typer usage error, found by class name and attributes rather than by import path
    (typer may vendor click as ``typer._click``; a plain ``click`` may be installed beside it)."""
    try:
        msg = e.format_message()
    except Exception:  # pragma: no cover - any exception type with a message
        msg = str(e)
    msg = " ".join(str(msg).split()) or type(e).__name__
    ctx = getattr(e, "ctx", None)
    cmd = getattr(ctx, "command_path", None) if ctx is not None else None
    return f"{cmd}: {msg}" if cmd else msg


def _terminate_cleanly() -> None:
    """SIGTERM unwinds like Ctrl-C (``finally`` blocks run: temporary files of an interrupted write are removed)."""
    import signal

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _exit)
    except ValueError:  # pragma: no cover - not the main thread
        pass


def main(argv=None):
    """The console script: user errors (ours and the command-line parser's) are ONE line on stderr + exit 2."""
    if argv is None:  # the console script (tests call main(argv) in their own process)
        _terminate_cleanly()
    try:
        code = app(args=argv, prog_name="xcompile", standalone_mode=False)
        if isinstance(code, int) and code:  # a command's typer.Exit(code) comes back as the return value here
            sys.exit(code)
    except XCompileError as e:
        typer.echo(f"xcompile: error: {one_line(e)}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        typer.echo("xcompile: interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        names = _class_names(e)
        if isinstance(e, typer.Exit) or "Exit" in names and hasattr(e, "exit_code") and "ClickException" not in names:
            sys.exit(e.exit_code)
        if "Abort" in names:
            typer.echo("xcompile: aborted", err=True)
            sys.exit(1)
        if "NoArgsIsHelpError" in names and getattr(e, "ctx", None) is not None:
            typer.echo(e.ctx.get_help())
            sys.exit(2)
        if "ClickException" in names or ("UsageError" in names and hasattr(e, "format_message")):
            typer.echo(f"xcompile: error: {one_line(_usage_line(e))}", err=True)
            sys.exit(2)
        raise
    sys.exit(0)


if __name__ == "__main__":
    main()
