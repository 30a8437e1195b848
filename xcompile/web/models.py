"""The models of a site: explainers grouped by their input (name, dtype, shape), each group with what the page
needs to feed and label it: class names, preprocessing, a tokenizer (character / word vocabularies), examples.

Where each comes from, later entries winning: the explainer's metadata (``xcompile.class_names``,
``xcompile.preprocess`` and ``xcompile.tokenizer`` as JSON), the shipped description (``xcompile/data/*.json``)
when the explainer's input is a shipped model's, and ``--info FILE.json`` (the same format as those files:
``input_name``, ``classes`` / ``class_names``, ``preprocess`` {resize, mean, std, invert}, ``vocab``, ``pad_id``,
``unk_id``, ``max_len``, ``level`` ("char" | "word"), ``lowercase``, ``examples`` {class: [texts]})."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

from ..errors import XCompileError
from ..runtime.io import IMAGE_SUFFIXES, load_array

SHIPPED = {"digits_cnn.json": "digits_heldout.npz", "langid_cnn.json": None}
TOKEN_KEYS = ("vocab", "pad_id", "unk_id", "max_len", "level", "lowercase")


def _shipped(name: str) -> Path:
    from importlib import resources
    return Path(str(resources.files("xcompile") / "data" / name))


def _read_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise XCompileError(f"--info {path}: not a readable JSON file ({type(e).__name__})") from None
    if not isinstance(info, dict):
        raise XCompileError(f"--info {path}: expected a JSON object (input_name, classes, preprocess, vocab, ...)")
    return info


def _signature(d: dict) -> tuple:
    return d["input"]["name"], d["input"]["dtype"], tuple(d["input"]["shape"])


def _fits(info: dict, sig: tuple) -> bool:
    shape = info.get("input_shape")
    if info.get("input_name") not in (None, sig[0]):
        return False
    return shape is None or [s for s in shape[1:]] == list(sig[2])


def _class_names(info: dict) -> list | None:
    classes, names = info.get("classes"), info.get("class_names")
    if isinstance(names, dict) and isinstance(classes, list):
        return [str(names.get(c, c)) for c in classes]
    if isinstance(names, list):
        return [str(n) for n in names]
    return [str(c) for c in classes] if isinstance(classes, list) else None


def _from_metadata(meta) -> dict:
    """Class names, preprocessing and tokenizer facts from an explainer's metadata (metadata.ExplainerMeta)."""
    info = {}
    if meta.class_names:
        info["class_names"] = list(meta.class_names)
    for key in ("preprocess", "tokenizer"):
        raw = meta.extra.get(key)
        if not raw:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if key == "tokenizer" and isinstance(value, dict):
            info.update(value)
        elif value is not None:
            info[key] = value
    return info


def _array_examples(path: Path, sig: tuple, n: int) -> list:
    a = load_array(path)
    y = None
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            y = z["y"] if "y" in z.files else None
    shape = list(sig[2])
    if list(a.shape[1:]) != shape:
        a = a[None] if list(a.shape) == shape else a
    if list(a.shape[1:]) != shape:
        return []
    if (sig[1] == "float32") != (a.dtype.kind == "f"):
        return []
    out = []
    for i in range(min(n, len(a))):
        label = f"{path.stem} #{i}" + (f" (label {int(y[i])})" if y is not None and i < len(y) else "")
        out.append({"label": label, "kind": "array", "data": np.asarray(a[i]).reshape(-1).tolist(),
                    "truth": int(y[i]) if y is not None and i < len(y) else None})
    return out


def _examples(paths: list, sig: tuple, token: bool, n: int) -> list:
    out = []
    for p in paths:
        if p.is_dir():
            out += _examples(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES | {".npy", ".npz",
                                                                                                  ".txt"}), sig, token, n)
        elif p.suffix.lower() in (".npy", ".npz"):
            out += _array_examples(p, sig, n)
        elif p.suffix.lower() == ".txt" and token:
            lines = [s for s in p.read_text(encoding="utf-8").splitlines() if s.strip()]
            out += [{"label": s, "kind": "text", "data": s} for s in lines[:n]]
        elif p.suffix.lower() in IMAGE_SUFFIXES and not token and len(sig[2]) == 3:
            mime = "image/png" if p.suffix.lower() == ".png" else f"image/{p.suffix.lower().lstrip('.')}"
            out.append({"label": p.name, "kind": "image",
                        "data": f"data:{mime};base64,{base64.b64encode(p.read_bytes()).decode()}"})
    return out


def model_groups(described: list, infos: list, examples: list, n: int, echo=None, tokenizer: Path | None = None) -> list:
    """One record per distinct explainer input; sets ``d["model"]`` (the record's index) on each explainer.
    ``tokenizer`` (a WordPiece tokenizer.json) encodes the text of every token-id model."""
    for p in infos + examples + ([tokenizer] if tokenizer else []):
        if not p.exists():
            raise XCompileError(f"{p}: no such file or folder")
    wordpiece = None
    if tokenizer:
        if not any(d["token"] for d in described):
            raise XCompileError(f"--tokenizer {tokenizer}: none of the explainers takes token ids")
        from .wordpiece import describe_tokenizer
        wordpiece = describe_tokenizer(tokenizer)
    read = [(p, _read_info(p)) for p in infos]
    groups: dict = {}
    for d in described:
        d["model"] = groups.setdefault(_signature(d), len(groups))
    models = []
    for sig, k in groups.items():
        members = [d for d in described if d["model"] == k]
        token = members[0]["token"]
        info: dict = {}
        for d in members:
            info.update(_from_metadata(d["meta"]))
        given = [i for p, i in read if _fits(i, sig)] or ([read[0][1]] if len(read) == 1 and len(groups) == 1 else [])
        shipped_examples = None
        if not given:
            for name, data in SHIPPED.items():
                s = json.loads(_shipped(name).read_text(encoding="utf-8"))
                if _fits(s, sig) and s.get("input_name") == sig[0]:
                    given = [s]
                    shipped_examples = data
                    if echo:
                        echo(f"{members[0]['source']}: the shipped model's input; classes, preprocessing and examples "
                             f"from xcompile/data/{name}")
        for i in given:
            info.update(i)
        tokenizer = {k: info[k] for k in TOKEN_KEYS if k in info} if token else None
        if token and wordpiece:
            tokenizer = wordpiece
        if token and not (tokenizer or {}).get("vocab"):
            tokenizer = None  # ids typed as numbers on the page; no text box without a vocabulary
        ex = _examples(examples, sig, token, n)
        if not ex and shipped_examples:
            ex = _array_examples(_shipped(shipped_examples), sig, n)
        if not ex and token and isinstance(info.get("examples"), dict):
            words = [(w, c) for group in zip(*info["examples"].values()) for c, w in zip(info["examples"], group)]
            ex = [{"label": f"{w} ({c})", "kind": "text", "data": w} for w, c in words[:n]]
        models.append({"input": {"name": sig[0], "dtype": sig[1], "shape": list(sig[2])}, "token": token,
                       "classes": _class_names(info), "preprocess": info.get("preprocess") or {},
                       "input_range": info.get("input_range"), "tokenizer": tokenizer, "examples": ex,
                       "explainers": [d["file"] for d in members]})
    return models
