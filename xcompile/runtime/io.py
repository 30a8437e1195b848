"""Inputs for `xcompile run` (.npy/.npz arrays, image files, folders; token ids or text lines for token-id
explainers, named extra inputs) and its outputs (relevance .npy + heatmap PNGs: diverging colormap centred on zero,
overlaid on the image; token heatmaps as HTML + PNG, time series as a line over a relevance band)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import XCompileError, clean
from ..files import atomic_write, completed_folder
from ..guards import check_array_file, check_image_file
from ..options import as_float, positive_int

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
ARRAY_SUFFIXES = {".npy", ".npz"}


def parse_preprocess(spec: str | None) -> dict:
    """'resize=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225' -> dict."""
    out = {"resize": None, "mean": None, "std": None}
    if not spec:
        return out
    for part in spec.split(","):
        if "=" not in part:
            raise XCompileError(f"--preprocess {spec!r}: expected key=value items, got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in out:
            raise XCompileError(f"--preprocess: unknown key {k!r} (resize, mean, std)")
        try:
            out[k] = positive_int(v) if k == "resize" else [as_float(t) for t in v.split("/")]
        except (TypeError, ValueError):
            what = "a positive integer" if k == "resize" else "finite numbers separated by '/'"
            raise XCompileError(f"--preprocess: bad value {k}={v!r} (expected {what})") from None
        if k == "std" and any(t <= 0 for t in out[k]):
            raise XCompileError(f"--preprocess: bad value std={v!r} (every std must be > 0)")
        if k == "resize" and out[k] > 16384:
            raise XCompileError(f"--preprocess: bad value resize={v!r} (at most 16384 pixels)")
    return out


def load_image(path: Path, sample_shape, prep: dict) -> tuple[np.ndarray, np.ndarray]:
    """-> (model input [C,H,W] float32, display image [H,W,3] in [0,1])."""
    from PIL import Image
    if len(sample_shape) != 3:
        raise XCompileError(f"{path}: an image input needs a model input [N,C,H,W]; this one takes {list(sample_shape)}")
    c, h, w = sample_shape
    check_image_file(path)  # FIFOs refused; declared pixels checked before decoding (decompression bombs)
    try:
        img = Image.open(path)
        img = img.convert("L" if c == 1 else "RGB")
    except Exception as e:  # noqa: BLE001
        raise XCompileError(f"{path}: not a readable image ({type(e).__name__})") from None
    if prep["resize"]:
        s = prep["resize"] / min(img.size)
        img = img.resize((max(w, round(img.size[0] * s)), max(h, round(img.size[1] * s))), Image.BILINEAR)
        left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
        img = img.crop((left, top, left + w, top + h))
    elif img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    display = arr.transpose(1, 2, 0)
    display = np.repeat(display, 3, axis=2) if display.shape[2] == 1 else display
    for key, op in (("mean", np.subtract), ("std", np.divide)):
        if prep[key] is not None:
            v = np.asarray(prep[key], np.float32)
            if v.size not in (1, c):
                raise XCompileError(f"--preprocess {key}: {v.size} values for {c} channels")
            arr = op(arr, v.reshape(-1, 1, 1))
    return arr.astype(np.float32), display


def load_array(path: Path) -> np.ndarray:
    check_array_file(path)  # FIFOs refused; declared shapes checked against the memory cap before reading
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise XCompileError(f"{path}: not a readable numpy file ({type(e).__name__})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        key = "x" if "x" in data.files else (data.files[0] if data.files else None)
        if key is None:
            raise XCompileError(f"{path}: empty .npz")
        try:
            return np.asarray(data[key])
        except Exception as e:  # noqa: BLE001 - object arrays (pickles are refused), corrupt members
            raise XCompileError(f"{path}: array {key!r} is not readable ({type(e).__name__}: object arrays are refused)") from None
    return np.asarray(data)


def load_inputs(path, sample_shape, preprocess: str | None = None):
    """-> (x float32 [N, *sample_shape], names, display images or None per row)."""
    path = Path(path)
    prep = parse_preprocess(preprocess)
    if not path.exists():
        raise XCompileError(f"{path}: no such input file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise XCompileError(f"{path}: no .npy/.npz or image files in this folder")
    xs, names, images = [], [], []
    for f in files:
        suffix = f.suffix.lower()
        if suffix in ARRAY_SUFFIXES:
            a = load_array(f)
            if a.ndim == len(sample_shape):
                a = a[None]
            if a.dtype.kind not in "fiu":
                raise XCompileError(f"{f}: array of dtype {a.dtype}; expected numbers")
            if a.ndim != len(sample_shape) + 1 or any(isinstance(s, int) and s != d for s, d in zip(sample_shape, a.shape[1:])):
                raise XCompileError(f"{f}: array of shape {list(a.shape)}; the explainer expects [N, {', '.join(map(str, sample_shape))}]")
            xs.append(a.astype(np.float32))
            names += [f"{f.stem}_{i}" for i in range(len(a))] if len(a) > 1 else [f.stem]
            images += [None] * len(a)
        elif suffix in IMAGE_SUFFIXES:
            arr, disp = load_image(f, sample_shape, prep)
            xs.append(arr[None])
            names.append(f.stem)
            images.append(disp)
        else:
            raise XCompileError(f"{f}: unsupported input type {suffix!r} (use .npy, .npz or an image)")
    return np.concatenate(xs), names, images


def heatmap_rgba(r: np.ndarray):
    """Signed map -> RGBA via a diverging colormap centred on zero (positive red, negative blue)."""
    import matplotlib
    m = np.abs(r).max() or 1.0
    return matplotlib.colormaps["bwr"]((r / m + 1) / 2)


def save_heatmap(path: Path, relevance: np.ndarray, image=None, title: str | None = None) -> None:
    from .render import save_heatmap_png  # colour-map lookup + PIL: dataset speed (runtime/render.py)
    save_heatmap_png(path, relevance, image, title)


def _npy(path: Path, a) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
            np.save(f, a)
    return atomic_write(path, write, "--out")


@dataclass
class Batch:
    """What `xcompile run` explains: ``feeds`` (input name -> array, the explained input included) or, for a
    single float input, ``x``; a name per row; display images (image inputs); for token inputs the ids, which
    tokens are shown (not padding), and per row each token's word and the words (with a tokenizer)."""
    x: np.ndarray | None
    names: list
    images: list
    feeds: dict | None = None
    ids: np.ndarray | None = None
    shown: np.ndarray | None = None
    vocab: object = None
    words: list = field(default_factory=list)
    classes: list | None = None  # class names for the heatmap titles (default: the class index)

    @property
    def rows(self) -> int:
        return len(self.names)

    @property
    def model_input(self):
        """What ``Explainer.explain`` takes: the dict of every input, or the single float array."""
        return self.feeds if self.feeds is not None else self.x


