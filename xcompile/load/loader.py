"""Load an ONNX classifier: read (external data too), validate, bring it to a workable opset,
find the data input and the score output, and make the batch dimension symbolic."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import helper, version_converter

from ..canonicalize.groupnorm import expand_groupnorm18
from ..canonicalize.outputs import choose_score_output
from ..errors import XCompileError
from ..graph import attr
from ..guards import check_initializers
from ..protobuf_limit import check_model, heavy, infer_shapes, too_large
from .quantized_ops import refuse_unsupported

MIN_OPSET = 7  # opsets below WORK_OPSET go through onnx.version_converter
MAX_OPSET = 23
WORK_OPSET = 17  # models below this are converted up to it; newer ones keep their own opset


def read_model(model) -> onnx.ModelProto:
    """Path, bytes or ModelProto -> ModelProto with external data loaded."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model))
        except Exception as e:  # noqa: BLE001 - protobuf raises various types
            raise XCompileError(f"<bytes>: not a readable ONNX model ({type(e).__name__})") from None
    path = Path(os.fspath(model))
    if path.is_dir():
        raise XCompileError(f"{path}: is a folder, not an ONNX model file")
    if not path.is_file():
        raise XCompileError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise XCompileError(f"{path}: empty file (0 bytes), not an ONNX model")
    try:
        return onnx.load(str(path), load_external_data=True)
    except FileNotFoundError as e:
        raise XCompileError(f"{path}: external data file missing ({e.filename or e})") from None
    except Exception as e:  # noqa: BLE001
        raise XCompileError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise XCompileError("model imports no default (ai.onnx) opset")


def imply_default_domain(m: onnx.ModelProto) -> None:
    """A file that imports only ai.onnx.ml (onnxmltools' XGBoost converter) uses no default-domain op: the default
    domain is implied at the working opset, so that the explainer's ai.onnx part has an opset to live in."""
    domains = {imp.domain for imp in m.opset_import}
    if not domains & {"", "ai.onnx"} and "ai.onnx.ml" in domains:
        m.opset_import.append(helper.make_opsetid("", WORK_OPSET))


def prepare(model: onnx.ModelProto, where: str = "model", copy: bool = True) -> onnx.ModelProto:
    """Validate and normalise the opset. Returns a new ModelProto (``copy=False``: ``model`` itself, edited, for a
    model the caller owns, e.g. just read from a file: no second copy of its weights)."""
    if copy:
        m = onnx.ModelProto()
        m.CopyFrom(model)
    else:
        m = model
    if len(m.graph.node) == 0:
        raise XCompileError(f"{where}: the graph has no nodes")
    check_initializers(m, where)  # declared sizes first: a 2^62 x 2^62 tensor is one line, not an overflow
    refuse_unsupported(m, where)  # int4 weight-only / bfloat16: one line (load/quantized.py)
    imply_default_domain(m)
    expand_groupnorm18(m)  # the deprecated GroupNormalization-18 fails onnx's checker: rewritten into what it computes
    try:
        check_model(m, skeleton=heavy(m))
    except onnx.checker.ValidationError as e:
        # the checker's message goes on over several lines (a cycle names its node on the second): keep all of it
        # on one line, without the ==> Context trailer
        text = str(e).strip().split("==> Context")[0]
        first = " ".join(text.split())[:400] or "invalid model"
        raise XCompileError(f"{where}: invalid ONNX model: {first}") from None
    opset = default_opset(m)
    # new onnx packages stamp IR versions that deployed runtimes reject: use the lowest that the opsets need
    try:
        m.ir_version = min(m.ir_version, max(8, helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)))
    except Exception:  # noqa: BLE001
        pass
    if opset < MIN_OPSET or opset > MAX_OPSET:
        raise XCompileError(f"{where}: opset {opset} is not supported (supported: {MIN_OPSET} to {MAX_OPSET})")
    if opset < WORK_OPSET:
        if too_large(m):
            raise XCompileError(f"{where}: opset {opset} in a model over 2 GiB: convert it to opset {WORK_OPSET} first "
                                "(onnx.version_converter works on models that fit one protobuf)")
        try:
            m = version_converter.convert_version(m, WORK_OPSET)
        except Exception as e:  # noqa: BLE001
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise XCompileError(f"{where}: cannot convert opset {opset} to {WORK_OPSET} with onnx.version_converter "
                                f"({first}); re-export the model at opset {WORK_OPSET} or newer") from None
    try:
        m = infer_shapes(m, data_prop=True, skeleton=heavy(m))
    except Exception:  # noqa: BLE001 - shape info is a convenience; the probe measures shapes anyway
        pass
    return m


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
INT_TYPES = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)
QUANT_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16)
_ID_ROUTES = ("Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")
# index arithmetic on the ids before the look-up (Keras 3 wraps negative ids: Where(Less(ids, 0), ids + vocab, ids);
# Mod / Clip bound them): its output is still one id per position
_ID_ARITHMETIC = ("Add", "Sub", "Mul", "Mod", "Clip", "Max", "Min", "Abs", "Neg", "Where")
FUSED_EMBEDDING = "EmbedLayerNormalization"  # onnxruntime's fused BERT embedding (load/contrib.py)


