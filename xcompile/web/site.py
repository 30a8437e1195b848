"""`xcompile export-web`: a static site that runs explainers in the browser with onnxruntime-web.

DIR/index.html + app.js (the page, xcompile/web/page/), DIR/manifest.json (what the page reads: per explainer its
file, method, input, outputs; per model its classes, preprocessing, tokenizer and examples), DIR/explainers/*.onnx
(byte copies), DIR/ort/ (the pinned onnxruntime-web files, web/ortweb.py), DIR/LICENSE-onnxruntime-web.txt.
No CDN, no server logic: any static host (or `xcompile view`) serves it."""
from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import onnx

from ..errors import XCompileError
from ..files import atomic_write, check_output, write_text
from ..metadata import ExplainerMeta
from . import ortweb
from .models import model_groups

PAGE_FILES = ("index.html", "app.js")


def _copy(src: Path, dst: Path) -> Path:
    return atomic_write(dst, lambda t: shutil.copyfile(src, t), "-o")


_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}


def _side_fill(inp) -> str | None:
    """How the page fills a text model's other integer input: "mask" (1 on tokens, 0 on padding) or "zeros"
    (token types of a single sequence); None for anything else. By name, as `xcompile run` does."""
    name = inp.name.lower()
    if inp.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return None
    return "mask" if "mask" in name else "zeros" if ("type" in name or "segment" in name) else None


def describe(path: Path) -> dict:
    """What the page needs to know about one explainer, from the file itself (inputs, outputs, metadata)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise XCompileError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise XCompileError(f"{path}: weights in external data (over 2 GiB); too large for a web page")
    meta = ExplainerMeta.of_model(model)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    outputs = [o.name for o in model.graph.output]
    if "target" not in [i.name for i in inputs] or "relevance" not in outputs:
        raise XCompileError(f"{path}: not an xcompile explainer (needs a 'target' input and a 'relevance' output)")
    data = [i for i in inputs if i.name != "target"]
    side = []
    if meta.token_input and len(data) > 1:  # a text model's attention mask / token types, filled as a tokenizer does
        explained = next((i for i in data if i.name == meta.token_input), data[0])
        for i in data:
            fill = None if i is explained else _side_fill(i)
            if fill:
                side.append({"name": i.name, "dtype": _DTYPES.get(i.type.tensor_type.elem_type), "fill": fill})
        data = [explained] + [i for i in data if i is not explained and not _side_fill(i)]
    if len(data) != 1:
        raise XCompileError(f"{path}: takes {len(data)} inputs besides 'target' ({[i.name for i in data]}); the "
                            "page feeds explainers of one input (an image, a vector or token ids, with an attention "
                            "mask and token type ids beside token ids)")
    tt = data[0].type.tensor_type
    dtype = _DTYPES.get(tt.elem_type)
    shape = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if dtype is None or len(shape) < 2 or any(s is None for s in shape[1:]):
        raise XCompileError(f"{path}: input {data[0].name!r} of type {onnx.TensorProto.DataType.Name(tt.elem_type)} "
                            f"and shape {shape}; the page needs float32 or integer ids of a fixed shape [N, ...]")
    params = dict(meta.params or {})
    return {"file": f"explainers/{path.name}", "source": path, "method": meta.method or "?", "params": params,
            "rules": meta.extra.get("rules") or params.get("rules"), "input": {"name": data[0].name, "dtype": dtype,
            "shape": shape[1:]}, "outputs": outputs, "token": bool(meta.token_input), "side": side, "meta": meta}


def export_site(explainers: list, out, infos: list | None = None, examples: list | None = None,
                ort_web: Path | None = None, n_examples: int = 8, echo=None, tokenizer: Path | None = None) -> Path:
    """Write the site into ``out``; returns the path of its index.html."""
    paths = [Path(p) for p in explainers]
    if not paths:
        raise XCompileError("export-web: give at least one explainer")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise XCompileError(f"export-web: no such explainer file: {', '.join(missing)}")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise XCompileError(f"export-web: two explainers named {sorted({n for n in names if names.count(n) > 1})}: "
                            "the site keeps one folder of explainers; rename one")
    out = check_output(out, inputs=paths, what="-o", folder=True)
    described = [describe(p) for p in paths]
    models = model_groups(described, [Path(i) for i in infos or []], [Path(e) for e in examples or []], n_examples,
                          echo, tokenizer=Path(tokenizer) if tokenizer else None)
    ort_dir = ortweb.runtime_files(ort_web)  # before any write: no half site when npm is missing
    for d in described:
        _copy(d["source"], out / d["file"])
    for f in ortweb.FILES:
        _copy(ort_dir / f, out / "ort" / f)
    write_text(out / ortweb.LICENSE_NAME, f"onnxruntime-web {ortweb.ORT_WEB_VERSION} (files in ort/)\n\n"
               + ortweb.MIT, "-o")
    page = resources.files("xcompile.web") / "page"
    for f in PAGE_FILES:
        write_text(out / f, (page / f).read_text(encoding="utf-8"), "-o")
    manifest = {"ort_web": ortweb.ORT_WEB_VERSION, "models": models,
                "explainers": [{k: v for k, v in d.items() if k not in ("source", "meta")} | {
                    "name": Path(d["file"]).stem, "model": d["model"]} for d in described]}
    write_text(out / "manifest.json", json.dumps(manifest, separators=(",", ":"), allow_nan=False), "-o")
    return out / "index.html"
