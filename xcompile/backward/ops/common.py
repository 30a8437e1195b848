"""Helpers shared by the emitters: attribute normalisation for convolution-like ops."""
from __future__ import annotations

import math

from ...errors import UnsupportedNodeError


def spatial_params(ctx, in_shape, out_shape, kernel):
    """(strides, dilations, pads_begin, pads_end) with auto_pad resolved from measured shapes."""
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dil = list(ctx.attr("dilations", [1] * n))
    auto = ctx.attr("auto_pad", "NOTSET")
    spatial_in = in_shape[2:]
    if auto in ("NOTSET", "", None):
        pads = list(ctx.attr("pads", [0] * (2 * n)))
        return strides, dil, pads[:n], pads[n:]
    if auto == "VALID":
        return strides, dil, [0] * n, [0] * n
    begin, end = [], []
    for i in range(n):
        out = math.ceil(spatial_in[i] / strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial_in[i])
        small, big = total // 2, total - total // 2
        if auto == "SAME_UPPER":
            begin.append(small); end.append(big)
        else:
            begin.append(big); end.append(small)
    return strides, dil, begin, end


def transpose_geometry(size_in, size_out, k, s, d, pad_begin):
    """Pads/output_padding for a ConvTranspose that maps `size_out` back onto exactly `size_in`."""
    full = (size_out - 1) * s + (k - 1) * d + 1 - pad_begin
    end = full - size_in
    if end >= 0:
        return end, 0
    return 0, -end


def require(cond, ctx, what):
    if not cond:
        raise UnsupportedNodeError(ctx.node.name or ctx.node.output[0], ctx.op_type, what)


def expand_back(ctx, g, in_shape):
    """g (reduced over some axes, kept as size 1) broadcast back to the input's shape (batch: -1 kept as 1)."""
    shape = [1 if d is None else int(d) for d in in_shape]
    return ctx.b.op("Expand", [g, ctx.b.i64(shape)], "expand")
