"""Quantization ops, in the dequantized view of a quantized model (load/quantized.py builds it: QOperator and
dynamic ops become their float op between DequantizeLinear and QuantizeLinear). A quantized tensor's gradient is
the gradient of its dequantized value, so:

QuantizeLinear          the clipped straight-through estimator of PyTorch's fake_quantize (Bengio et al. 2013;
                        Jacob et al. 2018): the gradient passes where qmin <= round(x / scale) + zero_point <= qmax
                        (before saturation), 0 elsewhere
DequantizeLinear        the identity (its value is the dequantized value)
DynamicQuantizeLinear   the identity (its range covers its input: it never clips)

LRP and the other relevance methods pass relevance through all three unchanged (kinds.PASS_OPS)."""
from __future__ import annotations

import numpy as np
import onnx

from ..table import backward
from .common import require

# saturation range per zero-point dtype (uint8 when the zero point is absent, as ONNX says)
RANGES = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
          onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767)}
_NP = {np.dtype(np.uint8): onnx.TensorProto.UINT8, np.dtype(np.int8): onnx.TensorProto.INT8,
       np.dtype(np.uint16): onnx.TensorProto.UINT16, np.dtype(np.int16): onnx.TensorProto.INT16}


def _zero_point_type(ctx):
    if len(ctx.node.input) < 3 or not ctx.node.input[2]:
        return onnx.TensorProto.UINT8
    name = ctx.node.input[2]
    c = ctx.g.const(name)
    dt = c.dtype if c is not None else ctx.g.dtypes.get(name)
    return _NP.get(np.dtype(dt)) if dt is not None else None


def _along_axis(ctx, t, value, axis, rank, hint):
    """A per-axis (1-D) scale / zero point shaped to broadcast along `axis` of a rank-`rank` input."""
    if value is None or value.ndim == 0 or rank <= 1:
        return t
    shape = [1] * rank
    shape[axis % rank] = -1
    return ctx.b.reshape(t, shape, hint)


@backward("QuantizeLinear")
def quantize(ctx, gy):
    b = ctx.b
    zt = _zero_point_type(ctx)
    require(zt in RANGES, ctx, "a zero point that is not (u)int8 / (u)int16")
    require(ctx.attr("block_size", 0) == 0, ctx, "blocked quantization (block_size)")
    qmin, qmax = RANGES[zt]
    rank, axis = len(ctx.in_shape(0)), ctx.attr("axis", 1)
    scale = _along_axis(ctx, ctx.x(1), ctx.const(1), axis, rank, "scale")
    q = b.op("Round", [b.div(ctx.x(0), scale, "x_over_scale")], "rounded")  # half to even, as QuantizeLinear
    if len(ctx.node.input) > 2 and ctx.node.input[2]:
        zp = b.cast(ctx.x(2), onnx.TensorProto.FLOAT, "zero_point")
        q = b.add(q, _along_axis(ctx, zp, ctx.const(2), axis, rank, "zero_point_axis"), "unclamped")
    inside = b.op("And", [b.op("GreaterOrEqual", [q, b.f32(float(qmin))], "above_min"),
                          b.op("LessOrEqual", [q, b.f32(float(qmax))], "below_max")], "inside")
    return [b.where(inside, gy[0], b.f32(0.0), "ste"), None, None]


@backward("DequantizeLinear")
def dequantize(ctx, gy):
    return [gy[0], None, None]


@backward("DynamicQuantizeLinear")
def dynamic_quantize(ctx, gy):
    return [gy[0]]
