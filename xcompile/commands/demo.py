"""`xcompile demo`: the main job end to end on the models shipped inside the package: the digits CNN (images,
several methods, a PNG grid) and, with ``--task text``, the character-level language identifier (token heatmaps)."""
from __future__ import annotations

import json
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

    from ..guards import plain_text_plots
    plt = plain_text_plots()  # Agg, and names in titles are never parsed as mathtext
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


# ------------------------------------------------------------------ --task text
TEXT_METHOD = ("integrated gradients", "integrated_gradients", {"steps": 32, "baseline_token": 0})
TEXT_ACCURACY_WORDS = 2000


def heldout_words():
    """The langid model's description (json), its vocabulary and every held-out word with its label."""
    from ..runtime.tokens import plain_vocabulary
    meta = json.loads(shipped("langid_cnn.json").read_text(encoding="utf-8"))
    held = np.load(shipped("langid_cnn_heldout.npz"))
    words = bytes(held["words_utf8"]).decode("utf-8").split("\n")
    return meta, plain_vocabulary(meta, "langid_cnn.json"), words, held["y"].astype(np.int64)


def run_text_demo(out: Path, n: int, echo) -> dict:
    """Compile the shipped language identifier with integrated gradients (path from the padding embedding, the
    zero vector), explain held-out words, print each character's relevance, write token heatmaps (HTML + PNG)."""
    from .. import compile as compile_model
    from ..files import atomic_write
    from ..runtime.explainer import Explainer
    from ..runtime.io import Batch, write_results
    from ..runtime.sequences import token_html, write_html
    from ..write.writer import save

    meta, vocab, words_all, y_all = heldout_words()
    classes = meta["classes"]
    examples = [(w, classes.index(c)) for group in zip(*meta["examples"].values())
                for c, w in zip(meta["examples"], group)]
    if not 1 <= n <= len(examples):
        raise XCompileError(f"--n {n}: between 1 and {len(examples)} (the example words of langid_cnn.json)")
    check_output(out, what="--out", folder=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    length = int(meta["max_len"])
    echo(f"model: langid_cnn.onnx (character CNN: {', '.join(meta['class_names'].values())}), "
         f"held-out accuracy {meta['heldout_accuracy']:.3f} on {len(words_all)} words")
    label, method, opts = TEXT_METHOD
    t0 = time.perf_counter()
    explainer = compile_model(shipped("langid_cnn.onnx"), method, **opts)
    t_compile = time.perf_counter() - t0
    path = out / f"langid_{method}.onnx"
    save(explainer, path)
    ex = Explainer(path)
    # accuracy from the explainer's own scores on the first held-out words (all 14400 would take IG's 32 passes)
    m = min(TEXT_ACCURACY_WORDS, len(words_all))
    acc = float((ex.explain(vocab.encode(words_all[:m], length, "held-out").ids, batch_size=1024).predicted
                 == y_all[:m]).mean())
    words, labels = [w for w, _ in examples[:n]], np.asarray([k for _, k in examples[:n]])
    enc = vocab.encode(words, length, "examples")
    t1 = time.perf_counter()
    res = ex.explain(enc.ids)
    t_explain = time.perf_counter() - t1
    base = ex.explain(np.full((1, length), vocab.pad_id, np.int64)).scores[0]
    echo(f"  {label}: compile {t_compile:.2f} s, explain {1e3 * t_explain / n:.2f} ms/word, "
         f"accuracy (explainer scores) {acc:.4f} on {m} held-out words")
    rel, pred = np.asarray(res.relevance), np.asarray(res.predicted)
    shown = enc.ids != vocab.pad_id
    for i, w in enumerate(words):
        c = int(pred[i])
        ok = "correct" if c == labels[i] else f"wrong, is {classes[labels[i]]}"
        chars = " ".join(f"{ch}{r:+.2f}" for ch, r in zip(w, rel[i][shown[i]]))
        echo(f"  {w:<16} -> {classes[c]} ({ok}); sum R {rel[i].sum():+.3f} (score - baseline score "
             f"{res.scores[i][c] - base[c]:+.3f}); {chars}")
    names = [f"{i:02d}_{w}" if w.isascii() else f"{i:02d}_{classes[labels[i]]}" for i, w in enumerate(words)]
    batch = Batch(None, names, [None] * n, feeds={ex.data_input.name: enc.ids}, ids=enc.ids, shown=shown,
                  vocab=vocab, words=[None] * n, classes=[meta["class_names"][c] for c in classes])
    written = write_results(out / "heatmaps", names, None, batch.images, res, batch)
    rows = [(f"{w}: {meta['class_names'][classes[int(pred[i])]]} (label {classes[labels[i]]})",
             vocab.tokens(enc.ids[i]), rel[i], shown[i]) for i, w in enumerate(words)]
    doc = token_html(rows, heading=f"langid character relevance ({label})")
    page = atomic_write(out / "langid_demo.html", lambda t: write_html(t, doc), "--out")
    echo(f"wrote {page}, {len(written)} files to {out / 'heatmaps'} and {path}")
    return {"accuracy": acc, "compile_s": t_compile, "relevance": rel, "predicted": pred, "labels": labels}
