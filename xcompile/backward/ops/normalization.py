"""Normalisation layers (inference mode)."""
from __future__ import annotations

import numpy as np

from ..table import backward
from .common import require


@backward("BatchNormalization", inputs=(0,))
def batchnorm(ctx, gy):
    # an unfolded BatchNorm is a per-channel affine map: scale / sqrt(var + eps)
    vals = [ctx.const(k) for k in range(1, 5)]
    require(all(v is not None for v in vals), ctx, "BatchNormalization with non-constant statistics")
    scale, _, _, var = vals
    k = scale / np.sqrt(var + ctx.attr("epsilon", 1e-5))
    rank = len(ctx.in_shape(0))
    k = k.reshape([-1] + [1] * (rank - 2)).astype(np.float32)
    return [ctx.b.mul(gy[0], ctx.b.const(k, hint="bn_scale"))] + [None] * 4


@backward("LayerNormalization", inputs=(0,))
def layernorm(ctx, gy):
    b = ctx.b
    rank = len(ctx.in_shape(0))
    axis = ctx.attr("axis", -1) % rank
    eps = ctx.attr("epsilon", 1e-5)
    axes = list(range(axis, rank))
    x = ctx.x(0)
    mu = b.reduce("ReduceMean", x, axes, keepdims=1, hint="mean")
    xc = b.sub(x, mu)
    var = b.reduce("ReduceMean", b.mul(xc, xc), axes, keepdims=1, hint="var")
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.add(var, b.f32(eps))])], "inv_std")
    xhat = b.mul(xc, inv)
    gh = b.mul(gy[0], ctx.x(1))
    m1 = b.reduce("ReduceMean", gh, axes, keepdims=1)
    m2 = b.reduce("ReduceMean", b.mul(gh, xhat), axes, keepdims=1)
    dx = b.mul(inv, b.sub(b.sub(gh, m1), b.mul(xhat, m2)))
    return [dx, None, None]


@backward("InstanceNormalization", inputs=(0,))
def instancenorm(ctx, gy):
    b = ctx.b
    rank = len(ctx.in_shape(0))
    eps = ctx.attr("epsilon", 1e-5)
    axes = list(range(2, rank))
    x = ctx.x(0)
    mu = b.reduce("ReduceMean", x, axes, keepdims=1, hint="mean")
    xc = b.sub(x, mu)
    var = b.reduce("ReduceMean", b.mul(xc, xc), axes, keepdims=1, hint="var")
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.add(var, b.f32(eps))])], "inv_std")
    xhat = b.mul(xc, inv)
    scale = ctx.const(1)
    require(scale is not None, ctx, "InstanceNormalization with a non-constant scale")
    gh = b.mul(gy[0], b.const(scale.reshape([-1] + [1] * (rank - 2)).astype(np.float32), hint="in_scale"))
    m1 = b.reduce("ReduceMean", gh, axes, keepdims=1)
    m2 = b.reduce("ReduceMean", b.mul(gh, xhat), axes, keepdims=1)
    return [b.mul(inv, b.sub(b.sub(gh, m1), b.mul(xhat, m2))), None, None]
