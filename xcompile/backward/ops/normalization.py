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


def normalization_vjp(b, x: str, gh: str, axes, eps: float, hold_std: bool = False) -> str:
    """The one VJP of xhat = (x - mean(x)) / sqrt(var(x) + eps) over `axes`, applied to gh (the output gradient
    already multiplied by the scale): inv_std * (gh - mean(gh) - xhat * mean(gh * xhat)). ``hold_std`` treats the
    standard deviation as a constant (AttnLRP's LayerNorm): inv_std * (gh - mean(gh))."""
    mu = b.reduce("ReduceMean", x, axes, keepdims=1, hint="mean")
    xc = b.sub(x, mu, "centered")
    var = b.reduce("ReduceMean", b.mul(xc, xc), axes, keepdims=1, hint="var")
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.add(var, b.f32(eps))])], "inv_std")
    m1 = b.reduce("ReduceMean", gh, axes, keepdims=1)
    if hold_std:
        return b.mul(inv, b.sub(gh, m1), "vjp")
    xhat = b.mul(xc, inv)
    m2 = b.reduce("ReduceMean", b.mul(gh, xhat), axes, keepdims=1)
    return b.mul(inv, b.sub(b.sub(gh, m1), b.mul(xhat, m2)))


@backward("LayerNormalization", inputs=(0,))
def layernorm(ctx, gy):
    rank = len(ctx.in_shape(0))
    axes = list(range(ctx.attr("axis", -1) % rank, rank))
    gh = ctx.b.mul(gy[0], ctx.x(1))
    return [normalization_vjp(ctx.b, ctx.x(0), gh, axes, ctx.attr("epsilon", 1e-5)), None, None]


@backward("InstanceNormalization", inputs=(0,))
def instancenorm(ctx, gy):
    rank = len(ctx.in_shape(0))
    scale = ctx.const(1)
    require(scale is not None, ctx, "InstanceNormalization with a non-constant scale")
    gh = ctx.b.mul(gy[0], ctx.b.const(scale.reshape([-1] + [1] * (rank - 2)).astype(np.float32), hint="in_scale"))
    return [normalization_vjp(ctx.b, ctx.x(0), gh, list(range(2, rank)), ctx.attr("epsilon", 1e-5)), None, None]
