"""Read a model into the forward graph every method walks, in one straight line:
read -> check -> find the data input and score output -> canonicalize -> probe shapes -> freeze shape
arithmetic -> ForwardGraph. Also the options that shape how a model is read (`COMMON`)."""
from __future__ import annotations

import numpy as np
import onnx

from ..canonicalize.passes import (
    canonicalize,
    find_explained_scores,
    freeze_shape_arithmetic,
    remove_unused_initializers,
)
from ..errors import XCompileError
from ..graph import ForwardGraph
from ..options import Param, as_bool
from ..write.precision import parse_precision
from .loader import (
    default_opset,
    find_data_input,
    find_score_output,
    input_dims,
    make_batch_symbolic,
    prepare,
    read_model,
)
from .probe import probe
from .quantized import float_view

# options every method accepts (they shape how the model is read, not how it is explained)
COMMON = {
    "input": Param(None, "name of the data input"),
    "output": Param(None, "name of the score output"),
    "keep_softmax": Param(False, "explain the softmax output instead of the logits (true/false)", as_bool),
    "keep_outputs": Param(False, "keep every original output, in place, and add relevance after them (true/false)", as_bool),
    "precision": Param(None, "float32 (default) or float16: a float16 explainer of a float32 model (for GPUs; "
                       "relevance stays float32)", parse_precision),
    "input_shape": Param(None, "sample shape without the batch, e.g. 3x224x224",
                         lambda v: tuple(int(d) for d in (v.split("x") if isinstance(v, str) else v))),
}


def split_params(params: dict) -> tuple[dict, dict]:
    common = {k: p.default for k, p in COMMON.items()}
    rest = {}
    for k, v in params.items():
        if k in COMMON:
            try:
                common[k] = COMMON[k].parse(v)
            except (TypeError, ValueError):
                raise XCompileError(f"option {k}={v!r}: {COMMON[k].help}") from None
        else:
            rest[k] = v
    return common, rest


def load_forward(model, common: dict, where: str = "model") -> ForwardGraph:
    """Read, validate, canonicalize and measure the forward graph."""
    m = prepare(read_model(model), where)
    data = find_data_input(m, common["input"], where)
    score = find_score_output(m, common["output"], where)
    decisions: list = []
    canonicalize(m, decisions=decisions)
    explained = find_explained_scores(m, score, common["keep_softmax"])
    dims = input_dims(data)
    sample = common["input_shape"] or tuple(dims[1:])
    if not dims or any(not isinstance(d, int) or d <= 0 for d in sample):
        raise XCompileError(f"{where}: input {data.name!r} has shape {dims}; give the sample shape with --set input_shape=CxHxW")
    dtype = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
             onnx.TensorProto.FLOAT16: np.float16}[data.type.tensor_type.elem_type]
    if common["input_shape"]:
        vi = next(i for i in m.graph.input if i.name == data.name)
        del vi.type.tensor_type.shape.dim[:]
        vi.type.tensor_type.shape.dim.add().dim_param = "N"
        for d in sample:
            vi.type.tensor_type.shape.dim.add().dim_value = d
    make_batch_symbolic(m, data.name, score)
    shapes, dtypes, at_one, fixed, at_two = probe(m, data.name, tuple(sample), dtype, where=where)
    if freeze_shape_arithmetic(m, data.name, at_one, at_two, decisions):
        remove_unused_initializers(m)
    shapes[data.name] = (None,) + tuple(sample)
    _declare_measured_shapes(m, shapes)
    g = ForwardGraph(m, data.name, score, explained, shapes, dtypes, fixed, default_opset(m))
    g.canonicalization = decisions
    float_view(g, where)  # quantized ops: the backward walks their dequantized view (load/quantized.py)
    if len(g.shape(explained)) != 2:
        raise XCompileError(f"{where}: the explained output {explained!r} has shape {list(g.shape(explained))}; expected [N, classes]")
    return g


def _declare_measured_shapes(m: onnx.ModelProto, shapes: dict) -> None:
    """The probe's measured shapes replace what the file declares: a stale or wrong declaration (exporters do
    write them) must not make the emitted graph fail shape inference. Intermediate value_info is re-inferred."""
    del m.graph.value_info[:]
    for vi in m.graph.output:
        shape = shapes.get(vi.name)
        if shape is None or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for k, d in enumerate(shape):
            if k == 0 or not isinstance(d, int):
                dims.add().dim_param = "N" if k == 0 else f"d{k}"
            else:
                dims.add().dim_value = d


def reserved_names(model: onnx.ModelProto) -> set:
    g = model.graph
    return {t.name for t in g.initializer} | {i.name for i in g.input} | {o for n in g.node for o in n.output} | {n.name for n in g.node}


def jsonable(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, list, tuple))
