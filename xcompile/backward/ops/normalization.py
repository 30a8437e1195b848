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


@backward("GroupNormalization", inputs=(0,))
def groupnorm(ctx, gy):
    """x [N, C, ...] normalised per (row, group of C/G channels). The scale is per group (opset 18) or per channel
    (opset 21), told apart by its length; the VJP runs on the grouped view [N, G, C/G * spatial]."""
    b = ctx.b
    in_shape = ctx.in_shape(0)
    require(len(in_shape) >= 2 and all(d is not None for d in in_shape[1:]), ctx, "GroupNormalization of this shape")
    c, groups = int(in_shape[1]), int(ctx.attr("num_groups"))
    spatial = int(np.prod(in_shape[2:], dtype=np.int64)) if len(in_shape) > 2 else 1
    per = c // groups
    scale_len = ctx.g.shape(ctx.node.input[1])[0]
    g4 = ctx.reshape_to(gy[0], (None, groups, per, spatial))
    scale = b.reshape(ctx.x(1), [groups, 1, 1] if scale_len == groups and groups != c else [groups, per, 1])
    gh = ctx.reshape_to(b.mul(g4, scale), (None, groups, per * spatial))
    x3 = ctx.reshape_to(ctx.x(0), (None, groups, per * spatial))
    gx = normalization_vjp(b, x3, gh, [2], ctx.attr("epsilon", 1e-5))
    return [ctx.reshape_to(gx, in_shape), None, None]


@backward("MeanVarianceNormalization")
def mean_variance_normalization(ctx, gy):
    # y = (x - mean) / (std + 1e-9) over `axes` (default [0, 2, 3]: the batch axis too, as ONNX defines it)
    rank = len(ctx.in_shape(0))
    axes = sorted(int(a) % rank for a in ctx.attr("axes", [0, 2, 3]))
    return [normalization_vjp(ctx.b, ctx.x(0), gy[0], axes, 0.0)]


@backward("LpNormalization")
def lp_normalization(ctx, gy):
    """y = x / ||x||_p along `axis` (p = 1 or 2): dx = (g - dn/dx * sum(g * y)) / n, dn/dx = y (p = 2), sign(x) (p = 1)."""
    b = ctx.b
    rank = len(ctx.in_shape(0))
    axis = ctx.attr("axis", -1) % rank
    p = ctx.attr("p", 2)
    require(p in (1, 2), ctx, f"LpNormalization with p={p}")
    x, y, g = ctx.x(0), ctx.y(), gy[0]
    n = b.reduce("ReduceL2" if p == 2 else "ReduceL1", x, [axis], keepdims=1, hint="norm")
    dn = y if p == 2 else b.op("Sign", [x])
    s = b.reduce("ReduceSum", b.mul(g, y), [axis], keepdims=1)
    return [b.div(b.sub(g, b.mul(dn, s)), n)]
