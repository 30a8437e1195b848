"""Indexing and triangular/cumulative maps: Gather (constant indices: a one-hot MatMul; run-time ones: ScatterND),
GatherElements / GatherND / ScatterND / ScatterElements (as ops of the model), Col2Im (its adjoint is an
Im2Col, emitted as a Gather with constant indices so it runs on the CUDA EP), CumSum, Trilu. All linear in the
relevance-carrying input: each backward is the adjoint map."""
from __future__ import annotations

import numpy as np
import onnx

from ..table import backward
from .common import require


@backward("CumSum", inputs=(0,))
def cumsum(ctx, gy):
    # the adjoint of a (reverse) cumulative sum is the cumulative sum the other way, with the same exclusivity
    axis = ctx.const(1)
    require(axis is not None, ctx, "CumSum axis computed at run time")
    b = ctx.b
    axis_t = b.const(int(np.asarray(axis).ravel()[0]), dtype=np.int64)
    return [b.op("CumSum", [gy[0], axis_t], "cumsum_adjoint", exclusive=int(ctx.attr("exclusive", 0)),
                 reverse=1 - int(ctx.attr("reverse", 0))), None]


@backward("Trilu", inputs=(0,))
def trilu(ctx, gy):
    # a mask: the same triangle of the gradient
    ins = [gy[0]] + ([ctx.x(1)] if len(ctx.node.input) > 1 and ctx.node.input[1] else [])
    return [ctx.b.op("Trilu", ins, "triangle", upper=int(ctx.attr("upper", 1))), None]


def _int64_indices(ctx, k):
    idx = ctx.x(k)
    c = ctx.const(k)
    if c is not None:
        return ctx.b.const(c.astype(np.int64), dtype=np.int64, hint="indices")
    return idx  # GatherND / ScatterND indices are int64 by the ONNX spec


@backward("Gather", inputs=(0,))
def gather(ctx, gy):
    """Adjoint of gathering with constant indices: a MatMul with the one-hot matrix of the indices
    (exact with repeated indices, constant-shaped, GPU-friendly)."""
    b = ctx.b
    idx = ctx.const(1)
    in_shape = ctx.in_shape(0)
    rank = len(in_shape)
    axis = ctx.attr("axis", 0) % rank
    if idx is None:
        return [_gather_runtime_indices(ctx, gy[0], axis), None]
    dim = in_shape[axis]
    require(dim is not None, ctx, "Gather along the batch axis")
    flat = (idx.astype(np.int64).ravel() % dim)
    onehot = np.zeros((flat.size, dim), np.float32)
    np.add.at(onehot, (np.arange(flat.size), flat), 1.0)
    g_shape = tuple(in_shape[:axis]) + (flat.size,) + tuple(in_shape[axis + 1:])
    g = ctx.reshape_to(gy[0], g_shape)
    if axis == rank - 1:
        return [b.op("MatMul", [g, b.const(onehot, hint="onehot")], "scatter"), None]
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    g = b.transpose(g, perm)
    g = b.op("MatMul", [g, b.const(onehot, hint="onehot")], "scatter")
    return [b.transpose(g, perm), None]


def _gather_runtime_indices(ctx, g, axis):
    """Indices known only at run time (they depend on the batch size, e.g. torch's as_strided over a flattened
    tensor): scatter-add the gradient back with ScatterND. Axis 0 only -- the form exporters write."""
    b = ctx.b
    require(axis == 0, ctx, "Gather along a non-leading axis with indices computed at run time")
    data, idx = ctx.x(0), ctx.x(1)
    dim0 = b.op("Gather", [b.op("Shape", [data], "shape"), b.const(0, dtype=np.int64)], "dim0")
    idx = b.cast(idx, onnx.TensorProto.INT64)
    idx = b.where(b.op("Less", [idx, b.const(0, dtype=np.int64)]), b.op("Add", [idx, dim0]), idx)
    idx = b.unsqueeze(idx, [-1])
    return b.op("ScatterND", [b.zeros_like(data), idx, g], "scatter_add", reduction="add")


@backward("GatherND", inputs=(0,))
def gather_nd(ctx, gy):
    """Adjoint of y = GatherND(x, indices): scatter-add the gradient back onto x's positions (repeated indices add).
    batch_dims > 0: the batch coordinates are prepended to the indices (ScatterND has no batch_dims)."""
    b = ctx.b
    bd = int(ctx.attr("batch_dims", 0))
    idx = _int64_indices(ctx, 1)
    c = ctx.const(1)
    if c is not None and bd == 0:  # negative indices: ScatterND wants them in range
        dims = np.array([d if d is not None else -1 for d in ctx.in_shape(0)[:c.shape[-1]]], np.int64)
        require(not np.any((c < 0) & (dims < 0)), ctx, "GatherND with negative indices into the batch axis")
        idx = b.const(np.where(c < 0, c + dims, c).astype(np.int64), dtype=np.int64, hint="indices")
    if bd > 0:
        idx = _with_batch_coordinates(ctx, idx, bd)
    return [b.op("ScatterND", [b.zeros_like(ctx.x(0)), idx, gy[0]], "scatter_add", reduction="add"), None]


