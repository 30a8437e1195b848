"""The table of quantized ops and their float views (load/quantized.py builds the view from it), the numpy
dequantization, and the one-line refusals of what has no float view."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import XCompileError
from ..graph import attr
from ..kinds import ROUTE_OPS


@dataclass(frozen=True)
class QOp:
    """A quantized op as its float op: ``triples`` the (value, scale, zero point) input slots per float input
    (None: that float input is absent), ``bias`` (slot, (scale slots whose product is its scale)) when the float
    op has an int32 bias, ``out`` the (scale, zero point) slots of the output's requantization (None: float
    output), ``rest`` a float-op input slot read after the triples (Concat's variadic inputs use ``variadic``)."""
    float_op: str
    triples: tuple = ()
    bias: tuple | None = None
    out: tuple | None = None
    variadic: int | None = None  # QLinearConcat: (X, scale, zp) triples from this slot on


QOPS = {
    "QLinearConv": QOp("Conv", ((0, 1, 2), (3, 4, 5)), bias=(8, (1, 4)), out=(6, 7)),
    "QLinearMatMul": QOp("MatMul", ((0, 1, 2), (3, 4, 5)), out=(6, 7)),
    "QGemm": QOp("Gemm", ((0, 1, 2), (3, 4, 5)), bias=(6, (1, 4)), out=(7, 8)),
    "QLinearAdd": QOp("Add", ((0, 1, 2), (3, 4, 5)), out=(6, 7)),
    "QLinearMul": QOp("Mul", ((0, 1, 2), (3, 4, 5)), out=(6, 7)),
    "QLinearGlobalAveragePool": QOp("GlobalAveragePool", ((0, 1, 2),), out=(3, 4)),
    "QLinearAveragePool": QOp("AveragePool", ((0, 1, 2),), out=(3, 4)),
    "QLinearLeakyRelu": QOp("LeakyRelu", ((0, 1, 2),), out=(3, 4)),
    "QLinearSigmoid": QOp("Sigmoid", ((0, 1, 2),), out=(3, 4)),
    "QLinearConcat": QOp("Concat", (), out=(0, 1), variadic=2),
    "QLinearSoftmax": QOp("Softmax", ((0, 1, 2),), out=(3, 4)),
}
DROPPED_ATTRS = ("channels_last", "opset")  # layout / version flags of the QLinear ops, not float-op attributes
INTEGER_OPS = {"ConvInteger": "Conv", "MatMulInteger": "MatMul"}  # + Cast + Mul(scale): the dynamic form
# ops whose backward reads no input value (routing / shape): they run on the quantized tensor in the view too
VALUE_FREE_OPS = ROUTE_OPS | {"Slice", "Pad", "Split", "Gather", "Tile", "DepthToSpace", "SpaceToDepth"}
REFUSED = {"MatMulNBits": "weight-only int4 (MatMulNBits) models are not supported; quantize to int8 "
                          "(onnxruntime.quantization quantize_static / quantize_dynamic) instead"}


def dequantize(q: np.ndarray, scale: np.ndarray, zp, axis: int = 1) -> np.ndarray:
    """(q - zp) * scale in float32 as onnxruntime's DequantizeLinear computes it; a 1-D scale runs along `axis`."""
    scale = np.asarray(scale, np.float32)
    zp = np.zeros((), np.int64) if zp is None else np.asarray(zp)
    if scale.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape) if zp.ndim == 1 else zp
    return ((q.astype(np.int64) - zp.astype(np.int64)).astype(np.float32) * scale).astype(np.float32)


def refuse_unsupported(model: onnx.ModelProto, where: str) -> None:
    """One line for what has no float view: weight-only int4, bfloat16."""
    for n in model.graph.node:
        if n.op_type in REFUSED:
            raise XCompileError(f"{where}: node {n.name or n.output[0]!r} ({n.op_type}): {REFUSED[n.op_type]}")
    bf16 = onnx.TensorProto.BFLOAT16
    tensors = [(t.name, t.data_type) for t in model.graph.initializer]
    tensors += [(v.name, v.type.tensor_type.elem_type) for v in list(model.graph.input) + list(model.graph.value_info)]
    tensors += [(n.output[0], attr(n, "to")) for n in model.graph.node if n.op_type == "Cast" and attr(n, "to") is not None]
    for name, dt in tensors:
        if dt == bf16:
            raise XCompileError(f"{where}: tensor {name!r} is bfloat16: bfloat16 models are not supported; convert "
                                "to float16 (onnxconverter_common.float16) or float32 first")
