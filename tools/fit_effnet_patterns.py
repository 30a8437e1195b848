"""Fit the EfficientNet-Lite0 PatternNet/PatternAttribution patterns on a real image set that needs no download:
random crops and flips of scikit-image's bundled photos, then explain the README photos and count non-finite
pixels (must be 0).

    python tools/fit_effnet_patterns.py                       # 2048 crops -> model_zoo/build/efficientnet_lite0/patterns_crops.npz
    python tools/fit_effnet_patterns.py --n 256 --batch-size 8
    python tools/heatmaps.py --patterns model_zoo/build/efficientnet_lite0/patterns_crops.npz   # the README figure

Crops: per image, a random square of 35-100 % of the photo's short side at a random position, mirrored with
probability 1/2, resized to 224 x 224 and normalized as the model expects (model_zoo.zoo.preprocess, the TF
EfficientNet-Lite normalization). Photos: every RGB (or greyscale, repeated to RGB) photo of skimage.data that
is at least 256 px on its short side; the four README photos are held out unless --include-heldout.
Seeded (--seed): the same command gives the same patterns file.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

MODEL = ROOT / "model_zoo" / "build" / "efficientnet_lite0" / "efficientnet_lite0_legacy.onnx"
OUT = ROOT / "model_zoo" / "build" / "efficientnet_lite0" / "patterns_crops.npz"
HELDOUT = ("chelsea", "coffee", "rocket", "astronaut")
CANDIDATES = ("chelsea", "coffee", "rocket", "astronaut", "cat", "camera", "immunohistochemistry", "hubble_deep_field",
              "retina", "colorwheel", "logo", "moon", "page", "text", "brick", "grass", "gravel", "rough_wall",
              "coins", "horse", "motorcycle_left", "eagle", "skin", "lily", "microaneurysms", "kidney")


def photos(include_heldout: bool):
    from skimage import data
    out = {}
    for name in CANDIDATES:
        if name in HELDOUT and not include_heldout:
            continue
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            img = np.asarray(fn())
        except Exception:  # noqa: BLE001 - a photo that needs a download (pooch) is skipped
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] < 3 or min(img.shape[:2]) < 256:
            continue
        img = img[..., :3]
        if img.dtype != np.uint8:
            img = (255 * (img - img.min()) / max(np.ptp(img), 1e-12)).astype(np.uint8)
        out[name] = img
    return out


def crops(images: dict, n: int, seed: int, batch: int):
    """Yield [b, 3, 224, 224] float32 batches of random crops/flips."""
    from PIL import Image

    from model_zoo.zoo import preprocess
    rng = np.random.default_rng(seed)
    names = sorted(images)
    done = 0
    while done < n:
        rows = []
        for _ in range(min(batch, n - done)):
            img = images[names[rng.integers(len(names))]]
            h, w = img.shape[:2]
            s = int(rng.uniform(0.35, 1.0) * min(h, w))
            y0, x0 = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            c = img[y0:y0 + s, x0:x0 + s]
            if rng.random() < 0.5:
                c = c[:, ::-1]
            c = np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((256, 256), Image.BILINEAR))
            rows.append(preprocess(c, normalization="tf")[0])
        done += len(rows)
        yield np.stack(rows).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--n", type=int, default=2048, help="number of random crops (default 2048)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--include-heldout", action="store_true", help="also crop the four README photos")
    ap.add_argument("--no-check", action="store_true", help="skip explaining the README photos")
    args = ap.parse_args(argv)

    model = Path(args.model)
    if not model.is_file():
        from model_zoo.zoo import build_efficientnet_lite0
        print(f"exporting {model} ...", flush=True)
        build_efficientnet_lite0(model.parent, "legacy")
    from xcompile.patterns.fit import Fitter, fit_patterns
    from xcompile.patterns.shrink import G_MAX, N_MIN, shrink

    imgs = photos(args.include_heldout)
    print(f"{len(imgs)} photos: {', '.join(sorted(imgs))}; {args.n} random crops/flips (seed {args.seed})", flush=True)
    t0 = time.perf_counter()
    fitter = Fitter(str(model), threads=args.threads)
    seen = [0]

    def stream():
        for b in crops(imgs, args.n, args.seed, args.batch_size):
            seen[0] += len(b)
            if seen[0] % (args.batch_size * 16) == 0 or seen[0] == args.n:
                el = time.perf_counter() - t0
                print(f"  {seen[0]}/{args.n} crops, {el:.0f} s (ETA {el / seen[0] * (args.n - seen[0]):.0f} s)", flush=True)
            yield b
    st = fit_patterns(fitter, stream())
    st.info.update({"source": "tools/fit_effnet_patterns.py", "photos": sorted(imgs), "n": args.n, "seed": args.seed})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    st.save(args.out)
    print(f"fitted {len(fitter.layers)} layers on {st.rows} crops in {time.perf_counter() - t0:.0f} s -> {args.out}")

    shrunk = total = 0
    for i, L in enumerate(fitter.layers):
        M = st.moments(i, L)
        kind = L.pattern_kind("relu")
        num = (M["Exy_pos"] - M["Ex_pos"] * M["Ey"][:, None]) if kind == "relu" else (M["Exy"] - M["Ex"] * M["Ey"][:, None])
        _, lam = shrink(num, L.w2d, M["n_pos"] if kind == "relu" else M["n"], M["Eyy"])
        shrunk += int((lam < 1).sum())
        total += lam.size
    print(f"neurons shrunk toward the weight direction (n < {N_MIN} or gain > {G_MAX:g} or tiny covariance): "
          f"{shrunk} of {total}")

    if not args.no_check:
        from skimage import data

        import xcompile
        from model_zoo.zoo import preprocess
        x = np.concatenate([preprocess(getattr(data, n)(), normalization="tf") for n in HELDOUT]).astype(np.float32)
        for method in ("patternnet", "patternattribution"):
            ex = xcompile.Explainer(xcompile.compile(str(model), method, patterns=args.out), threads=args.threads)
            r = ex.explain(x, batch_size=1).relevance
            pix = np.isfinite(r).all(axis=1)
            print(f"{method}: non-finite pixels {int((~pix).sum())} of {pix.size} "
                  f"(max |R| {float(np.abs(r[np.isfinite(r)]).max()):.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
