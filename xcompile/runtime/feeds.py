"""The inputs of `xcompile run`: which ``--input`` is which explainer input, token ids or text lines for a
token-id explainer, and the extra (not explained) inputs such as ``attention_mask``.

``--input FILE`` (once) is the explained input; every other input of the explainer is given as
``--input NAME=FILE.npy``. A missing input is an error naming it, with one exception: when the token ids are
encoded here from a ``.txt`` file, inputs named ``*mask*`` get the tokenizer's attention mask and inputs named
``*token_type*`` its type ids (they describe the text just encoded). Integer inputs stay integer (cast to the
explainer's declared int32/int64); float inputs are read as float32 (float16 where the explainer says so).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import XCompileError, clean
from ..graph import TARGET
from ..guards import regular_file
from ..options import check_memory
from .io import Batch, load_array, load_inputs

DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
          "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(bool)": np.bool_}


def explainer_inputs(ex) -> list:
    """The explainer's inputs other than ``target``, in order (onnxruntime NodeArgs)."""
    return [i for i in ex.session.get_inputs() if i.name != TARGET]


def is_token_input(ex) -> bool:
    flag = getattr(ex, "token_input", None)
    return bool(flag) if flag is not None else ex.data_input.type in ("tensor(int64)", "tensor(int32)")


