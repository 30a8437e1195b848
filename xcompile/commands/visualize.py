"""`xcompile visualize`: activation maximization from the command line (the maths lives in xcompile/visualize.py)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..errors import XCompileError
from ..files import save_npy
from ..options import parse_sets
from ..visualize import (
    DEFAULTS,
    MODEL_KEYS,
    VALUE_KEYS,
    check_options,
    grid_image,
    maximize,
    parse_classes,
    save_png,
    to_image,
)


def register(app) -> None:
    import typer

    @app.command("visualize")
    def visualize_cmd(
        model: Path = typer.Argument(..., help="the ONNX classifier"),
        class_: Optional[int] = typer.Option(None, "--class", "-c", help="the class K to maximize"),
        classes: Optional[str] = typer.Option(None, "--classes", help="several classes at once, e.g. 0,1,2 (one batch)"),
        steps: int = typer.Option(DEFAULTS["steps"], "--steps", help="gradient-ascent steps"),
        lr: float = typer.Option(DEFAULTS["lr"], "--lr", help="step size in input units (the gradient is RMS-normalized)"),
        l2: float = typer.Option(DEFAULTS["l2"], "--l2", help="L2 decay per step: x <- c + (1 - l2)(x - c)"),
        blur: float = typer.Option(DEFAULTS["blur"], "--blur", help="Gaussian blur sigma in pixels (0: off)"),
        blur_every: int = typer.Option(DEFAULTS["blur_every"], "--blur-every", help="blur every k steps"),
        jitter: int = typer.Option(DEFAULTS["jitter"], "--jitter", help="random shift in pixels before each step (0: off)"),
        seed: int = typer.Option(DEFAULTS["seed"], "--seed", help="seed of the start image and the jitter"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="low=, high= (pixel-space bounds), mean=, std= "
                                                 "(model input = (pixel - mean)/std, per channel), input=, output=, input_shape="),
        out: Optional[Path] = typer.Option(None, "-o", "--out", help="OUT.npy: the input array ([1, ...]; [K, ...] with --classes); a PNG with the same stem"),
        grid: Optional[Path] = typer.Option(None, "--grid", help="a PNG showing every class side by side"),
    ):
        """Activation maximization: the input that maximizes class K, with L2 decay, blur and jitter."""
        wanted = parse_classes(class_, classes)
        if out is None and grid is None:
            raise XCompileError("give -o OUT.npy and/or --grid OUT.png")
        if out is not None and out.suffix.lower() != ".npy":
            raise XCompileError(f"-o {out}: expected a .npy path (the PNG gets the same stem)")
        if grid is not None and grid.suffix.lower() != ".png":
            raise XCompileError(f"--grid {grid}: expected a .png path")
        check_options(steps, lr, l2, blur, blur_every, jitter)
        sets = parse_sets(set_)
        values = {k: v for k, v in sets.items() if k in VALUE_KEYS}
        model_opts = {k: v for k, v in sets.items() if k in MODEL_KEYS}
        unknown = sorted(set(sets) - set(VALUE_KEYS) - set(MODEL_KEYS))
        if unknown:
            raise XCompileError(f"--set {unknown[0]}: not an option of visualize (known: {', '.join(VALUE_KEYS + MODEL_KEYS)})")
        res = maximize(model, wanted, steps=steps, lr=lr, l2=l2, blur=blur, blur_every=blur_every, jitter=jitter,
                       seed=seed, values=values, model_options=model_opts, where=str(model))
        images = [to_image(x, values) for x in res.x]
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            save_npy(out if out.suffix == ".npy" else out.with_name(out.name + ".npy"), res.x, "--out")  # as np.save
            save_png(images[0] if len(images) == 1 else grid_image(images, [str(c) for c in res.classes]),
                     out.with_suffix(".png"))
        if grid is not None:
            grid.parent.mkdir(parents=True, exist_ok=True)
            save_png(grid_image(images, [str(c) for c in res.classes]), grid)
        for c, sc, p, pred in zip(res.classes, res.scores, res.probability, res.predicted):
            typer.echo(f"class {int(c)}: score {float(sc[c]):.4g}, softmax {float(p):.4f}, predicted {int(pred)}")
        written = [str(p) for p in ([out, out.with_suffix('.png')] if out is not None else []) + ([grid] if grid else [])]
        typer.echo(f"wrote {', '.join(written)}")
