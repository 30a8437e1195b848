"""Movement ops: relevance is routed by position (reshape back, inverse permutation, split, pad...)."""
from __future__ import annotations

import numpy as np
import onnx

from ..table import ALL, backward
from .common import require


@backward("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx, gy):
    return [ctx.reshape_to(gy[0], ctx.in_shape(0))]


@backward("Transpose")
def transpose(ctx, gy):
    rank = len(ctx.in_shape(0))
    perm = ctx.attr("perm", list(reversed(range(rank))))
    inv = list(np.argsort(perm))
    return [ctx.b.transpose(gy[0], inv)]


@backward("Concat", inputs=ALL)
def concat(ctx, gy):
    rank = len(ctx.out_shape(0))
    axis = ctx.attr("axis") % rank
    sizes = [ctx.in_shape(k)[axis] for k in range(len(ctx.node.input))]
    require(None not in sizes, ctx, "Concat along the batch axis")
    parts = ctx.b.split(gy[0], sizes, axis)
    return [p if ctx.needs(k) else None for k, p in enumerate(parts)]


@backward("Split")
def split(ctx, gy):
    rank = len(ctx.in_shape(0))
    axis = ctx.attr("axis", 0) % rank
    parts = [g if g is not None else ctx.b.zeros_like(ctx.y(k)) for k, g in enumerate(gy)]
    return [ctx.b.op("Concat", parts, "join", axis=axis)]


def _slice_params(ctx):
    rank = len(ctx.in_shape(0))
    if ctx.attr("starts") is not None:  # opset < 10
        starts, ends = ctx.attr("starts"), ctx.attr("ends")
        axes = ctx.attr("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        vals = [ctx.const(k) for k in range(1, len(ctx.node.input))]
        require(all(v is not None for k, v in enumerate(vals) if ctx.node.input[k + 1]), ctx, "Slice bounds computed at run time")
        starts, ends = vals[0].tolist(), vals[1].tolist()
        axes = vals[2].tolist() if len(vals) > 2 and ctx.node.input[3] else list(range(len(starts)))
        steps = vals[3].tolist() if len(vals) > 3 and ctx.node.input[4] else [1] * len(starts)
    return [(int(a) % rank, int(s), int(e), int(st)) for a, s, e, st in zip(axes, starts, ends, steps)]


@backward("Slice", inputs=(0,))
def slice_(ctx, gy):
    b, g = ctx.b, gy[0]
    in_shape = list(ctx.in_shape(0))
    cur = list(ctx.out_shape(0))
    for axis, start, end, step in _slice_params(ctx):
        dim = in_shape[axis]
        if dim is None and step == 1 and start == 0 and end >= 2 ** 31 - 1:
            continue  # the whole batch axis (tf2onnx writes [0:INT_MAX] on every axis of a strided_slice)
        require(dim is not None, ctx, "Slice along the batch axis")
        idx = np.arange(dim)[slice(start, end, step)]
        if len(idx) == dim and step == 1:
            continue
        if step < 0:
            g = b.slice(g, [-1], [-(2 ** 62)], [axis], [-1], "reverse")
            idx = idx[::-1]
            step = -step
        n = len(idx)
        if n == 0:
            return [b.zeros_like(ctx.x(0))]
        if step > 1:  # interleave step-1 zeros after each element, then trim the tail
            g = b.unsqueeze(g, [axis + 1])
            pads = [0] * (2 * (len(cur) + 1))
            pads[len(cur) + 1 + axis + 1] = step - 1
            g = b.pad(g, pads)
            cur[axis] = n * step
            g = ctx.reshape_to(g, tuple(cur))
            keep = (n - 1) * step + 1
            g = b.slice(g, [0], [keep], [axis])
            cur[axis] = keep
        pads = [0] * (2 * len(cur))
        pads[axis] = int(idx[0])
        pads[len(cur) + axis] = dim - int(idx[0]) - cur[axis]
        g = b.pad(g, pads)
        cur[axis] = dim
    return [g]


def _pad_amounts(ctx):
    """[begin_0, .., begin_r-1, end_0, .., end_r-1] over every axis (the `axes` input of opset 18 resolved)."""
    rank = len(ctx.in_shape(0))
    pads = ctx.attr("pads")
    if pads is None:
        pads = ctx.const(1)
        require(pads is not None, ctx, "pads computed at run time")
        pads = pads.tolist()
    axes = list(range(rank))
    if len(ctx.node.input) > 3 and ctx.node.input[3]:
        axes = [int(a) % rank for a in ctx.const(3).tolist()]
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[rank + a] = int(pads[i]), int(pads[len(axes) + i])
    return full


@backward("Pad", inputs=(0,))
def pad(ctx, gy):
    mode = ctx.attr("mode", "constant")
    require(mode in ("constant", "reflect", "edge", "wrap"), ctx, f"Pad mode {mode!r}")
    full = _pad_amounts(ctx)
    if mode != "constant":
        return [_pad_copies_adjoint(ctx, gy[0], full, mode)]
    b = ctx.b
    rank = len(ctx.in_shape(0))
    g = gy[0]
    out_shape = ctx.out_shape(0)
    starts, ends, sl_axes = [], [], []
    undo = [0] * (2 * rank)
    for a in range(rank):
        p0, p1 = full[a], full[rank + a]
        if p0 > 0 or p1 > 0:
            require(out_shape[a] is not None, ctx, "padding the batch axis")
            starts.append(max(p0, 0)); ends.append(out_shape[a] - max(p1, 0)); sl_axes.append(a)
        undo[a], undo[rank + a] = max(-p0, 0), max(-p1, 0)
    if sl_axes:
        g = b.slice(g, starts, ends, sl_axes, hint="unpad")
    return [b.pad(g, undo)]


def _pad_copies_adjoint(ctx, g, full, mode):
    """reflect / edge / wrap padding copies input positions: per padded axis, output position o reads input
    src(o) (numpy's np.pad of the index range, same modes; negative pads crop). The adjoint sums the gradient of
    the copies back: a MatMul with the one-hot [out, in] matrix of src along that axis."""
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    for a in range(rank):
        p0, p1 = full[a], full[rank + a]
        if p0 == 0 and p1 == 0:
            continue
        dim = in_shape[a]
        require(dim is not None, ctx, "padding the batch axis")
        src = np.pad(np.arange(dim), (max(p0, 0), max(p1, 0)), mode=mode)
        src = src[max(-p0, 0):len(src) - max(-p1, 0)]
        m = np.zeros((len(src), dim), np.float32)
        np.add.at(m, (np.arange(len(src)), src), 1.0)
        g = _matmul_along(ctx, g, m, a, rank)
    return g


def _matmul_along(ctx, g, m, axis, rank):
    """g with its `axis` (length m.shape[0]) mapped through the constant [out, in] matrix m."""
    b = ctx.b
    if axis == rank - 1:
        return b.op("MatMul", [g, b.const(m, hint="copies")], "gather_copies")
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    return b.transpose(b.op("MatMul", [b.transpose(g, perm), b.const(m, hint="copies")], "gather_copies"), perm)


@backward("Expand", inputs=(0,))
def expand(ctx, gy):
    return [ctx.unbroadcast(gy[0], ctx.out_shape(0), ctx.in_shape(0))]


@backward("Tile", inputs=(0,))
def tile(ctx, gy):
    b = ctx.b
    reps = ctx.const(1)
    require(reps is not None, ctx, "Tile repeats computed at run time")
    in_shape = ctx.in_shape(0)
    split_shape, axes = [], []
    for i, (r, d) in enumerate(zip(reps.tolist(), in_shape)):
        require(d is not None or r == 1, ctx, "tiling the batch axis")
        split_shape += [int(r), d]
        axes.append(2 * i)
    g = ctx.reshape_to(gy[0], tuple(split_shape))
    g = b.reduce("ReduceSum", g, axes, keepdims=0)
    return [g, None]


def _resize_matrix(ctx, axis_in: int, axis_out: int, rank: int) -> np.ndarray:
    """[out, in] matrix of this Resize along one axis, measured with onnxruntime's own Resize on the
    basis vectors (so every mode / coordinate_transformation_mode behaves exactly as in the forward)."""
    from onnx import helper

    from ...graph import attrs as attrs_of
    from ...sessions import session

    attrs = {k: v for k, v in attrs_of(ctx.node).items() if k not in ("axes", "keep_aspect_ratio_policy")}
    scales = np.ones(rank, np.float32)
    scales[-1] = axis_out / axis_in
    x_shape = [axis_in] + [1] * (rank - 2) + [axis_in]
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              initializer=[onnx.numpy_helper.from_array(scales, "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(ctx.g.opset, 13))], ir_version=8)
    sess = session(model)
    basis = np.eye(axis_in, dtype=np.float32).reshape(x_shape)
    y = sess.run(None, {"x": basis})[0].reshape(axis_in, -1)  # row i: the image of e_i
    require(y.shape[1] == axis_out, ctx, "Resize whose output size differs from in*scale")
    return y.T.copy()  # [out, in]


@backward("Resize", "Upsample", inputs=(0,))
def resize(ctx, gy):
    """Resize is linear and separable: per resized axis, multiply by the transposed interpolation matrix."""
    b, g = ctx.b, gy[0]
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    rank = len(in_shape)
    for axis in range(rank):
        if in_shape[axis] == out_shape[axis]:
            continue
        require(in_shape[axis] is not None, ctx, "Resize of the batch axis")
        m = _resize_matrix(ctx, in_shape[axis], out_shape[axis], rank)  # [out, in]
        if axis == rank - 1:
            g = b.op("MatMul", [g, b.const(m, hint="resize_matrix")], "unresize")
        else:
            perm = list(range(rank))
            perm[axis], perm[-1] = perm[-1], perm[axis]
            g = b.transpose(b.op("MatMul", [b.transpose(g, perm), b.const(m, hint="resize_matrix")], "unresize"), perm)
    return [g] + [None] * (len(ctx.node.input) - 1)


@backward("DepthToSpace", "SpaceToDepth")
def depth_space(ctx, gy):
    """Both are a reshape to 6-D, a transpose, a reshape: the gradient takes the way back."""
    in_shape = ctx.in_shape(0)
    bs = int(ctx.attr("blocksize"))
    _, c, h, w = in_shape
    if ctx.op_type == "SpaceToDepth":
        six, perm = (None, c, h // bs, bs, w // bs, bs), [0, 3, 5, 1, 2, 4]
    elif ctx.attr("mode", "DCR") == "CRD":
        six, perm = (None, c // (bs * bs), bs, bs, h, w), [0, 1, 4, 2, 5, 3]
    else:
        six, perm = (None, bs, bs, c // (bs * bs), h, w), [0, 3, 4, 1, 5, 2]
    g = ctx.reshape_to(gy[0], tuple(six[p] for p in perm))
    g = ctx.b.transpose(g, list(np.argsort(perm)))
    return [ctx.reshape_to(g, in_shape)]