def split_specs(specs: list[str], ex) -> tuple[str, dict]:
    """--input values -> (the explained input's file, {other input name: file})."""
    names = [i.name for i in explainer_inputs(ex)]
    data_name = ex.data_input.name
    unnamed, named = [], {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if sep and key in names:
            if key in named:
                raise XCompileError(f"--input {key}=...: given twice")
            named[key] = value
        elif sep and not Path(spec).exists() and key.isidentifier():
            raise XCompileError(f"--input {spec}: {key!r} is not an input of {ex.where} (inputs: {', '.join(names)})")
        else:
            unnamed.append(spec)
    if data_name in named:
        unnamed.insert(0, named.pop(data_name))
    if len(unnamed) != 1:
        what = "no" if not unnamed else f"{len(unnamed)}"
        raise XCompileError(f"--input: {what} explained inputs given; give the explained input {data_name!r} once "
                            f"(as FILE or {data_name}=FILE) and the others as NAME=FILE")
    return unnamed[0], named


def load_batch(specs: list[str], ex, preprocess: str | None = None, tokenizer=None) -> Batch:
    from .tokens import load_vocabulary, words_of
    data_file, named = split_specs(specs, ex)
    vocab = load_vocabulary(tokenizer) if tokenizer else None
    token = is_token_input(ex)
    if vocab is not None and not token:
        raise XCompileError(f"--tokenizer: {ex.where} explains a float input {ex.data_input.name!r}, not token ids")
    others = [i for i in explainer_inputs(ex) if i.name != ex.data_input.name]
    if not token:
        if Path(data_file).suffix.lower() == ".txt":
            raise XCompileError(f"--input {data_file}: text needs a token-id explainer and --tokenizer")
        x, names, images = load_inputs(Path(data_file), ex.sample_shape, preprocess)
        if not others:
            return Batch(x, names, images)
        feeds = {ex.data_input.name: x.astype(DTYPES.get(ex.data_input.type, np.float32), copy=False)}
        feeds.update(_other_inputs(others, named, len(x), {}, ex))
        return Batch(x, names, images, feeds=feeds)

    length = ex.sample_shape[0] if len(ex.sample_shape) == 1 else None
    if not isinstance(length, (int, np.integer)):
        raise XCompileError(f"{ex.where}: token input {ex.data_input.name!r} has shape {list(ex.data_input.shape)}; "
                            "expected [N, L] with L fixed")
    path = Path(data_file)
    built, word_info = {}, []
    if path.suffix.lower() == ".txt":
        if vocab is None:
            raise XCompileError(f"--input {path}: a text file needs --tokenizer (a tokenizer.json or a vocabulary)")
        lines, line_no = _read_lines(path)
        enc = vocab.encode(lines, int(length), str(path))
        ids = enc.ids
        built = {"mask": enc.mask, "token_type": enc.type_ids}
        word_info = [words_of(vocab, row, w, ws) for row, w, ws in zip(ids, enc.word_ids, enc.words)]
    else:
        ids = _token_ids(path, int(length))
        if vocab is not None:
            vocab.check_ids(ids, str(path))
            word_info = [words_of(vocab, row) for row in ids]
    names = ([f"{path.stem}_{i}" for i in range(len(ids))] if len(ids) > 1 else [path.stem])
    if path.suffix.lower() == ".txt" and len(ids) > 1:  # NAME_k is line k + 1 (0-based), blank lines skipped
        names = [f"{path.stem}_{k}" for k in line_no]
    feeds = {ex.data_input.name: ids.astype(DTYPES.get(ex.data_input.type, np.int64))}
    feeds.update(_other_inputs(others, named, len(ids), built, ex))
    mask_name = next((n for n in feeds if "mask" in n.lower() and n != ex.data_input.name), None)
    if mask_name is not None and feeds[mask_name].shape == ids.shape:
        shown = feeds[mask_name] != 0
    elif vocab is not None and vocab.pad_id is not None:
        shown = ids != vocab.pad_id
    else:
        shown = np.ones(ids.shape, bool)
    return Batch(None, names, [None] * len(ids), feeds=feeds, ids=ids, shown=shown, vocab=vocab, words=word_info)


def _read_lines(path: Path) -> tuple[list[str], list[int]]:
    """The non-blank lines and their 0-based line numbers (row names follow the file's lines, never shift)."""
    regular_file(path, "--input")
    check_memory(path.stat().st_size * 8, f"--input {clean(path)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise XCompileError(f"--input {clean(path)}: not a readable UTF-8 text file ({type(e).__name__})") from None
    kept = [(k, line) for k, line in enumerate(text.split("\n")) if line.strip()]
    if not kept:
        raise XCompileError(f"--input {clean(path)}: no text lines; give at least one line")
    return [line.rstrip("\r") for _, line in kept], [k for k, _ in kept]


def _token_ids(path: Path, length: int) -> np.ndarray:
    if not path.is_file():
        raise XCompileError(f"--input {path}: no such file (token ids: an integer .npy [N, L] or [L], or a .txt file)")
    if path.suffix.lower() not in (".npy", ".npz"):
        raise XCompileError(f"--input {path}: token ids are an integer .npy/.npz [N, {length}] (or a .txt file "
                            "of lines with --tokenizer)")
    a = load_array(path)
    if a.dtype.kind not in "iu":
        raise XCompileError(f"--input {path}: array of dtype {a.dtype}; token ids must be integers")
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[1] != length:
        raise XCompileError(f"--input {path}: token ids of shape {list(a.shape)}; the explainer expects "
                            f"[N, {length}] (pad or truncate to {length} tokens)")
    if len(a) == 0:
        raise XCompileError(f"--input {path}: 0 rows (an empty batch); give at least one input row")
    if int(a.min()) < 0 or int(a.max()) > np.iinfo(np.int64).max:
        bad = int(a.min()) if int(a.min()) < 0 else int(a.max())
        raise XCompileError(f"--input {path}: token id {bad} is out of range (ids are >= 0)")
    return a.astype(np.int64)


def _other_inputs(others, named: dict, n: int, built: dict, ex) -> dict:
    """The explainer's not-explained inputs, each from NAME=FILE, else from the encoded text, else an error."""
    feeds = {}
    for inp in others:
        want = DTYPES.get(inp.type)
        if inp.name in named:
            what = f"--input {inp.name}={named[inp.name]}"
            if not Path(named[inp.name]).is_file():
                raise XCompileError(f"{what}: no such file")
            a = load_array(Path(named[inp.name]))
            if want is not None and np.dtype(want).kind in "iub" and a.dtype.kind not in "iub":
                raise XCompileError(f"{what}: array of dtype {a.dtype}; {inp.name!r} takes {np.dtype(want).name}")
            if a.dtype.kind not in "fiub":
                raise XCompileError(f"{what}: array of dtype {a.dtype}; expected numbers")
        else:
            key = next((k for k in built if k in inp.name.lower()), None)
            if key is None:
                raise XCompileError(f"--input: missing input {inp.name!r} of {ex.where}; give it as "
                                    f"--input {inp.name}=FILE.npy")
            a, what = built[key], f"{inp.name} (from the tokenizer)"
        shape = [d if isinstance(d, (int, np.integer)) else None for d in inp.shape[1:]]
        a = a[None] if a.ndim == len(shape) else a
        if a.ndim != len(shape) + 1 or a.shape[0] != n or any(s is not None and s != d for s, d in zip(shape, a.shape[1:])):
            dims = ", ".join(str(s) if s is not None else "?" for s in shape)
            raise XCompileError(f"{what}: array of shape {list(a.shape)}; expected [{n}, {dims}] (one row per input row)")
        feeds[inp.name] = a.astype(want if want is not None else np.float32, copy=False)
    return feeds