def _with_batch_coordinates(ctx, idx, bd):
    """indices [B_1..B_bd, M.., k] -> [B_1..B_bd, M.., bd + k]: coordinate j of each index tuple is its position
    along batch axis j (run-time shapes: the batch axis is dynamic)."""
    b = ctx.b
    rank = len(ctx.in_shape(1))
    i64 = np.int64
    idx_shape = b.op("Shape", [idx], "indices_shape")
    lead = b.op("Concat", [b.slice(idx_shape, [0], [rank - 1], [0]), b.const([1], dtype=i64)], "coord_shape", axis=0)
    data_shape = b.op("Shape", [ctx.x(0)], "data_shape")
    coords = []
    for j in range(bd):
        dim = b.op("Gather", [data_shape, b.const(j, dtype=i64)], f"dim{j}")
        r = b.op("Range", [b.const(0, dtype=i64), dim, b.const(1, dtype=i64)], f"positions{j}")
        r = b.reshape(r, [1] * j + [-1] + [1] * (rank - 1 - j))
        coords.append(b.op("Expand", [r, lead], f"coord{j}"))
    return b.op("Concat", coords + [idx], "full_indices", axis=-1)


@backward("ScatterND", inputs=(0, 2))
def scatter_nd(ctx, gy):
    """y = ScatterND(data, indices, updates): data's gradient is g with the written positions zeroed (reduction none)
    or g itself (reduction add); the updates' gradient is g gathered at the indices."""
    b, g = ctx.b, gy[0]
    red = ctx.attr("reduction", "none")
    require(red in ("none", "add"), ctx, f"ScatterND reduction {red!r}")
    idx = _int64_indices(ctx, 1)
    out = [None, None, None]
    if ctx.needs(0):
        out[0] = g if red == "add" else b.op("ScatterND", [g, idx, b.zeros_like(ctx.x(2))], "unwritten")
    if ctx.needs(2):
        out[2] = b.op("GatherND", [g, idx], "written")
    return out


def im2col_indices(image, block, dil, pb, pe, strides):
    """[K, L] flat indices into the padded image of every (block offset k, block position l), both row-major (the
    layout Col2Im reads: channel-major C * K rows, L columns); and the padded image shape."""
    padded = [i + a + e for i, a, e in zip(image, pb, pe)]
    n_blocks = [(p - d * (k - 1) - 1) // s + 1 for p, d, k, s in zip(padded, dil, block, strides)]
    k_grid = np.stack(np.meshgrid(*[np.arange(k) for k in block], indexing="ij"), -1).reshape(-1, len(block))
    l_grid = np.stack(np.meshgrid(*[np.arange(n) for n in n_blocks], indexing="ij"), -1).reshape(-1, len(block))
    pos = k_grid[:, None, :] * np.array(dil) + l_grid[None, :, :] * np.array(strides)  # [K, L, dims]
    flat = np.ravel_multi_index(tuple(np.moveaxis(pos, -1, 0)), padded)
    return flat.astype(np.int64), padded


@backward("Col2Im", inputs=(0,))
def col2im(ctx, gy):
    """Col2Im sums column blocks [N, C*K, L] into an image [N, C, *image_shape]. Its adjoint is Im2Col: pad the
    gradient, flatten the spatial axes, Gather the [K, L] block positions (constant indices), reshape to [N, C*K, L]."""
    b = ctx.b
    image, block = ctx.const(1), ctx.const(2)
    require(image is not None and block is not None, ctx, "Col2Im image_shape / block_shape computed at run time")
    image, block = [int(v) for v in image], [int(v) for v in block]
    n = len(image)
    dil = list(ctx.attr("dilations", [1] * n))
    strides = list(ctx.attr("strides", [1] * n))
    pads = list(ctx.attr("pads", [0] * (2 * n)))
    idx, padded = im2col_indices(image, block, dil, pads[:n], pads[n:], strides)
    in_shape, out_shape = ctx.in_shape(0), ctx.out_shape(0)
    require(idx.shape[1] == in_shape[2], ctx, "Col2Im whose block count differs from its input's")
    g = b.pad(gy[0], [0, 0] + pads[:n] + [0, 0] + pads[n:])
    g = ctx.reshape_to(g, (None, out_shape[1], int(np.prod(padded))))
    g = b.op("Gather", [g, b.const(idx, dtype=np.int64, hint="im2col")], "im2col", axis=2)  # [N, C, K, L]
    return [ctx.reshape_to(g, in_shape), None, None]




@backward("GatherElements", inputs=(0,))
def gather_elements(ctx, gy):
    """Adjoint of y = GatherElements(x, indices, axis): scatter-add the gradient back along the axis."""
    b = ctx.b
    rank = len(ctx.in_shape(0))
    axis = ctx.attr("axis", 0) % rank
    idx = b.cast(ctx.x(1), onnx.TensorProto.INT64)
    dim = ctx.in_shape(0)[axis]
    if dim is not None:  # negative indices counted from the end
        idx = b.where(b.op("Less", [idx, b.const(0, dtype=np.int64)]), b.add(idx, b.const(dim, dtype=np.int64)), idx)
    return [b.op("ScatterElements", [b.zeros_like(ctx.x(0)), idx, gy[0]], "scatter_add", axis=axis,
                 reduction="add"), None]


@backward("ScatterElements", inputs=(0, 2))
def scatter_elements(ctx, gy):
    """As ScatterND, element-wise along `axis`: data gets g with the written positions zeroed (none) or g (add);
    the updates get g gathered at the indices."""
    b, g = ctx.b, gy[0]
    red = ctx.attr("reduction", "none")
    require(red in ("none", "add"), ctx, f"ScatterElements reduction {red!r}")
    axis = ctx.attr("axis", 0) % len(ctx.in_shape(0))
    idx = ctx.x(1)
    out = [None, None, None]
    if ctx.needs(0):
        out[0] = g if red == "add" else b.op("ScatterElements", [g, idx, b.zeros_like(ctx.x(2))], "unwritten", axis=axis)
    if ctx.needs(2):
        out[2] = b.op("GatherElements", [g, idx], "written", axis=axis)
    return out
