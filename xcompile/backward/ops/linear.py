"""Linear layers: Conv, Gemm, MatMul. (LRP rules override exactly these three.)"""
from __future__ import annotations

import numpy as np

from ..table import ALL, backward
from .common import require, spatial_params, transpose_geometry


def conv_input_grad(ctx, g, weight):
    """Adjoint of the node's convolution w.r.t. its input, with `weight` in place of W:
    a ConvTranspose with the same strides/dilations/group and pads chosen to land on the input size."""
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    kernel = list(ctx.g.shape(ctx.node.input[1])[2:]) if ctx.g.is_const(ctx.node.input[1]) else list(ctx.attr("kernel_shape"))
    strides, dil, pb, pe = spatial_params(ctx, in_shape, out_shape, kernel)
    flipped = _stride1_as_conv(ctx, g, weight, in_shape, out_shape, kernel, strides, dil, pb)
    if flipped is not None:
        return flipped
    end_pads, out_pad = [], []
    for i in range(len(kernel)):
        e, o = transpose_geometry(in_shape[2 + i], out_shape[2 + i], kernel[i], strides[i], dil[i], pb[i])
        end_pads.append(e)
        out_pad.append(o)
    return ctx.b.op("ConvTranspose", [g, weight], "conv_transpose", strides=strides, dilations=dil,
                    pads=list(pb) + end_pads, group=ctx.attr("group", 1),
                    output_padding=out_pad if any(out_pad) else None)


def _stride1_as_conv(ctx, g, weight, in_shape, out_shape, kernel, strides, dil, pb):
    """For stride 1 the adjoint is itself a convolution: the spatially flipped kernel, with input and output
    channels swapped inside each group, and pads d(k-1) - p. onnxruntime's CPU Conv is ~1.7x faster than its
    ConvTranspose on depthwise layers (MobileNet, EfficientNet). The flipped kernel is derived in the graph
    (Reshape / Transpose / Slice of the weight), which onnxruntime folds at session creation: the file keeps
    one copy of the weight."""
    if any(s != 1 for s in strides):
        return None
    begin = [d * (k - 1) - p for d, k, p in zip(dil, kernel, pb)]
    end = [i - o - b_ + d * (k - 1) for i, o, b_, d, k in zip(in_shape[2:], out_shape[2:], begin, dil, kernel)]
    if any(v < 0 for v in begin + end):
        return None
    grp = ctx.attr("group", 1)
    return ctx.b.op("Conv", [g, flipped_kernel(ctx, weight, grp)], "conv_adjoint",
                    kernel_shape=list(kernel), dilations=list(dil), pads=begin + end, group=grp)


