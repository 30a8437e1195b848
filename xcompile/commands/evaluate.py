"""Commands: xcompile evaluate | axioms | pool-relevance | spray (registered into the main app)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..errors import XCompileError
from ..files import check_output, csv_text, write_text
from ..graph import TARGET
from ..guards import regular_file


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)


def _sample_shape(model) -> tuple:
    from ..sessions import session
    try:
        s = session(str(model))
    except Exception as e:  # noqa: BLE001
        raise XCompileError(f"{model}: onnxruntime cannot load it: {str(e).strip().splitlines()[0]}") from None
    inp = next((i for i in s.get_inputs() if i.name != TARGET), s.get_inputs()[0])
    return tuple(inp.shape[1:])


def load_data(path: Path, sample_shape: tuple, preprocess: Optional[str] = None, limit: int = 0):
    """-> (x, labels or None, names, display images). .npy/.npz arrays (labels from key 'y'), images, folders."""
    if not Path(path).exists():
        raise XCompileError(f"{path}: no such data file or folder")
    try:
        from ..runtime.io import load_inputs
        x, names, images = load_inputs(path, sample_shape, preprocess)
    except ImportError:  # pragma: no cover - the shared loader is part of the package
        x = np.load(path)
        x = x["x"] if hasattr(x, "files") else x
        names, images = [str(i) for i in range(len(x))], [None] * len(x)
    y = None
    if str(path).endswith(".npz"):
        d = np.load(path, allow_pickle=False)
        if "y" in d.files and len(d["y"]) == len(x):
            y = np.asarray(d["y"], np.int64)
    if limit:
        x, names, images = x[:limit], names[:limit], images[:limit]
        y = None if y is None else y[:limit]
    return np.asarray(x, np.float32), y, names, images


def _target(mode: str, y, n: int):
    if mode == "predicted":
        return None
    if mode == "label":
        if y is None:
            raise XCompileError("--target label: the data has no labels (an .npz with key 'y')")
        return y
    try:
        return np.full(n, int(mode), np.int64)
    except ValueError:
        raise XCompileError(f"--target {mode!r}: use predicted, label or a class index") from None


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        model: Path = typer.Argument(..., help="the ONNX classifier"),
        methods: str = typer.Option("gradient,integrated_gradients,guided_backprop,occlusion", "--methods", "-m",
                                    help="comma-separated method[:rules][{key=value,...}], e.g. gradient,lrp:epsilon-plus-flat,occlusion{window=2,stride=1}"),
        data: Path = typer.Option(..., "--data", "-d", help=".npy/.npz inputs (labels: key 'y'), an image or a folder"),
        out: Path = typer.Option(Path("xcompile_eval"), "--out", help="folder for the plot PNG, JSON and CSV"),
        metric: str = typer.Option("pixel-flipping", "--metric", help="pixel-flipping, region-perturbation or both"),
        target: str = typer.Option("predicted", "--target", help="predicted, label, or a class index"),
        baseline: str = typer.Option("black", "--baseline", help="fill value: black (sample min), white, mean, uniform, zero, or a number"),
        steps: int = typer.Option(0, "--steps", help="pixel flipping: number of curve points (0: 1 pixel per step up to 1024 pixels, else 64 steps)"),
        features_in_step: int = typer.Option(0, "--features-in-step", help="pixel flipping: pixels flipped per step (Quantus; default 1)"),
        patch_size: int = typer.Option(8, "--patch-size", help="region perturbation: patch side"),
        regions: int = typer.Option(100, "--regions", help="region perturbation: regions evaluated"),
        order: str = typer.Option("morf", "--order", help="region perturbation: morf, lerf or random"),
        score: str = typer.Option("softmax", "--score", help="softmax (Quantus default) or logit"),
        n: int = typer.Option(0, "--n", help="use the first N inputs (0: all)"),
        preprocess: Optional[str] = typer.Option(None, "--preprocess", help="for images: 'resize=224,mean=...,std=...'"),
        batch_size: int = typer.Option(256, "--batch-size", help="perturbed copies per onnxruntime call"),
    ):
        """Pixel-flipping / region-perturbation curves and AUC for several methods on the same inputs."""
        from ..evaluate.run import evaluate, parse_specs
        check_output(out, what="--out", folder=True)
        if batch_size < 1:
            raise XCompileError(f"--batch-size {batch_size}: a positive integer")
        metrics = {"pixel-flipping": ["pixel_flipping"], "region-perturbation": ["region_perturbation"],
                   "both": ["pixel_flipping", "region_perturbation"]}.get(metric.replace("_", "-"))
        if metrics is None:
            raise XCompileError(f"--metric {metric!r}: use pixel-flipping, region-perturbation or both")
        specs = parse_specs(methods)
        x, y, _, _ = load_data(data, _sample_shape(model), preprocess, n)
        t = _target(target, y, len(x))
        n_feat = int(np.prod(x.shape[2:])) if x.ndim >= 3 else int(np.prod(x.shape[1:]))
        if not steps and not features_in_step and n_feat > 1024:
            steps = 64  # Quantus's 1 pixel per step would mean n_feat model runs per input
            typer.echo(f"pixel flipping: {n_feat} pixels per input, using --steps 64 (give --features-in-step 1 for Quantus's default)")
        flip_kw = {"baseline": baseline, "steps": steps or None, "features_in_step": features_in_step or None}
        region_kw = {"baseline": baseline, "patch_size": patch_size, "regions_evaluation": regions, "order": order}
        with _progress() as progress:
            res = evaluate(model, specs, x, t, metrics=metrics, out=out, score=score, score_batch=batch_size,
                           progress=progress, echo=typer.echo, flip_kw=flip_kw, region_kw=region_kw,
                           title=f"{Path(model).name}: {len(x)} inputs")
        from rich.console import Console
        from rich.table import Table
        for m in metrics:
            tab = Table(title=f"{m.replace('_', ' ')} ({'lower' if m == 'pixel_flipping' else 'higher'} AUC is better)")
            for col in ("method", "mean AUC", "std", "explain s"):
                tab.add_column(col)
            for label, c in res[m].items():
                tab.add_row(label, f"{c.mean_auc:.4g}", f"{c.auc.std():.3g}", f"{res['_timings'][label]:.2f}")
            Console().print(tab)
        typer.echo(f"wrote {', '.join(f'{m}.png/.json/.csv' for m in metrics)} to {out}")

    @app.command("axioms")
    def axioms_cmd(
        explainer: Path = typer.Argument(..., help="a compiled explainer"),
        data: Path = typer.Option(..., "--data", "-d", help=".npy/.npz inputs"),
        equivalent: Optional[Path] = typer.Option(None, "--equivalent", help="explainer of a functionally equal graph (same method) for implementation invariance"),
        n: int = typer.Option(32, "--n", help="inputs used"),
        noise: float = typer.Option(1e-3, "--noise", help="continuity: perturbation std relative to the input range"),
        conservation_tol: float = typer.Option(0.01, "--conservation-tol"),
        continuity_tol: float = typer.Option(0.1, "--continuity-tol"),
        preprocess: Optional[str] = typer.Option(None, "--preprocess"),
        json_out: Optional[Path] = typer.Option(None, "--json", help="also write the table as JSON"),
    ):
        """Measure conservation, positivity, continuity and implementation invariance (the axioms table)."""
        from ..evaluate.axioms import as_explainer, check_axioms
        if json_out:
            check_output(json_out, inputs=[explainer, data], what="--json")
        ex = as_explainer(explainer)
        x, _, _, _ = load_data(data, ex.sample_shape, preprocess, n)
        rows = check_axioms(ex, x, equivalent=equivalent, noise=noise, conservation_tol=conservation_tol,
                            continuity_tol=continuity_tol)
        from rich.console import Console
        from rich.table import Table
        tab = Table(title=f"axioms: {explainer.name} ({len(x)} inputs)")
        for col in ("axiom", "value", "threshold", "holds", "expected", "measured as"):
            tab.add_column(col)
        for r in rows:
            tab.add_row(r.axiom, f"{r.value:.3g}", f"{r.threshold:g}", "yes" if r.passed else "no",
                        {True: "yes", False: "no", None: "-"}[r.expected], r.detail)
        Console(width=160).print(tab)
        if json_out:
            write_text(Path(json_out), json.dumps([r.as_dict() for r in rows], indent=1), "--json")

    @app.command("pool-relevance")
    def pool_cmd(
        explainer: Path = typer.Argument(..., help="a compiled explainer"),
        data: Path = typer.Option(..., "--data", "-d", help=".npy/.npz inputs, images or a folder"),
        box: Optional[str] = typer.Option(None, "--box", help="one box for all images: y0,x0,y1,x1 (pixels, end exclusive)"),
        boxes: Optional[Path] = typer.Option(None, "--boxes", help=".npy [N,4] boxes or [N,H,W] masks (or key 'boxes' in --data .npz)"),
        positive: bool = typer.Option(False, "--positive", help="pool positive relevance only"),
        target: str = typer.Option("predicted", "--target"),
        preprocess: Optional[str] = typer.Option(None, "--preprocess"),
        out: Optional[Path] = typer.Option(None, "--out", help="folder for pooling.json / pooling.csv"),
    ):
        """Relevance inside vs outside a box per image and over the dataset (importance of context = out / in)."""
        from ..evaluate.axioms import as_explainer
        from ..evaluate.pooling import parse_box, pool_relevance
        if out is not None:
            check_output(out, what="--out", folder=True)
        ex = as_explainer(explainer)
        x, y, names, _ = load_data(data, ex.sample_shape, preprocess)
        if box:
            b = np.asarray(parse_box(box))
        elif boxes:
            from ..runtime.io import load_array
            b = load_array(regular_file(boxes, "--boxes"))  # one line for a missing, empty or hostile file
        elif str(data).endswith(".npz") and "boxes" in np.load(data).files:
            b = np.load(data)["boxes"]
        else:
            raise XCompileError("give --box y0,x0,y1,x1, --boxes FILE.npy, or a 'boxes' key in the --data .npz")
        res = ex.explain(x, _target(target, y, len(x)), batch_size=32)
        pooled = pool_relevance(res.relevance, b, positive)
        from rich.console import Console
        from rich.table import Table
        tab = Table(title=f"relevance pooling: {explainer.name}")
        for col in ("image", "inside", "outside", "context (out/in)", "box area"):
            tab.add_column(col)
        for r in pooled.rows(names)[:50]:
            tab.add_row(r["name"], f"{r['inside']:.4g}", f"{r['outside']:.4g}", f"{r['context']:.3g}", f"{r['box_area']:.2f}")
        s = pooled.summary()
        tab.add_row("[b]dataset[/b]", f"{s['relevance_inside']:.4g}", f"{s['relevance_outside']:.4g}",
                    f"{s['importance_of_context']:.3g}", f"{s['mean_box_area']:.2f}")
        Console().print(tab)
        typer.echo(f"importance of context (dataset) = {s['importance_of_context']:.4g}; "
                   f"median per image {s['median_context_per_image']:.4g}; uniform relevance would give {s['context_if_uniform']:.3g}")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            write_text(Path(out) / "pooling.json", json.dumps({"summary": s, "images": pooled.rows(names)}, indent=1))
            cols = ["name", "inside", "outside", "total", "context", "box_area"]
            write_text(Path(out) / "pooling.csv", csv_text(cols, [[r.get(c, "") for c in cols] for r in pooled.rows(names)]))

    @app.command("spray")
    def spray_cmd(
        explainer: Path = typer.Argument(..., help="a compiled explainer"),
        data: Path = typer.Option(..., "--data", "-d", help=".npy/.npz inputs (labels: key 'y'), images or a folder"),
        class_: int = typer.Option(..., "--class", "-c", help="class whose relevance maps are clustered"),
        clusters: int = typer.Option(0, "--clusters", "-k", help="number of clusters (0: the eigengap decides)"),
        select: str = typer.Option("label", "--select", help="which inputs: label (y == class), predicted, all"),
        neighbors: int = typer.Option(10, "--neighbors", help="k of the k-nearest-neighbour affinity"),
        size: int = typer.Option(32, "--size", help="maps are block-averaged to at most this side before clustering"),
        preprocess: Optional[str] = typer.Option(None, "--preprocess"),
        out: Path = typer.Option(Path("xcompile_spray"), "--out", help="folder for eigengap.png, prototypes.png, spray.json"),
    ):
        """SpRAY: spectral clustering of one class's relevance maps, eigengap plot and cluster prototypes."""
        import importlib.util
        if importlib.util.find_spec("sklearn") is None or importlib.util.find_spec("scipy") is None:
            raise XCompileError("xcompile spray needs scikit-learn and scipy: pip install 'xcompile[analysis]'")
        from ..evaluate.axioms import as_explainer
        from ..evaluate.plots import display_image, plot_eigengap, plot_prototypes
        from ..evaluate.spray import spray
        check_output(out, what="--out", folder=True)
        ex = as_explainer(explainer)
        x, y, _, _ = load_data(data, ex.sample_shape, preprocess)
        if select == "label":
            if y is None:
                raise XCompileError("--select label: the data has no labels; use --select predicted or all")
            keep = y == class_
        elif select == "predicted":
            keep = ex.explain(x, batch_size=64).predicted == class_
        elif select == "all":
            keep = np.ones(len(x), bool)
        else:
            raise XCompileError(f"--select {select!r}: label, predicted or all")
        x = x[keep]
        res = ex.explain(x, np.full(len(x), class_, np.int64), batch_size=32)
        s = spray(res.relevance, clusters or None, n_neighbors=neighbors, size=size)
        out.mkdir(parents=True, exist_ok=True)
        plot_eigengap(out / "eigengap.png", s.eigenvalues, s.n_clusters, f"SpRAY class {class_}: {len(x)} maps")
        means = [display_image(x[s.labels == k].mean(axis=0)) for k in range(s.n_clusters)]
        plot_prototypes(out / "prototypes.png", s.prototypes, s.sizes, means, f"class {class_} prototypes")
        write_text(out / "spray.json", json.dumps({"class": class_, **s.as_dict()}, indent=1))
        typer.echo(f"{len(x)} maps of class {class_}: {s.n_clusters} clusters (sizes {s.sizes.tolist()}); "
                   f"eigenvalues {np.round(s.eigenvalues, 3).tolist()}; wrote {out}/eigengap.png, prototypes.png, spray.json")
