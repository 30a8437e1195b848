"""The seed's PatternNet/PatternAttribution experiments at our scale, run through the real pipeline
(`fit-patterns` code -> `compile` -> onnxruntime), writing the figures of docs/patterns.md:

  docs/img/patterns_toy.png            (a) linear toy, 2-D (Kindermans et al. 2018's picture) and an 8x8 image version
  docs/img/patterns_digits.png         (b) digits CNN: gradient / PatternNet / PatternAttribution / LRP
  docs/img/patterns_effnet.png         (b') EfficientNet-Lite0 on scikit-image photos (--effnet MODEL.onnx)

    python tools/pattern_experiments.py [--out docs/img] [--effnet model_zoo/build/efficientnet_lite0/efficientnet_lite0_dynamo.onnx]

The ρ(S) table and bar plot come from tools/signal_quality.py.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from xcompile import compiler  # noqa: E402
from xcompile.patterns.fit import fit_file  # noqa: E402
from xcompile.runtime.explainer import Explainer  # noqa: E402

DATA = ROOT / "xcompile" / "data"


def cos(u, v):
    u, v = np.ravel(u), np.ravel(v)
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-30))


def linear_model(w: np.ndarray, b: float, path: Path) -> Path:
    d = w.size
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["scores"], name="neuron", transB=1)], "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w.reshape(1, d).astype(np.float32), "W"),
         numpy_helper.from_array(np.array([b], np.float32), "B")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def explain_all(model, methods: dict, x, tmp: Path, target=None):
    out = {}
    for label, (method, params) in methods.items():
        ex = compiler.compile(str(model), method, **params)
        out[label] = Explainer(ex).explain(x, target)
    return out


def toy(tmp: Path, a_s, a_d, n=5000, noise=0.02, seed=0):
    """x = a_s s + a_d d + noise; the model is the least-squares filter w for s (a trained linear model)."""
    rng = np.random.default_rng(seed)
    s, d = rng.standard_normal(n), rng.standard_normal(n)
    x = (np.outer(s, a_s) + np.outer(d, a_d) + noise * rng.standard_normal((n, a_s.size))).astype(np.float32)
    w = np.linalg.lstsq(x, s, rcond=None)[0]
    model = linear_model(w, 0.0, tmp / f"toy{a_s.size}.onnx")
    np.save(tmp / f"toy{a_s.size}.npy", x)
    pat = tmp / f"toy{a_s.size}_patterns.npz"
    fit_file(model, tmp / f"toy{a_s.size}.npy", pat, progress=False)
    methods = {"gradient": ("gradient", {}),
               "PatternNet": ("patternnet", {"patterns": str(pat), "pattern": "linear"}),
               "PatternAttribution": ("patternattribution", {"patterns": str(pat), "pattern": "linear"})}
    res = explain_all(model, methods, x[:200], tmp)
    return x, w, res


def figure_toy(tmp: Path, out: Path) -> dict:
    # (1) Kindermans et al. 2018's 2-D picture: signal along (1, 0), distractor along (1, 1)
    a_s2, a_d2 = np.array([1.0, 0.0]), np.array([1.0, 1.0]) / np.sqrt(2)
    x2, w2, r2 = toy(tmp, a_s2, a_d2)
    # (2) an 8x8 image version: the signal is a ring, the distractor a blob covering its left half
    yy, xx = np.mgrid[0:8, 0:8] - 3.5
    ring = np.exp(-((np.hypot(yy, xx) - 2.5) ** 2) / 0.5)
    blob = np.exp(-((yy) ** 2 + (xx + 2) ** 2) / 6.0)
    a_s, a_d = ring.ravel() / np.linalg.norm(ring), 2 * blob.ravel() / np.linalg.norm(blob)
    x8, w8, r8 = toy(tmp, a_s, a_d)
    stats = {}
    for tag, a, w, r, x in (("2-D", a_s2, w2, r2, x2), ("8x8", a_s, w8, r8, x8)):
        y = r["PatternAttribution"].scores[:, 0]
        stats[tag] = {
            "cos(gradient, signal)": np.mean([abs(cos(v, a)) for v in r["gradient"].relevance]),
            "cos(PatternNet, signal)": np.mean([abs(cos(v, a)) for v in r["PatternNet"].relevance]),
            "min cos(PatternNet, signal)": np.min([abs(cos(v, a)) for v in r["PatternNet"].relevance]),
            "cos(PatternAttribution/y, w*a)": np.mean([cos(v / yi, w * a / (w @ a)) for v, yi in zip(r["PatternAttribution"].relevance, y)]),
            "max |sum PA - y| / |y|": float(np.max(np.abs(r["PatternAttribution"].relevance.sum(1) - y) / np.abs(y))),
        }
    fig = plt.figure(figsize=(8.4, 3.4), dpi=90)
    ax = fig.add_subplot(1, 5, (1, 2))
    sel = x2[:600]
    ax.scatter(sel[:, 0], sel[:, 1], s=2, c="#bbbbbb")
    pn = r2["PatternNet"].relevance
    i = int(np.argmax(r2["PatternNet"].scores[:, 0]))
    arrows = [("signal a_s", a_s2, "g"), ("distractor a_d", a_d2, "0.4"), ("gradient w", w2 / np.linalg.norm(w2), "b"),
              ("PatternNet", pn[i] / np.linalg.norm(pn[i]), "r")]
    for label, v, c in arrows:
        lw, ls = (5, "-") if label.startswith("signal") else (1.6, "--" if label == "PatternNet" else "-")
        ax.annotate("", xy=2.2 * v, xytext=(0, 0), arrowprops=dict(arrowstyle="->", color=c, lw=lw, linestyle=ls))
        ax.plot([], [], color=c, label=label)
    ax.set_aspect("equal")
    ax.set_xlim(-3.5, 3.5)
    ax.set_ylim(-3, 3)
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title(f"2-D toy: cos(grad, a_s)={stats['2-D']['cos(gradient, signal)']:.2f}, "
                 f"cos(PN, a_s)={stats['2-D']['cos(PatternNet, signal)']:.3f}", fontsize=7)
    ax.tick_params(labelsize=6)
    j = int(np.argmax(r8["PatternNet"].scores[:, 0]))
    panels = [(3, "signal a_s", a_s, False), (4, "distractor a_d", a_d, False), (5, "an input x", x8[j], False),
              (8, "gradient (= w)", r8["gradient"].relevance[j], True),
              (9, "PatternNet", r8["PatternNet"].relevance[j], True),
              (10, "PatternAttribution\n(w ⊙ a) y", r8["PatternAttribution"].relevance[j], False)]
    for pos, title, v, show_cos in panels:
        axk = fig.add_subplot(2, 5, pos)
        m = np.abs(v).max()
        axk.imshow(np.reshape(v, (8, 8)), cmap="bwr", vmin=-m, vmax=m)
        axk.set_title(title + (f"\ncos(·, a_s)={abs(cos(v, a_s)):.2f}" if show_cos else ""), fontsize=6)
        axk.set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "patterns_toy.png")
    plt.close(fig)
    return stats


def digits_train(path: Path) -> Path:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    xtr, _, ytr, _ = train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)
    np.savez(path, x=xtr.reshape(-1, 1, 8, 8), y=ytr)
    return path


def heat(ax, r, title=None, pct=None):
    """Diverging heatmap centred on 0; pct: scale to that percentile of |r| (big images: a few extreme
    pixels would otherwise wash the map out)."""
    r = np.nan_to_num(r)
    m = (np.percentile(np.abs(r), pct) if pct else np.abs(r).max()) or 1.0
    ax.imshow(r, cmap="bwr", vmin=-m, vmax=m, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=7)


def figure_digits(tmp: Path, out: Path, n=6) -> dict:
    model = DATA / "digits_cnn.onnx"
    train = digits_train(tmp / "digits_train.npz")
    pat = tmp / "digits_patterns.npz"
    t0 = time.perf_counter()
    st = fit_file(model, train, pat, progress=False)
    t_fit = time.perf_counter() - t0
    held = np.load(DATA / "digits_heldout.npz")
    idx = [int(np.flatnonzero(held["y"] == k)[0]) for k in (0, 2, 3, 5, 7, 9)][:n]
    x = held["x"][idx]
    methods = {"gradient": ("gradient", {}),
               "PatternNet": ("patternnet", {"patterns": str(pat)}),
               "PatternAttribution": ("patternattribution", {"patterns": str(pat)}),
               "PatternNet (linear)": ("patternnet", {"patterns": str(pat), "pattern": "linear"}),
               "LRP ε+ (epsilon-plus)": ("lrp", {"rules": "epsilon-plus"})}
    res = {}
    for label, (method, params) in methods.items():
        rules = params.pop("rules", None)
        ex = compiler.compile(str(model), method, rules=rules, **params)
        res[label] = Explainer(ex).explain(x)
    cols = ["input"] + list(methods)
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(1.25 * len(cols), 1.3 * len(idx)), dpi=80)
    for i in range(len(idx)):
        axes[i, 0].imshow(x[i, 0], cmap="gray_r")
        axes[i, 0].set_axis_off()
        if i == 0:
            axes[i, 0].set_title("input", fontsize=7)
        for k, label in enumerate(methods, start=1):
            heat(axes[i, k], res[label].relevance[i, 0], label if i == 0 else None)
    fig.tight_layout()
    fig.savefig(out / "patterns_digits.png")
    plt.close(fig)
    pa = res["PatternAttribution"]
    y = pa.scores[np.arange(len(idx)), pa.predicted]
    return {"fit_s": t_fit, "rows": st.rows,
            "PatternAttribution sum / score": (pa.relevance.reshape(len(idx), -1).sum(1) / y).round(3).tolist()}


def figure_effnet(tmp: Path, out: Path, model: Path, crops: int = 96) -> dict:
    cache = ROOT / "build" / "pattern_experiments"
    cache.mkdir(parents=True, exist_ok=True)
    """Fit patterns on random crops/flips of scikit-image's photos (there is no ImageNet here), then explain."""
    from skimage import data as skdata
    from skimage.transform import resize
    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "cat",
             "retina", "colorwheel", "motorcycle_left", "logo"]
    imgs = []
    for nm in names:
        f = getattr(skdata, nm, None)
        if f is None:
            continue
        try:
            im = np.asarray(f(), np.float32)
        except Exception:  # noqa: BLE001 - some datasets need a download
            continue
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, 2)
        im = im[..., :3] / (255.0 if im.max() > 1.5 else 1.0)
        imgs.append((nm, im))
    g = compiler.load_forward(str(model), compiler.split_params({})[0], str(model))
    sample = g.shape(g.data_input)[1:]
    H = sample[1]
    meta = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    rng = np.random.default_rng(0)
    train = []
    for k in range(crops):
        nm, im = imgs[k % len(imgs)]
        h, w = im.shape[:2]
        s = rng.uniform(0.5, 1.0) * min(h, w)
        top, left = rng.uniform(0, h - s), rng.uniform(0, w - s)
        crop = resize(im[int(top):int(top + s), int(left):int(left + s)], (H, H), anti_aliasing=True)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        train.append(crop)
    norm = lambda a: ((np.asarray(a, np.float32) - 0.5) / 0.5).transpose(0, 3, 1, 2)  # noqa: E731  (tf normalization)
    np.save(tmp / "effnet_train.npy", norm(np.stack(train)))
    pat = cache / "effnet_patterns.npz"
    t0 = time.perf_counter()
    if pat.is_file():  # re-plotting: reuse the fit (delete build/pattern_experiments to refit)
        from xcompile.patterns.fit import load_stats
        st = load_stats(pat)
    else:
        st = fit_file(model, tmp / "effnet_train.npy", pat, batch_size=8, progress=False)
    t_fit = time.perf_counter() - t0
    show = [im for nm, im in imgs if nm in ("chelsea", "astronaut", "coffee")][:3]
    xs = norm(np.stack([resize(im[:min(im.shape[:2]), :min(im.shape[:2])], (H, H), anti_aliasing=True) for im in show]))
    methods = {"gradient": ("gradient", {}), "PatternNet": ("patternnet", {"patterns": str(pat)}),
               "PatternAttribution": ("patternattribution", {"patterns": str(pat)}),
               "LRP ε+": ("lrp", {"rules": "epsilon-plus"})}
    res = {}
    for label, (method, params) in methods.items():
        rules = params.pop("rules", None)
        try:
            res[label] = Explainer(compiler.compile(str(model), method, rules=rules, **params)).explain(xs)
        except Exception as e:  # noqa: BLE001
            print(f"effnet {label}: {e}")
    for label, r in res.items():
        rel = r.relevance
        print(f"effnet {label}: finite {np.isfinite(rel).mean():.3f}, max |r| {np.nanmax(np.abs(rel)):.3g}, "
              f"p99.5 {np.nanpercentile(np.abs(rel), 99.5):.3g}, sum/score "
              f"{(rel.reshape(len(xs), -1).sum(1) / r.scores[np.arange(len(xs)), r.predicted]).round(3).tolist()}")
    fig, axes = plt.subplots(len(xs), 1 + len(res), figsize=(1.4 * (1 + len(res)), 1.45 * len(xs)), dpi=52)
    for i in range(len(xs)):
        axes[i, 0].imshow(np.clip(xs[i].transpose(1, 2, 0) * 0.5 + 0.5, 0, 1))
        axes[i, 0].set_axis_off()
        for k, label in enumerate(res, start=1):
            rel = res[label].relevance[i].sum(0)
            if not np.isfinite(rel).all():
                axes[i, k].text(0.5, 0.5, "float32\noverflow", ha="center", va="center", fontsize=7)
                axes[i, k].set_axis_off()
                if i == 0:
                    axes[i, k].set_title(label, fontsize=7)
                continue
            heat(axes[i, k], rel, label if i == 0 else None, pct=99.5)
    fig.tight_layout()
    fig.savefig(out / "patterns_effnet.png")
    plt.close(fig)
    return {"fit_s": t_fit, "rows": st.rows, "layers": len(st.layers), "normalization_meta": meta.get("normalization", "")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "img"))
    ap.add_argument("--effnet", default=None, help="EfficientNet-Lite0 .onnx (optional)")
    ap.add_argument("--effnet-crops", type=int, default=96)
    ap.add_argument("--skip", nargs="*", default=[], help="toy digits")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "toy" not in args.skip:
            for tag, s in figure_toy(tmp, out).items():
                print(f"toy {tag}: " + ", ".join(f"{k} = {v:.4f}" for k, v in s.items()))
        if "digits" not in args.skip:
            print("digits:", figure_digits(tmp, out))
        if args.effnet:
            print("effnet:", figure_effnet(tmp, out, Path(args.effnet), args.effnet_crops))
    print(f"figures in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
