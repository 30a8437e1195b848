"""Elementwise arithmetic with numpy broadcasting (constant or activation operands)."""
from __future__ import annotations

import numpy as np

from ..table import ALL, backward


def _to(ctx, k, g):
    """Reduce a gradient with the output's shape onto input k's shape."""
    return ctx.unbroadcast(g, ctx.out_shape(0), ctx.in_shape(k))


@backward("Add", "Sum", inputs=ALL)
def add(ctx, gy):
    return [_to(ctx, k, gy[0]) if ctx.needs(k) else None for k in range(len(ctx.node.input))]


@backward("Sub", inputs=(0, 1))
def sub(ctx, gy):
    b = ctx.b
    return [_to(ctx, 0, gy[0]) if ctx.needs(0) else None,
            _to(ctx, 1, b.neg(gy[0])) if ctx.needs(1) else None]


@backward("Mul", inputs=(0, 1))
def mul(ctx, gy):
    b = ctx.b
    return [_to(ctx, 0, b.mul(gy[0], ctx.x(1))) if ctx.needs(0) else None,
            _to(ctx, 1, b.mul(gy[0], ctx.x(0))) if ctx.needs(1) else None]


@backward("Div", inputs=(0, 1))
def div(ctx, gy):
    b = ctx.b
    out = [None, None]
    if ctx.needs(0):
        out[0] = _to(ctx, 0, b.div(gy[0], ctx.x(1)))
    if ctx.needs(1):  # d(a/c)/dc = -y/c
        out[1] = _to(ctx, 1, b.neg(b.div(b.mul(gy[0], ctx.y()), ctx.x(1))))
    return out


@backward("Neg")
def neg(ctx, gy):
    return [ctx.b.neg(gy[0])]


@backward("Identity", "Dropout")
def identity(ctx, gy):
    return [gy[0]]


@backward("Cast")
def cast(ctx, gy):
    return [gy[0]]


@backward("Sqrt")
def sqrt(ctx, gy):
    b = ctx.b
    return [b.div(gy[0], b.mul(ctx.y(), b.f32(2.0)))]


@backward("Exp")
def exp(ctx, gy):
    return [ctx.b.mul(gy[0], ctx.y())]


@backward("Log")
def log(ctx, gy):
    return [ctx.b.div(gy[0], ctx.x(0))]


@backward("Reciprocal")
def reciprocal(ctx, gy):
    b = ctx.b
    return [b.neg(b.mul(gy[0], b.mul(ctx.y(), ctx.y())))]


@backward("Abs")
def abs_(ctx, gy):
    return [ctx.b.mul(gy[0], ctx.b.op("Sign", [ctx.x(0)]))]


@backward("Pow", inputs=(0, 1))
def pow_(ctx, gy):
    b = ctx.b
    p = ctx.const(1)
    out = [None, None]
    if ctx.needs(0):
        if p is not None and np.size(p) == 1:
            p = float(np.asarray(p).ravel()[0])
            d = b.mul(ctx.x(0), b.f32(2.0)) if p == 2.0 else b.mul(b.op("Pow", [ctx.x(0), b.f32(p - 1.0)]), b.f32(p))
        else:  # p * x^(p-1)
            d = b.mul(b.op("Pow", [ctx.x(0), b.sub(ctx.x(1), b.f32(1.0))]), ctx.x(1))
        out[0] = _to(ctx, 0, b.mul(gy[0], d))
    if ctx.needs(1):  # y * log(x)
        out[1] = _to(ctx, 1, b.mul(gy[0], b.mul(ctx.y(), b.op("Log", [ctx.x(0)]))))
    return out


@backward("Where", inputs=(1, 2))
def where(ctx, gy):
    b = ctx.b
    zero = b.f32(0.0)
    return [None,
            _to(ctx, 1, b.where(ctx.x(0), gy[0], zero)) if ctx.needs(1) else None,
            _to(ctx, 2, b.where(ctx.x(0), zero, gy[0])) if ctx.needs(2) else None]


@backward("Max", "Min", inputs=ALL)
def max_min(ctx, gy):
    # the gradient goes to the operand that equals the result (ties: each tied operand gets it, as numpy would pick)
    b = ctx.b
    out = []
    for k in range(len(ctx.node.input)):
        if not ctx.needs(k):
            out.append(None)
            continue
        mask = b.op("Equal", [ctx.x(k), ctx.y()])
        out.append(_to(ctx, k, b.where(mask, gy[0], b.f32(0.0))))
    return out


@backward("Mean", inputs=ALL)
def mean(ctx, gy):
    g = ctx.b.mul(gy[0], ctx.b.f32(1.0 / len(ctx.node.input)))
    return [_to(ctx, k, g) if ctx.needs(k) else None for k in range(len(ctx.node.input))]