def flipped_kernel(ctx, weight, grp: int) -> str:
    """[C_out, C_in/g, k..] -> [C_in, C_out/g, k..] with the spatial axes reversed, as graph nodes on `weight`."""
    b = ctx.b
    v = b.value_of(weight)
    shape = tuple(v.shape) if v is not None else tuple(ctx.g.shape(ctx.node.input[1]))
    cout, cin_g, ks = shape[0], shape[1], list(shape[2:])
    w = weight
    if grp == 1:
        w = b.transpose(w, [1, 0] + list(range(2, 2 + len(ks))), "w_t")
    elif cin_g != 1 or cout != grp:  # grouped: swap the channel axes inside each group
        w = b.reshape(w, [grp, cout // grp, cin_g] + ks, "w_groups")
        w = b.transpose(w, [0, 2, 1] + list(range(3, 3 + len(ks))), "w_groups_t")
        w = b.reshape(w, [grp * cin_g, cout // grp] + ks, "w_t")
    if all(k == 1 for k in ks):
        return w
    n = len(ks)
    return b.slice(w, [-1] * n, [np.iinfo(np.int64).min] * n, list(range(2, 2 + n)), [-1] * n, "w_flipped")


@backward("Conv", inputs=(0, 1))
def conv(ctx, gy):
    require(not ctx.needs(1), ctx, "a convolution weight computed from the input")
    return [conv_input_grad(ctx, gy[0], ctx.x(1)), None, None]


@backward("Gemm", inputs=(0, 1, 2))
def gemm(ctx, gy):
    g, b = gy[0], ctx.b
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    A, B = ctx.x(0), ctx.x(1)
    out = [None, None, None]
    if ctx.needs(0):
        out[0] = (b.op("Gemm", [B, g], "dA", alpha=alpha, transA=tb, transB=1) if ta
                  else b.op("Gemm", [g, B], "dA", alpha=alpha, transB=0 if tb else 1))
    if ctx.needs(1):
        out[1] = (b.op("Gemm", [g, A], "dB", alpha=alpha, transA=1, transB=ta) if tb
                  else b.op("Gemm", [A, g], "dB", alpha=alpha, transA=0 if ta else 1))
    if len(ctx.node.input) > 2 and ctx.needs(2):
        gc = b.mul(g, b.f32(beta)) if beta != 1.0 else g
        out[2] = ctx.unbroadcast(gc, ctx.out_shape(0), ctx.in_shape(2))
    return out


def _swap_last(b, t, rank):
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return b.transpose(t, perm)


@backward("MatMul", inputs=(0, 1))
def matmul(ctx, gy):
    g, b = gy[0], ctx.b
    sa, sb, so = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    A, B = ctx.x(0), ctx.x(1)
    out = [None, None]
    # promote 1-D operands the way MatMul does, then undo it on the gradients
    if len(sa) == 1:
        g = b.unsqueeze(g, [len(so) - 1 if len(sb) > 1 else 0])
        A = b.unsqueeze(A, [0])
    if len(sb) == 1:
        g = b.unsqueeze(g, [-1])
        B = b.unsqueeze(B, [1])
    ea = (1, sa[0]) if len(sa) == 1 else tuple(sa)
    eb = (sb[0], 1) if len(sb) == 1 else tuple(sb)
    rank_o = max(len(ea), len(eb))
    if ctx.needs(0):
        if len(eb) == 2 and len(ea) == 2:
            da = b.op("Gemm", [g, B], "dA", transB=1)
        else:
            da = b.op("MatMul", [g, _swap_last(b, B, len(eb))], "dA")
        da_shape = _bshape(ea, eb, rank_o, left=True)
        da = ctx.unbroadcast(da, da_shape, ea) if da_shape != ea else da
        if len(sa) == 1:
            da = ctx.reshape_to(da, sa)
        out[0] = da
    if ctx.needs(1):
        db = b.op("MatMul", [_swap_last(b, A, len(ea)), g], "dB")
        db_shape = _bshape(ea, eb, rank_o, left=False)
        db = ctx.unbroadcast(db, db_shape, eb) if db_shape != eb else db
        if len(sb) == 1:
            db = ctx.reshape_to(db, sb)
        out[1] = db
    return out


def _bshape(ea, eb, rank, left):
    """Shape of the raw (un-reduced) gradient of one MatMul operand: broadcast batch dims + its matrix dims."""
    pa = (1,) * (rank - len(ea)) + tuple(ea)
    pb = (1,) * (rank - len(eb)) + tuple(eb)
    batch = tuple(None if (x is None or y is None) else max(x, y) for x, y in zip(pa[:-2], pb[:-2]))
    return batch + (pa[-2:] if left else pb[-2:])


def _einsum_terms(ctx):
    eq = ctx.attr("equation")
    eq = eq.replace(" ", "")
    require("." not in eq, ctx, "Einsum with an ellipsis ('...')")
    lhs, _, out = eq.partition("->")
    ins = lhs.split(",")
    if "->" not in eq:  # implicit output: the letters used once, in alphabetical order
        letters = "".join(ins)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    require(all(len(set(s)) == len(s) for s in ins), ctx, "Einsum with a repeated index in one operand (a diagonal)")
    return ins, out


@backward("Einsum", inputs=ALL)
def einsum(ctx, gy):
    """d/dA_k of einsum(A_1..A_n -> out) = einsum(gy, the other operands -> subscripts of A_k); letters summed
    inside A_k alone are broadcast back (Unsqueeze + Expand to A_k's shape)."""
    b = ctx.b
    ins, out = _einsum_terms(ctx)
    grads = []
    for k, sub in enumerate(ins):
        if not ctx.needs(k):
            grads.append(None)
            continue
        others = [(s, ctx.x(j)) for j, s in enumerate(ins) if j != k]
        seen = set(out).union(*[set(s) for s, _ in others])
        kept = "".join(c for c in sub if c in seen)
        eq = ",".join([out] + [s for s, _ in others]) + "->" + kept
        g = b.op("Einsum", [gy[0]] + [t for _, t in others], "dEinsum", equation=eq)
        if kept != sub:
            g = b.unsqueeze(g, [i for i, c in enumerate(sub) if c not in seen])
            g = b.op("Expand", [g, b.op("Shape", [ctx.x(k)], "shape")], "broadcast")
        grads.append(g)
    return grads


@backward("ConvTranspose", inputs=(0, 1))
def conv_transpose(ctx, gy):
    """Adjoint of a transposed convolution w.r.t. its input: the Conv with the same weight [C_in, C_out/group, k..],
    strides, dilations, group and pads (measured shapes resolve output_shape / auto_pad / output_padding)."""
    require(not ctx.needs(1), ctx, "a transposed-convolution weight computed from the input")
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    w_shape = ctx.g.shape(ctx.node.input[1])
    n = len(in_shape) - 2
    kernel = list(w_shape[2:]) if w_shape is not None else list(ctx.attr("kernel_shape"))
    strides = list(ctx.attr("strides", [1] * n))
    dil = list(ctx.attr("dilations", [1] * n))
    opad = list(ctx.attr("output_padding", [0] * n))
    auto = ctx.attr("auto_pad", "NOTSET")
    pads = ctx.attr("pads")
    if pads is not None and ctx.attr("output_shape") is None and auto in ("NOTSET", "", None):
        pb, pe = list(pads[:n]), list(pads[n:])
    else:  # ONNX: total = s (in - 1) + output_padding + (k - 1) d + 1 - out, split by auto_pad
        pb, pe = [], []
        for i in range(n):
            total = strides[i] * (in_shape[2 + i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - out_shape[2 + i]
            half = total // 2
            pb.append(half if auto == "SAME_UPPER" else total - half)
            pe.append(total - half if auto == "SAME_UPPER" else half)
    return [ctx.b.op("Conv", [gy[0], ctx.x(1)], "conv", kernel_shape=kernel, strides=strides, dilations=dil,
                     pads=pb + pe, group=ctx.attr("group", 1)), None, None]