def image_heatmap(x_row, rel_row) -> bool:
    """Whether a row's heatmap is an image map (not a time series, not a single value): what a Ray worker renders."""
    from .sequences import time_axis
    if x_row is not None and rel_row.shape == x_row.shape and time_axis(x_row.shape) is not None:
        return False
    return rel_row.ndim >= 2 or rel_row.size > 1


def write_results(out, names, x, images, res, batch: Batch | None = None, heatmaps: bool = True,
                  rendered: list | None = None) -> list[Path]:
    """Each file written atomically; ``OUT/_COMPLETE`` (listing the files of this run) is removed first and
    written last, so a folder without it holds an interrupted run (old and new files may be mixed).
    Per row: NAME_relevance.npy; NAME_heatmap.png (image heatmap, time-series plot or token boxes); for token
    inputs NAME_heatmap.html and, with a tokenizer, NAME_words.html (relevance summed over each word's pieces).
    ``heatmaps=False`` (`run --outputs relevance`): the arrays only; ``rendered``: PNG bytes per row drawn elsewhere
    (Ray workers), None where this function draws."""
    from .sequences import time_axis
    with completed_folder(out) as written:
        out = Path(out)
        rel = np.asarray(res.relevance)
        predicted = np.asarray(res.predicted)
        for i, name in enumerate(names):
            written.append(_npy(out / f"{name}_relevance.npy", rel[i]))
            if not heatmaps:
                continue
            k = int(predicted[i])
            label = batch.classes[k] if batch is not None and batch.classes and 0 <= k < len(batch.classes) else k
            title = f"{clean(name)}: class {label}"  # a name's control characters never reach a plot
            if batch is not None and batch.ids is not None:
                written += _write_tokens(out, name, title, batch, i, rel[i])
            elif rendered is not None and rendered[i] is not None:
                written.append(atomic_write(out / f"{name}_heatmap.png", lambda t: Path(t).write_bytes(rendered[i]),
                                            "--out"))
            elif x is not None and rel[i].shape == x[i].shape and time_axis(x[i].shape) is not None:
                from .sequences import save_timeseries_png
                written.append(atomic_write(out / f"{name}_heatmap.png", lambda t: save_timeseries_png(
                    t, x[i], rel[i], title=title), "--out"))
            elif rel[i].ndim >= 2 or rel[i].size > 1:
                written.append(atomic_write(out / f"{name}_heatmap.png", lambda t: save_heatmap(
                    t, rel[i], images[i], title=title), "--out"))
        written.append(_npy(out / "scores.npy", res.scores))
    return written


def _write_tokens(out: Path, name: str, title: str, batch: Batch, i: int, rel) -> list[Path]:
    from .sequences import save_token_png, token_html, write_html
    from .tokens import sum_words
    rel = np.asarray(rel).reshape(-1)
    ids = batch.ids[i]
    tokens = batch.vocab.tokens(ids) if batch.vocab is not None else [str(int(t)) for t in ids]
    shown = batch.shown[i]
    doc = token_html([(title, tokens, rel, shown)], heading=f"{name}: token relevance")
    paths = [atomic_write(out / f"{name}_heatmap.html", lambda t: write_html(t, doc), "--out"),
             atomic_write(out / f"{name}_heatmap.png", lambda t: save_token_png(t, tokens, rel, shown, title), "--out")]
    if batch.words and batch.words[i] is not None:
        word_ids, words = batch.words[i]
        word_rel = sum_words(np.where(shown, rel, 0.0), word_ids, len(words))
        wdoc = token_html([(title + " (words: sum over their tokens)", words, word_rel, None)],
                          heading=f"{name}: word relevance")
        paths.append(atomic_write(out / f"{name}_words.html", lambda t: write_html(t, wdoc), "--out"))
    return paths
