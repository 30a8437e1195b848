"""``--set precision=float16``: the finished float32 explainer converted to a float16 one (for GPUs: half the
memory and bandwidth), by onnxconverter_common's ``convert_float_to_float16`` with

* the I/O kept (``keep_io_types``): the data input and the scores keep the model's dtypes and ``relevance`` stays
  float32, cast at the borders;
* the guarded divisions (LRP's stabilized ones, ``Builder.stabilize``: z + eps * sign(z), then gy / that; the
  safe divisors of other emitters, ``Builder.mark_divisor``), recorded by the builder as it emitted them, kept in
  float32: an epsilon of 1e-6 lies below float16's smallest normal number (6.1e-5), so in float16 it would vanish
  or round to a subnormal, and the stabilizer would no longer keep the division away from 0.

Everything else (forward and backward) runs in float16; onnxruntime's CPU provider computes the float16 ops it has
no kernel for in float32 (its InsertCastTransformer), the CUDA provider runs them in float16."""
from __future__ import annotations

import warnings

import onnx

from ..errors import XCompileError
from ..graph import attr

PRECISIONS = ("float32", "float16")
# ops kept in float32 (onnxconverter_common's list, plus the scatters whose "add" reduction has no float16 kernel
# in onnxruntime's CPU provider: MaxPool's backward routes through one)
OP_BLOCK_LIST = ["ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer",
                 "FeatureVectorizer", "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor", "Normalizer",
                 "OneHotEncoder", "RandomUniformLike", "SVMClassifier", "SVMRegressor", "Scaler",
                 "TreeEnsembleClassifier", "TreeEnsembleRegressor", "ZipMap", "NonMaxSuppression", "TopK", "RoiAlign",
                 "Resize", "Range", "CumSum", "Min", "Max", "Upsample", "ScatterElements", "ScatterND"]


def parse_precision(v) -> str:
    v = str(v).lower()
    if v not in PRECISIONS:
        raise ValueError(v)
    return v


def _outputs_read_inside(model: onnx.ModelProto) -> None:
    """A graph output that nodes also read (the scores read by the seed) is computed under an inner name and copied
    out by an Identity, so that the converter's border cast (float16 -> the output's float32) leaves the inner one
    float16 for its readers."""
    outs = {o.name for o in model.graph.output}
    read = {i for n in model.graph.node for i in n.input} & outs
    if not read:
        return
    for n in model.graph.node:
        n.input[:] = [f"{i}/inner" if i in read else i for i in n.input]
        n.output[:] = [f"{o}/inner" if o in read else o for o in n.output]
    for o in sorted(read):
        model.graph.node.append(onnx.helper.make_node("Identity", [f"{o}/inner"], [o], name=f"xc/out/{o}"))


def _own_constants(model: onnx.ModelProto, blocked: set) -> None:
    """The float32 nodes read their own copy of a float constant that float16 nodes share (the builder de-duplicates
    constants; the converter would make the shared one float16)."""
    inits = {t.name: t for t in model.graph.initializer}
    users: dict = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, set()).add(n.name in blocked)
    copies: dict = {}
    for n in model.graph.node:
        if n.name not in blocked:
            continue
        for k, i in enumerate(n.input):
            t = inits.get(i)
            if t is None or t.data_type != onnx.TensorProto.FLOAT or users[i] == {True}:
                continue
            if i not in copies:
                c = onnx.TensorProto()
                c.CopyFrom(t)
                c.name = f"{i}/float32"
                model.graph.initializer.append(c)
                copies[i] = c.name
            n.input[k] = copies[i]


def to_float16(model: onnx.ModelProto, where: str, guarded=()) -> onnx.ModelProto:
    """The explainer in float16 (see the module's docstring); `guarded`: the names of the nodes of every guarded
    division (the Div and what keeps its divisor from 0), as the Builder recorded them (`Builder.mark_divisor`)."""
    if any(n.domain not in ("", "ai.onnx") or n.op_type in ("QuantizeLinear", "DequantizeLinear",
                                                            "DynamicQuantizeLinear") for n in model.graph.node):
        raise XCompileError(f"{where}: option precision=float16 applies to float models; this model is quantized "
                            "(its own integer forward is kept as it is)")
    try:
        from onnxconverter_common import float16
    except ImportError:  # pragma: no cover - an optional dependency
        raise XCompileError("option precision=float16 needs the onnxconverter-common package "
                            "(pip install onnxconverter-common)") from None
    names = {n.name for n in model.graph.node}
    if len(names) != len(model.graph.node):  # the block list is by node name
        for k, n in enumerate(model.graph.node):
            if not n.name:
                n.name = f"xc/node{k}"
    blocked = sorted(set(guarded) & names)
    _outputs_read_inside(model)
    _own_constants(model, set(blocked) | {n.name for n in model.graph.node if n.op_type in OP_BLOCK_LIST})
    # the converter leaves Cast's `to` as it is: the explainer's own casts to float32 (masks to numbers) go to float16
    casts = {n.name for n in model.graph.node if n.op_type == "Cast" and n.name not in blocked
             and attr(n, "to") == onnx.TensorProto.FLOAT}
    with warnings.catch_warnings():  # its notes on constants clamped to float16's range, one per tensor
        warnings.simplefilter("ignore")
        out = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                               node_block_list=blocked, op_block_list=OP_BLOCK_LIST)
    for n in out.graph.node:
        if n.name in casts:
            for a in n.attribute:
                if a.name == "to":
                    a.i = onnx.TensorProto.FLOAT16
    return out
