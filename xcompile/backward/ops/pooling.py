"""Pooling (and LRN, a window op). MaxPool routes to the forward switches (its Indices output, exposed by the
canonicalizer) with ScatterElements; AveragePool is the adjoint ConvTranspose of a box filter."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ...graph import attrs as attrs_of
from ...sessions import session
from ..table import backward
from .common import expand_back, require, spatial_params, transpose_geometry


def scatter_to_switches(ctx, g, indices, x_shape):
    """Route g (pooled shape) to the input positions named by MaxPool's flat indices."""
    b = ctx.b
    zeros = b.reshape(b.zeros_like(ctx.x(0)), [-1])
    flat = b.op("ScatterElements", [zeros, b.reshape(indices, [-1]), b.reshape(g, [-1])], "route",
                axis=0, reduction="add")
    return ctx.reshape_to(flat, x_shape)


@backward("MaxPool")
def maxpool(ctx, gy):
    require(len(ctx.node.output) > 1 and ctx.node.output[1], ctx, "MaxPool without its Indices output")
    require(ctx.attr("storage_order", 0) == 0, ctx, "storage_order=1")
    return [scatter_to_switches(ctx, gy[0], ctx.y(1), ctx.in_shape(0))]


@backward("GlobalMaxPool")
def global_maxpool(ctx, gy):
    b = ctx.b
    spatial = list(ctx.in_shape(0)[2:])
    _, idx = b.op("MaxPool", [ctx.x(0)], "switches", n_out=2, kernel_shape=spatial)
    return [scatter_to_switches(ctx, gy[0], idx, ctx.in_shape(0))]


def _avgpool_inverse_divisor(ctx, in_shape, out_shape, kernel, strides, pb, pe):
    """1/divisor per output position, measured with onnxruntime's own AveragePool on a ones image
    (avg of ones = n_valid / divisor), so count_include_pad and ceil_mode behave exactly as forward."""
    spatial = list(in_shape[2:])
    attrs = attrs_of(ctx.node)
    attrs.pop("auto_pad", None)
    attrs["pads"] = list(pb) + list(pe)
    node = helper.make_node("AveragePool", ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "avg", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1] + spatial)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.g.opset)], ir_version=8)
    sess = session(model)
    avg = sess.run(None, {"x": np.ones([1, 1] + spatial, np.float32)})[0][0, 0]
    n_valid = np.ones(avg.shape, np.float64)
    for i, (size, k, s, p) in enumerate(zip(spatial, kernel, strides, pb)):
        start = np.arange(avg.shape[i]) * s - p
        count = np.clip(np.minimum(start + k, size) - np.maximum(start, 0), 0, None)
        shape = [1] * avg.ndim
        shape[i] = -1
        n_valid = n_valid * count.reshape(shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(n_valid > 0, avg / n_valid, 0.0)
    return inv.astype(np.float32)


def box_adjoint(ctx, g, scale=None):
    """Adjoint of the node's (Average)Pool window sum, each window's value spread over its inputs."""
    b = ctx.b
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    kernel = list(ctx.attr("kernel_shape"))
    require(all(d == 1 for d in ctx.attr("dilations", [1] * len(kernel))), ctx, "dilated AveragePool")
    strides, _, pb, pe = spatial_params(ctx, in_shape, out_shape, kernel)
    if scale is not None:
        g = b.mul(g, b.const(scale[None, None], hint="inv_divisor"))
    channels = in_shape[1]
    end_pads, out_pad = [], []
    for i in range(len(kernel)):
        e, o = transpose_geometry(in_shape[2 + i], out_shape[2 + i], kernel[i], strides[i], 1, pb[i])
        end_pads.append(e)
        out_pad.append(o)
    ones = b.const(np.ones([channels, 1] + kernel, np.float32), hint="box")
    return b.op("ConvTranspose", [g, ones], "spread", strides=strides, pads=list(pb) + end_pads,
                group=channels, output_padding=out_pad if any(out_pad) else None)


@backward("AveragePool")
def avgpool(ctx, gy):
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    kernel = list(ctx.attr("kernel_shape"))
    strides, _, pb, pe = spatial_params(ctx, in_shape, out_shape, kernel)
    inv = _avgpool_inverse_divisor(ctx, in_shape, out_shape, kernel, strides, pb, pe)
    return [box_adjoint(ctx, gy[0], inv)]


@backward("GlobalAveragePool")
def global_avgpool(ctx, gy):
    in_shape = ctx.in_shape(0)
    n = int(np.prod(in_shape[2:]))
    return [expand_back(ctx, ctx.b.mul(gy[0], ctx.b.f32(1.0 / n)), in_shape)]


@backward("LRN")
def lrn(ctx, gy):
    """y = x d^-beta, d = bias + alpha/size * (sum of x^2 over a channel window): dx = g d^-beta
    - 2 alpha beta / size * x * (window^T sum of g x d^(-beta-1)). Window sums are a ones-kernel Conv along channels
    on the [N, 1, C, H*W] view (the transposed window: the pads swapped)."""
    b = ctx.b
    in_shape = ctx.in_shape(0)
    size, alpha = int(ctx.attr("size")), ctx.attr("alpha", 1e-4)
    beta, bias = ctx.attr("beta", 0.75), ctx.attr("bias", 1.0)
    c = int(in_shape[1])
    hw = int(np.prod(in_shape[2:], dtype=np.int64)) if len(in_shape) > 2 else 1
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    ones = b.const(np.ones((1, 1, size, 1), np.float32), hint="window")

    def window(t, before, after):
        v = ctx.reshape_to(t, (None, 1, c, hw))
        s = b.op("Conv", [v, ones], "window_sum", kernel_shape=[size, 1], pads=[before, 0, after, 0])
        return ctx.reshape_to(s, in_shape)

    x, g = ctx.x(0), gy[0]
    d = b.add(b.mul(window(b.mul(x, x), lo, hi), b.f32(alpha / size)), b.f32(bias), "d")
    d_beta = b.op("Pow", [d, b.f32(-beta)], "d_pow")
    t = b.mul(b.mul(g, x), b.div(d_beta, d), "g_x_d")
    back = window(t, hi, lo)
    return [b.sub(b.mul(g, d_beta), b.mul(b.mul(x, back), b.f32(2.0 * alpha * beta / size)))]
