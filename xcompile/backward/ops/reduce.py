"""Reductions (ReduceSum / Mean / Max / Min / L1 / L2 / SumSquare / LogSum / LogSumExp / Prod): each backward spreads
the output gradient back over the reduced axes (`reduce_axes`: attribute or constant-input axes, noop_with_empty_axes)."""
from __future__ import annotations

import numpy as np
import onnx

from ..table import backward
from .common import expand_back, require


def reduce_axes(ctx):
    rank = len(ctx.in_shape(0))
    axes = ctx.attr("axes")
    if axes is None and len(ctx.node.input) > 1 and ctx.node.input[1]:
        axes = ctx.const(1)
        require(axes is not None, ctx, "reduction axes computed at run time")
        axes = axes.tolist()
    if axes is None or len(axes) == 0:
        if ctx.attr("noop_with_empty_axes", 0):
            return []
        axes = list(range(rank))
    return sorted(int(a) % rank for a in axes)


@backward("ReduceSum", "ReduceMean")
def reduce_sum_mean(ctx, gy):
    b, g = ctx.b, gy[0]
    in_shape = ctx.in_shape(0)
    axes = reduce_axes(ctx)
    if not axes:
        return [g]
    if not ctx.attr("keepdims", 1):
        g = b.unsqueeze(g, axes)
    if ctx.op_type == "ReduceMean":
        n = int(np.prod([in_shape[a] for a in axes]))
        g = b.mul(g, b.f32(1.0 / n))
    return [expand_back(ctx, g, in_shape)]


@backward("ReduceMax", "ReduceMin")
def reduce_max(ctx, gy):
    # ties share the gradient equally (as torch.amax/amin do)
    b, g = ctx.b, gy[0]
    axes = reduce_axes(ctx)
    y = ctx.y()
    if not ctx.attr("keepdims", 1):
        g, y = b.unsqueeze(g, axes), b.unsqueeze(y, axes)
    mask = b.cast(b.op("Equal", [ctx.x(0), y]), onnx.TensorProto.FLOAT)
    count = b.reduce("ReduceSum", mask, axes, keepdims=1)
    return [b.mul(mask, b.div(g, count))]


def _keepdims(ctx, axes, *ts):
    """The reduced tensors with the reduced axes restored (size 1) when keepdims=0, so that they broadcast against
    x; as they are when nothing is reduced (noop_with_empty_axes: onnxruntime still applies the elementwise part,
    |x| for ReduceL2, x^2 for ReduceSumSquare, so the backward's formula holds there too)."""
    if not axes or ctx.attr("keepdims", 1):
        return ts
    return tuple(ctx.b.unsqueeze(t, axes) for t in ts)


@backward("ReduceL2")
def reduce_l2(ctx, gy):
    # y = sqrt(sum x^2): dy/dx = x / y (0 where y = 0, as torch.linalg.vector_norm's subgradient)
    b = ctx.b
    g, y = _keepdims(ctx, reduce_axes(ctx), gy[0], ctx.y())
    zero = b.op("Equal", [y, b.f32(0.0)])
    safe = b.mark_divisor(b.where(zero, b.f32(1.0), y), zero)
    return [b.mul(ctx.x(0), b.div(g, safe))]


@backward("ReduceSumSquare")
def reduce_sum_square(ctx, gy):
    b = ctx.b
    g, = _keepdims(ctx, reduce_axes(ctx), gy[0])
    return [b.mul(b.mul(ctx.x(0), b.f32(2.0)), g)]


@backward("ReduceLogSumExp")
def reduce_log_sum_exp(ctx, gy):
    # y = log sum exp(x): dy/dx = softmax = exp(x - y) (1 where noop_with_empty_axes leaves y = x)
    b = ctx.b
    g, y = _keepdims(ctx, reduce_axes(ctx), gy[0], ctx.y())
    return [b.mul(b.op("Exp", [b.sub(ctx.x(0), y)], "softmax"), g)]


@backward("ReduceL1")
def reduce_l1(ctx, gy):
    b = ctx.b
    g, = _keepdims(ctx, reduce_axes(ctx), gy[0])
    return [b.mul(b.op("Sign", [ctx.x(0)]), g)]


@backward("ReduceLogSum")
def reduce_log_sum(ctx, gy):
    # y = log(sum x): dy/dx = 1 / sum x = exp(-y)
    b = ctx.b
    axes = reduce_axes(ctx)
    if not axes:
        return [b.div(gy[0], ctx.x(0))]
    g, y = _keepdims(ctx, axes, gy[0], ctx.y())
    return [expand_back(ctx, b.mul(g, b.op("Exp", [b.neg(y)])), ctx.in_shape(0))]


@backward("ReduceProd")
def reduce_prod(ctx, gy):
    """dy/dx_i = product of the others, exact with zeros: prod(nonzero) / x_i where no x is 0, prod(nonzero) at the
    single zero where exactly one is, 0 elsewhere."""
    b = ctx.b
    axes = reduce_axes(ctx)
    if not axes:
        return [gy[0]]
    x = ctx.x(0)
    zero = b.op("Equal", [x, b.f32(0.0)], "is_zero")
    nz = b.mark_divisor(b.where(zero, b.f32(1.0), x, "nonzero"), zero)
    p = b.reduce("ReduceProd", nz, axes, keepdims=1, hint="prod_nonzero")
    count = b.reduce("ReduceSum", b.cast(zero, onnx.TensorProto.FLOAT), axes, keepdims=1, hint="zeros")
    none = b.cast(b.op("Equal", [count, b.f32(0.0)]), onnx.TensorProto.FLOAT)
    one = b.cast(b.op("Equal", [count, b.f32(1.0)]), onnx.TensorProto.FLOAT)
    d = b.where(zero, b.mul(p, one), b.div(b.mul(p, none), nz), "d_prod")
    g, = _keepdims(ctx, axes, gy[0])
    return [b.mul(d, g)]