def _id_tensors(model: onnx.ModelProto, name: str) -> set:
    """`name` and every tensor computed from it by reshapes, casts and index arithmetic (graph order)."""
    ids = {name}
    for n in model.graph.node:
        if not n.input:
            continue
        if n.op_type in _ID_ROUTES and n.input[0] in ids:
            ids.add(n.output[0])
        elif n.op_type in _ID_ARITHMETIC:
            values = n.input[1:3] if n.op_type == "Where" else n.input[:1] if n.op_type == "Clip" else n.input
            if any(i in ids for i in values):
                ids.add(n.output[0])
    return ids


def _tables(model: onnx.ModelProto) -> dict:
    """{tensor: (rows, how)} of the 2-D tables a look-up may read: float initializers ("float"), integer initializers
    ("quantized": the Gather's output is dequantized) and DequantizeLinear outputs of constant integer tables ("qdq")."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for t in inits.values():
        if len(t.dims) == 2 and t.data_type in FLOAT_TYPES:
            out[t.name] = (int(t.dims[0]), "float")
        elif len(t.dims) == 2 and t.data_type in QUANT_TYPES:
            out[t.name] = (int(t.dims[0]), "quantized")
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and all(not i or i in inits for i in n.input) \
                and out.get(n.input[0], (0, ""))[1] == "quantized":
            out[n.output[0]] = (out[n.input[0]][0], "qdq")
    return out


def embedding_gather(model: onnx.ModelProto, name: str):
    """The embedding look-up that reads integer input `name`: a Gather (axis 0) on a constant table [vocab, D] (float;
    dequantized by the DequantizeLinear that reads the Gather's output, or that makes the table), reading the ids
    through Cast / Reshape / Squeeze / Unsqueeze / Flatten / Identity and index arithmetic (Add / Sub / Mul / Mod /
    Clip / Max / Min / Abs / Neg / Where), or onnxruntime's fused EmbedLayerNormalization (its word_embedding).
    Returns (node whose output is the embedding E, table name, vocab) of the largest such table, else None."""
    tables = _tables(model)
    ids = _id_tensors(model, name)
    readers: dict = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    found = []
    for n in model.graph.node:
        if n.op_type == FUSED_EMBEDDING and n.input and n.input[0] in ids and len(n.input) > 2 \
                and tables.get(n.input[2], (0, ""))[1] == "float":
            found.append((tables[n.input[2]][0], n, n.input[2]))
        if n.op_type != "Gather" or len(n.input) != 2 or n.input[1] not in ids or n.input[0] not in tables:
            continue
        if attr(n, "axis", 0) != 0:
            continue
        rows, how = tables[n.input[0]]
        if how == "quantized":
            dq = readers.get(n.output[0], [])
            if len(dq) != 1 or dq[0].op_type != "DequantizeLinear":
                continue
            n = dq[0]
        found.append((rows, n, n.input[0] if how != "quantized" else readers_table(n, model)))
    if not found:
        return None
    vocab, node, table = max(found, key=lambda f: f[0])
    return node, table, vocab


def readers_table(dq: onnx.NodeProto, model: onnx.ModelProto) -> str:
    """The integer table read by the Gather that DequantizeLinear `dq` dequantizes."""
    gather = next(n for n in model.graph.node if n.output and n.output[0] == dq.input[0])
    return gather.input[0]


def embedding_output(node: onnx.NodeProto) -> str:
    """The tensor E = table[ids] of an embedding look-up found by `embedding_gather`."""
    if node.op_type == FUSED_EMBEDDING:
        return f"xc/contrib/{node.name or node.output[0]}/word_embedding"  # made by load/contrib.py's view
    return node.output[0]


def find_data_input(model: onnx.ModelProto, name: str | None, where: str = "model") -> onnx.ValueInfoProto:
    """The explained input: `name` if given; else the one float input; else the one integer input read by an
    embedding Gather (token ids; with several, e.g. input_ids and token_type_ids, the one reading the largest table:
    the word embedding, not the token-type or position tables)."""
    inputs = graph_inputs(model)
    if name is not None:
        for i in inputs:
            if i.name == name:
                return i
        raise XCompileError(f"{where}: option input={name!r}: no such graph input (inputs: {[i.name for i in inputs]})")
    floats = [i for i in inputs if i.type.tensor_type.elem_type in FLOAT_TYPES]
    if len(floats) == 1:
        return floats[0]
    if len(floats) > 1:
        raise XCompileError(f"{where}: several float inputs {[i.name for i in floats]}: choose the explained one with --set input=NAME")
    tokens = [(emb[2], i) for i in inputs if i.type.tensor_type.elem_type in INT_TYPES
              for emb in [embedding_gather(model, i.name)] if emb is not None]
    tokens.sort(key=lambda t: -t[0])
    if not tokens:
        found = "; ".join(id_readers(model, i.name) for i in inputs)
        raise XCompileError(f"{where}: no float input and no integer input read by an embedding look-up ({found}): "
                            "token ids are explained where they reach a Gather on a constant [vocab, D] table (float, "
                            "or integer and dequantized after the look-up) or onnxruntime's EmbedLayerNormalization; "
                            "choose the explained input with --set input=NAME")
    if len(tokens) > 1 and tokens[0][0] == tokens[1][0]:
        raise XCompileError(f"{where}: inputs {[t[1].name for t in tokens]} each read an embedding table of {tokens[0][0]} "
                            "rows: choose the explained one with --set input=NAME")
    return tokens[0][1]


def id_readers(model: onnx.ModelProto, name: str) -> str:
    """What reads input `name` (through reshapes, casts and index arithmetic): for a refusal that says what it found."""
    ids = _id_tensors(model, name)
    inits = {t.name: t for t in model.graph.initializer}
    seen = []
    for n in model.graph.node:
        if any(i in ids for i in n.input) and n.output and n.output[0] not in ids:
            what = f"{n.op_type}{' (' + n.domain + ')' if n.domain else ''} {n.name or n.output[0]!r}"
            if n.op_type == "Gather" and n.input[0] in inits:
                t = inits[n.input[0]]
                what += (f" on {onnx.TensorProto.DataType.Name(t.data_type).lower()} table {list(t.dims)}"
                         " not dequantized after the look-up" if t.data_type in QUANT_TYPES else
                         f" on table {n.input[0]!r} {list(t.dims)}")
            elif n.op_type == "Gather":
                what += f" on the computed tensor {n.input[0]!r}"
            seen.append(what)
    return f"{name!r} is read by {', '.join(seen[:3])}" if seen else f"{name!r} is read by no node"


def find_score_output(model: onnx.ModelProto, name: str | None, where: str = "model") -> str:
    """The score output: `name`, else the first float tensor output; a ZipMap is bypassed, a label never taken
    (canonicalize/outputs.py)."""
    return choose_score_output(model, name, where)


def input_dims(vi: onnx.ValueInfoProto) -> list:
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return dims


def make_batch_symbolic(model: onnx.ModelProto, inputs, score_output: str) -> None:
    """Rename the first dimension of every named input (and of the score output) to the symbol 'N'."""
    names = {inputs} if isinstance(inputs, str) else set(inputs)
    for vi in list(model.graph.input) + list(model.graph.output):
        if (vi.name in names or vi.name == score_output) and vi.type.tensor_type.HasField("shape") and vi.type.tensor_type.shape.dim:
            d = vi.type.tensor_type.shape.dim[0]
            d.Clear()
            d.dim_param = "N"
