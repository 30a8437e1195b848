"""`xcompile demo`: the main job end to end on the digits CNN shipped inside the package."""
from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import XCompileError
from ..files import check_output, save_figure

# (label, method, rules, options); entries whose method is not installed are skipped
DEMO_METHODS = [
    ("gradient", "gradient", None, {}),
    ("input x gradient", "input_x_gradient", None, {}),
    ("integrated gradients", "integrated_gradients", None, {"steps": 32}),
    ("smoothgrad", "smoothgrad", None, {"samples": 20, "noise_level": 0.1}),
    ("guided backprop", "guided_backprop", None, {}),
    ("grad-cam", "gradcam", None, {"interpolate": "nearest"}),
    ("LRP epsilon-plus-flat", "lrp", "epsilon-plus-flat", {}),
    ("LRP epsilon-gamma-box", "lrp", "epsilon-gamma-box", {"low": 0.0, "high": 1.0}),
    ("occlusion 2x2", "occlusion", None, {"window": 2, "stride": 2}),
]


def shipped(name: str) -> Path:
    return Path(str(resources.files("xcompile") / "data" / name))


def run_demo(out: Path, n: int, echo) -> dict:
    from .. import compile as compile_model
    from ..methods import METHODS
    from ..runtime.explainer import Explainer
    from ..write.writer import save

    model = shipped("digits_cnn.onnx")
    data = np.load(shipped("digits_heldout.npz"))
    if not 1 <= n <= len(data["y"]):
        raise XCompileError(f"--n {n}: between 1 and {len(data['y'])} (the held-out digits)")
    check_output(out, what="--out", folder=True)
    x_all, y_all = data["x"].astype(np.float32), data["y"].astype(np.int64)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    echo(f"model: {model.name} (CNN trained on scikit-learn digits), {len(x_all)} held-out digits")
    x, y = x_all[:n], y_all[:n]
    rows, timings = [], {}
    for label, method, rules, opts in DEMO_METHODS:
        if method not in METHODS:
            continue
        t0 = time.perf_counter()
        try:
            explainer = compile_model(model, method, rules=rules, **opts)
        except XCompileError as e:  # a method that cannot apply here is reported, not fatal
            echo(f"  {label:<24} skipped: {e}")
            continue
        t_compile = time.perf_counter() - t0
        path = out / f"digits_{method}{'_' + rules if rules else ''}.onnx"
        save(explainer, path)
        ex = Explainer(path)
        full = ex.explain(x_all, batch_size=256)  # accuracy from the explainer's own score output
        t1 = time.perf_counter()
        res = ex.explain(x)
        t_explain = time.perf_counter() - t1
        acc = float((full.predicted == y_all).mean())
        timings[label] = {"compile_s": t_compile, "explain_ms_per_image": 1e3 * t_explain / len(x), "accuracy": acc}
        echo(f"  {label:<24} compile {t_compile:5.2f} s   explain {1e3 * t_explain / len(x):6.2f} ms/image   accuracy {acc:.3f}")
        rows.append((label, res.relevance[:, 0], res.predicted))
    grid = out / "demo_grid.png"
    _grid(grid, x[:, 0], y, rows)
    echo(f"wrote {grid} and {len(rows)} explainers to {out}")
    return timings


def _grid(path: Path, images, labels, rows) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(images)
    fig, axes = plt.subplots(len(rows) + 1, n, figsize=(1.1 * n + 1.6, 1.1 * (len(rows) + 1)), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(images[j], cmap="gray_r", interpolation="nearest")
        axes[0, j].set_title(f"label {labels[j]}", fontsize=7)
    axes[0, 0].set_ylabel("input", fontsize=7, rotation=0, ha="right", va="center")
    for i, (label, rel, pred) in enumerate(rows, start=1):
        for j in range(n):
            m = np.abs(rel[j]).max() or 1.0
            axes[i, j].imshow(rel[j], cmap="bwr", vmin=-m, vmax=m, interpolation="nearest")
            if i == 1:
                axes[i, j].set_title(f"pred {pred[j]}", fontsize=7)
        axes[i, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    for ax in axes.ravel():
        ax.set_xticks([]); ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)
