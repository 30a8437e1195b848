"""Which graph output holds the scores, and the two-class view of a single-logit output (docs/tabular.md).

* The score output, when ``--set output=`` does not name it: the first graph output that is a float tensor.
  Integer outputs (the ``label`` that skl2onnx / onnxmltools classifiers write first) are never taken; a ``ZipMap``
  output (a sequence of maps) stands for the tensor the ``ZipMap`` reads: the ``ZipMap`` is replaced by an
  ``Identity`` so that the output keeps its name and becomes the probabilities tensor ``[N, classes]``.
* A single-logit score ``[N]`` or ``[N, 1]`` (binary classifiers exported with a squeezed or one-unit head, after a
  trailing ``Sigmoid`` if any) is explained through the view ``[-z, z]``: class 1 is the logit, class 0 its
  negation; target -1 means class 1 (the logit itself), so ``explained_class`` reports 1 or 0.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import XCompileError
from ..graph import attrs

FLOATS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
SINGLE_LOGIT_VIEW = "xc_single_logit_scores"


def _producers(model: onnx.ModelProto) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def _is_float_tensor(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in FLOATS


def bypass_zipmap(model: onnx.ModelProto, name: str) -> bool:
    """Replace the ZipMap that writes output `name` by an Identity of the tensor it reads; the output becomes that
    float tensor under the same name. Returns whether a ZipMap was bypassed."""
    node = _producers(model).get(name)
    if node is None or node.op_type != "ZipMap":
        return False
    node.op_type, node.domain = "Identity", ""
    del node.attribute[:]
    vi = next(o for o in model.graph.output if o.name == name)
    vi.type.Clear()
    vi.type.tensor_type.elem_type = TensorProto.FLOAT
    shape = vi.type.tensor_type.shape
    shape.dim.add().dim_param = "N"
    shape.dim.add().dim_param = "classes"
    return True


def choose_score_output(model: onnx.ModelProto, name: str | None, where: str = "model") -> str:
    """The score output (see the module docstring); edits `model` where a ZipMap is bypassed."""
    outs = {o.name: o for o in model.graph.output}
    if name is not None:
        if name not in outs:
            raise XCompileError(f"{where}: option output={name!r}: no such graph output (outputs: {list(outs)})")
        if not bypass_zipmap(model, name) and not _is_float_tensor(outs[name]):
            raise XCompileError(f"{where}: option output={name!r}: not a float tensor (a label or a map); name the "
                                f"scores (outputs: {list(outs)})")
        return name
    for o in model.graph.output:
        if bypass_zipmap(model, o.name) or _is_float_tensor(o):
            return o.name
    raise XCompileError(f"{where}: no float score output among {list(outs)}; choose one with --set output=NAME")


def single_logit_view(model: onnx.ModelProto, explained: str, shape: tuple) -> str | None:
    """If the explained tensor is one logit per row ([N] or [N, 1]), append the view [-z, z] ([N, 2]) to the forward
    graph and return its name; else None."""
    if tuple(shape) not in ((None,), (None, 1)):
        return None
    producer = _producers(model)
    z = explained
    prod = producer.get(z)
    if prod is not None and prod.op_type == "Sigmoid":  # explain the logit, as before a trailing Softmax
        z = prod.input[0]
    shape_c = helper.make_tensor(f"{SINGLE_LOGIT_VIEW}/shape", TensorProto.INT64, [2], [-1, 1])
    model.graph.initializer.append(shape_c)
    col = f"{SINGLE_LOGIT_VIEW}/logit"
    neg = f"{SINGLE_LOGIT_VIEW}/negated"
    model.graph.node.extend([
        helper.make_node("Reshape", [z, shape_c.name], [col], name=col),
        helper.make_node("Neg", [col], [neg], name=neg),
        helper.make_node("Concat", [neg, col], [SINGLE_LOGIT_VIEW], name=SINGLE_LOGIT_VIEW, axis=1),
    ])
    return SINGLE_LOGIT_VIEW


LINEAR_MODELS = ("LinearClassifier", "LinearRegressor")
_SCORE_ROUTE = ("Identity", "Cast", "Normalizer")


def linear_model_view(model: onnx.ModelProto, explained: str) -> str | None:
    """If the explained scores come from an ai.onnx.ml LinearClassifier / LinearRegressor (through Cast, Normalizer,
    a bypassed ZipMap), append an ai.onnx Gemm that computes its raw scores (before POST_TRANSFORM) from the same
    input and return its name: the scores explained, as the logits before a Softmax are (binary classifiers with
    one coefficient row: [-s, s], as onnxruntime's raw scores). Else None."""
    producer = _producers(model)
    t = explained
    while t in producer and producer[t].op_type in _SCORE_ROUTE:
        t = producer[t].input[0]
    node = producer.get(t)
    if node is None or node.op_type not in LINEAR_MODELS or node.domain != "ai.onnx.ml":
        return None
    if node.op_type == "LinearClassifier" and t != node.output[-1]:
        return None  # the label
    a = attrs(node)
    coef = np.asarray(a.get("coefficients", []), np.float32)
    intercepts = np.asarray(a.get("intercepts", []), np.float32)
    rows = len(intercepts) if len(intercepts) else int(a.get("targets", 1))
    coef = coef.reshape(rows, -1)
    intercepts = intercepts if len(intercepts) else np.zeros(rows, np.float32)
    name = f"xc_{node.op_type.lower()}_raw"
    w, bias = f"{name}/weight", f"{name}/bias"
    model.graph.initializer.extend([numpy_helper.from_array(coef, w), numpy_helper.from_array(intercepts, bias)])
    nodes = [helper.make_node("Gemm", [node.input[0], w, bias], [name], name=name, transB=1)]
    labels = len(a.get("classlabels_ints", []) or a.get("classlabels_strings", []))
    if node.op_type == "LinearClassifier" and rows == 1 and labels == 2:
        nodes += [helper.make_node("Neg", [name], [f"{name}/negated"], name=f"{name}/negated"),
                  helper.make_node("Concat", [f"{name}/negated", name], [f"{name}/two_class"], name=f"{name}/two_class",
                                   axis=1)]
        name = f"{name}/two_class"
    model.graph.node.extend(nodes)
    return name
