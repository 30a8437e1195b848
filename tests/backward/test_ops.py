"""Each operator's backward (the op table) on a one-node graph vs PyTorch autograd, awkward cases included."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from oracle import autograd_reference, explain, one_op_model, rel_err

RNG = np.random.default_rng(0)
W3 = RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)
DW = RNG.standard_normal((3, 1, 3, 3)).astype(np.float32)
G2 = RNG.standard_normal((4, 2, 2, 2)).astype(np.float32)
B6 = RNG.standard_normal(6).astype(np.float32)
M = RNG.standard_normal((7, 4)).astype(np.float32)
BIAS_C = RNG.standard_normal((3, 1, 1)).astype(np.float32)
GAMMA = RNG.uniform(0.5, 1.5, 7).astype(np.float32)
BETA = RNG.standard_normal(7).astype(np.float32)
SLOPE = np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1)
GATHER_IDX = np.array([[0, 2], [2, 1]], np.int64)


def node(op, inputs, outputs=("y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=f"{op.lower()}_{outputs[0]}", **attrs)


# name: (nodes, x_shape, y_shape, initializers, torch fn, opset)
CASES = {
    "conv_stride_pad": ([node("Conv", ["x", "W", "B"], strides=[2, 2], pads=[1, 0, 2, 1])], (3, 9, 8), (6, 5, 4),
                        [("W", W3), ("B", B6)], lambda x: F.conv2d(F.pad(x, (0, 1, 1, 2)), torch.tensor(W3), torch.tensor(B6), stride=2)),
    "conv_dilated": ([node("Conv", ["x", "W"], dilations=[2, 2], pads=[2, 2, 2, 2])], (3, 7, 7), (6, 7, 7),
                     [("W", W3)], lambda x: F.conv2d(x, torch.tensor(W3), padding=2, dilation=2)),
    "conv_depthwise": ([node("Conv", ["x", "W"], group=3, pads=[1, 1, 1, 1], strides=[2, 2])], (3, 8, 8), (3, 4, 4),
                       [("W", DW)], lambda x: F.conv2d(x, torch.tensor(DW), padding=1, stride=2, groups=3)),
    "conv_grouped": ([node("Conv", ["x", "W"], group=2)], (4, 5, 5), (4, 4, 4),
                     [("W", G2)], lambda x: F.conv2d(x, torch.tensor(G2), groups=2)),
    "conv_same_upper": ([node("Conv", ["x", "W"], auto_pad="SAME_UPPER", strides=[2, 2])], (3, 8, 7), (6, 4, 4),
                        [("W", W3)], lambda x: F.conv2d(F.pad(x, (1, 1, 0, 1)), torch.tensor(W3), stride=2)),
    "gemm_transB": ([node("Gemm", ["x", "Wg", "Bg"], transB=1, alpha=0.5, beta=2.0)], (4,), (7,),
                    [("Wg", M), ("Bg", B6[:1])], lambda x: 0.5 * x @ torch.tensor(M).T + 2.0 * torch.tensor(B6[:1])),
    "gemm_transA": ([node("Transpose", ["x"], ["xt"], perm=[1, 0]), node("Gemm", ["xt", "Wg"], transA=1)], (7,), (4,),
                    [("Wg", M)], lambda x: x @ torch.tensor(M)),
    "matmul_weight": ([node("MatMul", ["x", "Wm"])], (3, 7), (3, 4), [("Wm", M)], lambda x: x @ torch.tensor(M)),
    "matmul_act_act": ([node("Transpose", ["x"], ["xt"], perm=[0, 1, 3, 2]), node("MatMul", ["x", "xt"])], (2, 3, 4), (2, 3, 3),
                       [], lambda x: x @ x.transpose(-1, -2)),
    "matmul_broadcast": ([node("MatMul", ["x", "Wb"])], (2, 3, 7), (2, 3, 4), [("Wb", np.stack([M, -M]))],
                         lambda x: x @ torch.tensor(np.stack([M, -M]))),
    "add_sub_broadcast": ([node("Add", ["x", "C"], ["a"]), node("Sub", ["C", "a"], ["s"]), node("Mul", ["s", "x"])],
                          (3, 4, 4), (3, 4, 4), [("C", BIAS_C)], lambda x: (torch.tensor(BIAS_C) - (x + torch.tensor(BIAS_C))) * x),
    "mul_div_act": ([node("Sigmoid", ["x"], ["s"]), node("Div", ["x", "s"], ["d"]), node("Mul", ["d", "s"], ["m"]),
                     node("Div", ["m", "C"])], (3, 2, 2), (3, 2, 2), [("C", BIAS_C + 3)],
                    lambda x: (x / torch.sigmoid(x)) * torch.sigmoid(x) / torch.tensor(BIAS_C + 3)),
    "relu": ([node("Relu", ["x"])], (3, 4, 4), (3, 4, 4), [], F.relu),
    "leaky_relu": ([node("LeakyRelu", ["x"], alpha=0.2)], (3, 4, 4), (3, 4, 4), [], lambda x: F.leaky_relu(x, 0.2)),
    "prelu": ([node("PRelu", ["x", "S"])], (3, 4, 4), (3, 4, 4), [("S", SLOPE)], lambda x: F.prelu(x, torch.tensor(SLOPE.ravel()))),
    "clip_relu6": ([node("Mul", ["x", "K"], ["x4"]), node("Clip", ["x4", "lo", "hi"])], (3, 4, 4), (3, 4, 4),
                   [("K", np.float32(4)), ("lo", np.float32(0)), ("hi", np.float32(6))], lambda x: F.relu6(4 * x)),
    "sigmoid_tanh": ([node("Sigmoid", ["x"], ["s"]), node("Tanh", ["s"])], (3, 4), (3, 4), [], lambda x: torch.tanh(torch.sigmoid(x))),
    "hardsigmoid": ([node("Mul", ["x", "K"], ["x4"]), node("HardSigmoid", ["x4"], alpha=1 / 6, beta=0.5)], (3, 4, 4), (3, 4, 4),
                    [("K", np.float32(4))], lambda x: F.hardsigmoid(4 * x)),
    "hardswish": ([node("Mul", ["x", "K"], ["x4"]), node("HardSwish", ["x4"])], (3, 4, 4), (3, 4, 4),
                  [("K", np.float32(4))], lambda x: F.hardswish(4 * x)),
    "erf_gelu": ([node("Div", ["x", "r2"], ["a"]), node("Erf", ["a"], ["e"]), node("Add", ["e", "one"], ["e1"]),
                  node("Mul", ["x", "e1"], ["m"]), node("Mul", ["m", "half"])], (3, 4), (3, 4),
                 [("r2", np.float32(np.sqrt(2))), ("one", np.float32(1)), ("half", np.float32(0.5))], F.gelu),
    "gelu_op": ([node("Gelu", ["x"])], (3, 4), (3, 4), [], F.gelu, 20),
    "gelu_tanh": ([node("Gelu", ["x"], approximate="tanh")], (3, 4), (3, 4), [], lambda x: F.gelu(x, approximate="tanh"), 20),
    "softmax": ([node("Softmax", ["x"], axis=-1)], (3, 4), (3, 4), [], lambda x: torch.softmax(x, -1)),
    "log_softmax": ([node("LogSoftmax", ["x"], axis=1)], (3, 4), (3, 4), [], lambda x: torch.log_softmax(x, 1)),
    "layernorm": ([node("LayerNormalization", ["x", "G", "Bt"], axis=-1, epsilon=1e-5)], (3, 7), (3, 7),
                  [("G", GAMMA), ("Bt", BETA)], lambda x: F.layer_norm(x, (7,), torch.tensor(GAMMA), torch.tensor(BETA))),
    "maxpool_overlap": ([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2])], (3, 9, 9), (3, 4, 4), [],
                        lambda x: F.max_pool2d(x, 3, 2)),
    "maxpool_ceil_pads": ([node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)],
                          (3, 8, 8), (3, 5, 5), [], lambda x: F.max_pool2d(x, 3, 2, padding=1, ceil_mode=True)),
    "avgpool_include_pad": ([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)],
                            (3, 8, 8), (3, 4, 4), [], lambda x: F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=True)),
    "avgpool_exclude_pad_ceil": ([node("AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)],
                                 (3, 8, 8), (3, 5, 5), [], lambda x: F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)),
    "global_avg_max": ([node("GlobalAveragePool", ["x"], ["a"]), node("GlobalMaxPool", ["x"], ["m"]), node("Add", ["a", "m"])],
                       (3, 5, 5), (3, 1, 1), [], lambda x: F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1)),
    "reduce_mean_sum": ([node("ReduceMean", ["x", "ax"], ["m"], keepdims=0), node("ReduceSum", ["x", "ax2"], ["s"], keepdims=1),
                         node("Unsqueeze", ["m", "ax3"], ["mu"]), node("Mul", ["mu", "s"])], (3, 4, 5), (3, 1, 1),
                        [("ax", np.array([2, 3], np.int64)), ("ax2", np.array([-1, -2], np.int64)), ("ax3", np.array([2, 3], np.int64))],
                        lambda x: x.mean((2, 3), keepdim=True) * x.sum((2, 3), keepdim=True), 18),
    "reduce_l2_sumsquare": ([node("ReduceL2", ["x", "ax"], ["n"], keepdims=1), node("Div", ["x", "n"], ["u"]),
                             node("ReduceSumSquare", ["u", "ax2"], ["q"], keepdims=0), node("Mul", ["q", "q"])],
                            (3, 4, 5), (3, 4), [("ax", np.array([1], np.int64)), ("ax2", np.array([3], np.int64))],
                            lambda x: ((x / x.norm(dim=1, keepdim=True)) ** 2).sum(3) ** 2, 18),
    "reduce_l2_no_keepdims": ([node("ReduceL2", ["x", "ax"], keepdims=0)], (3, 4, 5), (3, 4),
                              [("ax", np.array([-1], np.int64))], lambda x: x.norm(dim=3), 18),
    # noop_with_empty_axes and no axes: nothing is reduced, but onnxruntime still applies the elementwise part
    # (|x|, x^2, log exp x = x, |x|): the forward the gradient must match
    "reduce_noop_empty_axes": ([node("ReduceL2", ["x"], ["n"], noop_with_empty_axes=1),
                                node("ReduceLogSumExp", ["n"], ["l"], noop_with_empty_axes=1),
                                node("ReduceSumSquare", ["x"], ["q"], noop_with_empty_axes=1),
                                node("ReduceL1", ["x"], ["a"], noop_with_empty_axes=1),
                                node("Sum", ["l", "q", "a"])], (3, 4), (3, 4), [],
                               lambda x: 2 * x.abs() + x ** 2, 18),
    "reshape_transpose_flatten": ([node("Reshape", ["x", "shp"], ["r"]), node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
                                   node("Flatten", ["t"], axis=1)], (2, 3, 4), (24,), [("shp", np.array([0, 6, 4], np.int64))],
                                  lambda x: x.reshape(-1, 6, 4).transpose(1, 2).flatten(1)),
    "squeeze_unsqueeze": ([node("Unsqueeze", ["x", "a1"], ["u"]), node("Squeeze", ["u", "a1"], ["s"]), node("Relu", ["s"])],
                          (3, 4), (3, 4), [("a1", np.array([2], np.int64))], F.relu),
    "concat_split": ([node("Relu", ["x"], ["r"]), node("Concat", ["x", "r"], ["c"], axis=1),
                      node("Split", ["c", "sp"], ["a", "b"], axis=1), node("Mul", ["a", "b"])], (3, 4), (3, 4),
                     [("sp", np.array([3, 3], np.int64))], lambda x: x * F.relu(x)),
    "slice_steps": ([node("Slice", ["x", "st", "en", "ax", "sp"])], (6, 9), (3, 3),
                    [("st", np.array([1, -1], np.int64)), ("en", np.array([6, 0], np.int64)), ("ax", np.array([1, 2], np.int64)),
                     ("sp", np.array([2, -3], np.int64))], lambda x: x[:, 1:6:2, :].flip(2)[:, :, 0:8:3]),
    "pad_and_crop": ([node("Pad", ["x", "pd"])], (3, 5, 5), (3, 6, 8),
                     [("pd", np.array([0, 0, 2, 1, 0, 0, -1, 2], np.int64))], lambda x: F.pad(x, (1, 2, 2, -1))),
    "gather_const": ([node("Gather", ["x", "gi"], axis=2)], (3, 4), (3, 2, 2), [("gi", GATHER_IDX)],
                     lambda x: x[:, :, torch.tensor(GATHER_IDX)]),
    "gather_scalar": ([node("Gather", ["x", "g0"], axis=1)], (3, 4), (4,), [("g0", np.array(1, np.int64))], lambda x: x[:, 1]),
    "expand_where": ([node("Expand", ["x", "es"], ["e"]), node("Greater", ["e", "zero"], ["c"]), node("Where", ["c", "e", "zero"])],
                     (1, 4), (3, 4), [("es", np.array([1, 3, 1], np.int64)), ("zero", np.float32(0))],
                     lambda x: torch.where(x.expand(-1, 3, 4) > 0, x.expand(-1, 3, 4), torch.zeros(()))),
    "batchnorm_unfolded": ([node("Relu", ["x"], ["r"]), node("BatchNormalization", ["r", "bs", "bb", "bm", "bv"], epsilon=1e-3)],
                           (3, 4, 4), (3, 4, 4), [("bs", GAMMA[:3]), ("bb", BETA[:3]), ("bm", BETA[3:6]), ("bv", GAMMA[3:6])],
                           lambda x: F.batch_norm(F.relu(x), torch.tensor(BETA[3:6]), torch.tensor(GAMMA[3:6]), torch.tensor(GAMMA[:3]), torch.tensor(BETA[:3]), eps=1e-3)),
    "pow_sqrt": ([node("Mul", ["x", "x"], ["sq"]), node("Add", ["sq", "one"], ["s1"]), node("Sqrt", ["s1"], ["r"]),
                  node("Pow", ["r", "three"])], (3, 4), (3, 4), [("one", np.float32(1)), ("three", np.float32(3))],
                 lambda x: torch.sqrt(x * x + 1) ** 3),
    "resize_nearest": ([node("Resize", ["x", "", "rs"], mode="nearest")], (3, 3, 4), (3, 6, 8),
                       [("rs", np.array([1, 1, 2, 2], np.float32))], lambda x: F.interpolate(x, scale_factor=2, mode="nearest")),
    "resize_linear": ([node("Resize", ["x", "", "", "rz"], mode="linear", coordinate_transformation_mode="half_pixel", axes=[2, 3])],
                      (3, 3, 4), (3, 5, 7), [("rz", np.array([5, 7], np.int64))],
                      lambda x: F.interpolate(x, size=(5, 7), mode="bilinear", align_corners=False), 18),
    # indices from run-time shape arithmetic: batch-invariant ones are frozen to constants (freeze_shape_arithmetic)
    "gather_shape_computed_indices": ([node("Shape", ["x"], ["s"]), node("Gather", ["s", "i2"], ["w"]),
                                       node("Range", ["z0", "w", "two"], ["idx"]), node("Gather", ["x", "idx"], axis=2)],
                                      (4, 6), (4, 3), [("i2", np.array(2, np.int64)), ("z0", np.array(0, np.int64)),
                                                       ("two", np.array(2, np.int64))], lambda x: x[:, :, ::2]),
    # ... batch-dependent ones (torch's as_strided over a flattened tensor) are scatter-added with ScatterND
    "gather_batch_dependent_indices": ([node("Shape", ["x"], ["s"]), node("Gather", ["s", "i0"], ["n"]),
                                        node("Mul", ["n", "six"], ["tot"]), node("Range", ["z0", "tot", "two"], ["idx"]),
                                        node("Reshape", ["x", "m1"], ["xflat"]), node("Gather", ["xflat", "idx"], ["g"]),
                                        node("Unsqueeze", ["n", "a0"], ["n1"]), node("Concat", ["n1", "three"], ["shp"], axis=0),
                                        node("Reshape", ["g", "shp"])],
                                       (2, 3), (3,), [("i0", np.array(0, np.int64)), ("six", np.array(6, np.int64)),
                                                      ("z0", np.array(0, np.int64)), ("two", np.array(2, np.int64)),
                                                      ("m1", np.array([-1], np.int64)), ("a0", np.array([0], np.int64)),
                                                      ("three", np.array([3], np.int64))],
                                       lambda x: x.reshape(-1)[::2].reshape(-1, 3)),
    "einsum_act_act_and_weight": ([node("Einsum", ["x", "Wm"], ["h"], equation="bij,jk->bik"),
                                   node("Einsum", ["h", "x"], equation="bik,bij->bkj")], (3, 7), (4, 7), [("Wm", M)],
                                  lambda x: torch.einsum("bik,bij->bkj", torch.einsum("bij,jk->bik", x, torch.tensor(M)), x)),
    "einsum_sum_out": ([node("Einsum", ["x"], equation="bij->bj")], (3, 7), (7,), [], lambda x: x.sum(1)),
    "tile": ([node("Tile", ["x", "rep"])], (2, 3), (4, 3), [("rep", np.array([1, 2, 1], np.int64))], lambda x: x.repeat(1, 2, 1)),
}

# ------------------------------------------------------------------ issue 15, item 4: the operators added
WT = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
WT_G = RNG.standard_normal((4, 1, 2, 3)).astype(np.float32)
GN_SCALE = RNG.uniform(0.5, 1.5, 4).astype(np.float32)
GN_BIAS = RNG.standard_normal(4).astype(np.float32)
I64 = np.int64


def _scatter_nd(x, rows, reduction="none"):
    """ScatterND on x.permute(1, 2, 0) of (its first two rows) squared, at `rows`, permuted back."""
    t = x.permute(1, 2, 0)
    u = t[:2] ** 2
    if reduction == "add":
        y = t.index_add(0, torch.tensor(rows), u)
    else:
        y = t.clone()
        y[torch.tensor(rows)] = u
    return y.permute(2, 0, 1)


def _mvn(x):
    mu = x.mean((0, 2, 3), keepdim=True)
    return (x - mu) / (x.var((0, 2, 3), unbiased=False, keepdim=True).sqrt() + 1e-9)


def _rev_cumsum(x, d):
    return torch.flip(torch.cumsum(torch.flip(x, [d]), d), [d])


NEW_CASES = {
    "gathernd": ([node("Transpose", ["x"], ["t"], perm=[1, 2, 0]), node("GatherND", ["t", "gnd"], ["g"]),
                  node("Transpose", ["g"], perm=[1, 0])], (4, 5), (3,), [("gnd", np.array([[0, 1], [3, -1], [0, 1]], I64))],
                 lambda x: x[:, [0, 3, 0], [1, 4, 1]]),
    # batch_dims=1 with indices computed at run time (which row of each sample: an ArgMax, not differentiated)
    "gathernd_batch_dims": ([node("ReduceSum", ["x", "ax2"], ["s"], keepdims=0), node("ArgMax", ["s"], ["a"], axis=1, keepdims=1),
                             node("GatherND", ["x", "a"], batch_dims=1)], (4, 5), (5,), [("ax2", np.array([2], I64))],
                            lambda x: x[torch.arange(x.shape[0]), x.sum(2).argmax(1)]),
    # indices at run time (TopK's, not differentiated): the positions of each row's two largest / smallest values
    "gather_elements": ([node("TopK", ["x", "k2"], ["v", "i"], axis=2), node("GatherElements", ["x", "i"], axis=2)],
                        (3, 4), (3, 2), [("k2", np.array([2], I64))], lambda x: torch.gather(x, 2, x.topk(2, 2).indices)),
    "scatter_elements": ([node("Neg", ["x"], ["nx"]), node("TopK", ["nx", "k2"], ["v", "i"], axis=2),
                          node("Mul", ["x", "x"], ["x2"]), node("Slice", ["x2", "z0", "two", "ax2"], ["u"]),
                          node("ScatterElements", ["x", "i", "u"], axis=2)], (3, 4), (3, 4),
                         [("k2", np.array([2], I64)), ("z0", np.array([0], I64)), ("two", np.array([2], I64)), ("ax2", np.array([2], I64))],
                         lambda x: x.scatter(2, (-x).topk(2, 2).indices, (x * x)[:, :, :2])),
    "scatter_elements_add": ([node("Neg", ["x"], ["nx"]), node("TopK", ["nx", "k2"], ["v", "i"], axis=2),
                              node("Mul", ["x", "x"], ["x2"]), node("Slice", ["x2", "z0", "two", "ax2"], ["u"]),
                              node("ScatterElements", ["x", "i", "u"], axis=2, reduction="add")], (3, 4), (3, 4),
                             [("k2", np.array([2], I64)), ("z0", np.array([0], I64)), ("two", np.array([2], I64)), ("ax2", np.array([2], I64))],
                             lambda x: x.scatter_add(2, (-x).topk(2, 2).indices, (x * x)[:, :, :2]), 18),
    "conv_transpose": ([node("ConvTranspose", ["x", "Wt", "Bt2"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])],
                       (3, 4, 4), (2, 8, 8), [("Wt", WT), ("Bt2", BETA[:2])],
                       lambda x: F.conv_transpose2d(x, torch.tensor(WT), torch.tensor(BETA[:2]), stride=2, padding=1, output_padding=1)),
    "conv_transpose_output_shape_grouped": ([node("ConvTranspose", ["x", "Wg4"], strides=[2, 1], dilations=[1, 2], group=2,
                                                  output_shape=[7, 7])], (4, 4, 3), (2, 7, 7), [("Wg4", WT_G)],
                                            lambda x: F.conv_transpose2d(x, torch.tensor(WT_G), stride=(2, 1), dilation=(1, 2),
                                                                         groups=2)[:, :, 1:, :]),
    "reduce_l1_logsum": ([node("ReduceL1", ["x", "ax"], ["l"], keepdims=0), node("Abs", ["x"], ["a"]),
                          node("ReduceLogSum", ["a", "ax2"], ["s"], keepdims=1), node("Unsqueeze", ["l", "ax"], ["lu"]),
                          node("Mul", ["lu", "s"])], (3, 4, 5), (3, 4, 5),
                         [("ax", np.array([1], I64)), ("ax2", np.array([3], I64))],
                         lambda x: x.abs().sum(1, keepdim=True) * torch.log(x.abs().sum(3, keepdim=True)), 18),
    "reduce_prod_with_zeros": ([node("Relu", ["x"], ["r"]), node("ReduceProd", ["r", "ax"], keepdims=0)], (3, 4), (3,),
                               [("ax", np.array([2], I64))], lambda x: torch.prod(F.relu(x), 2), 18),
    "reduce_prod": ([node("ReduceProd", ["x", "ax"], keepdims=1)], (3, 4), (3, 1), [("ax", np.array([2], I64))],
                    lambda x: torch.prod(x, 2, keepdim=True), 18),
    "lrn": ([node("LRN", ["x"], size=3, alpha=0.5, beta=0.75, bias=2.0)], (5, 3, 3), (5, 3, 3), [],
            lambda x: F.local_response_norm(x, 3, alpha=0.5, beta=0.75, k=2.0)),
    "depth_to_space_dcr": ([node("DepthToSpace", ["x"], blocksize=2)], (8, 2, 3), (2, 4, 6), [],
                           lambda x: x.reshape(-1, 2, 2, 2, 2, 3).permute(0, 3, 4, 1, 5, 2).reshape(-1, 2, 4, 6)),
    "depth_to_space_crd": ([node("DepthToSpace", ["x"], blocksize=2, mode="CRD")], (8, 2, 3), (2, 4, 6), [],
                           lambda x: F.pixel_shuffle(x, 2)),
    "space_to_depth": ([node("SpaceToDepth", ["x"], blocksize=2)], (2, 4, 6), (8, 2, 3), [],
                       lambda x: x.reshape(-1, 2, 2, 2, 3, 2).permute(0, 3, 5, 1, 2, 4).reshape(-1, 8, 2, 3)),
    "scatternd": ([node("Transpose", ["x"], ["t"], perm=[1, 2, 0]), node("Slice", ["t", "z0", "two", "z0"], ["u"]),
                   node("Mul", ["u", "u"], ["u2"]), node("ScatterND", ["t", "snd", "u2"], ["s"]),
                   node("Transpose", ["s"], perm=[2, 0, 1])], (4, 5), (4, 5),
                  [("snd", np.array([[1], [3]], I64)), ("z0", np.array([0], I64)), ("two", np.array([2], I64))],
                  lambda x: _scatter_nd(x, [1, 3]), 18),
    "scatternd_add_repeated": ([node("Transpose", ["x"], ["t"], perm=[1, 2, 0]), node("Slice", ["t", "z0", "two", "z0"], ["u"]),
                                node("Mul", ["u", "u"], ["u2"]), node("ScatterND", ["t", "snd", "u2"], ["s"], reduction="add"),
                                node("Transpose", ["s"], perm=[2, 0, 1])], (4, 5), (4, 5),
                               [("snd", np.array([[1], [1]], I64)), ("z0", np.array([0], I64)), ("two", np.array([2], I64))],
                               lambda x: _scatter_nd(x, [1, 1], "add"), 18),
    "pad_reflect": ([node("Pad", ["x", "pd"], mode="reflect")], (3, 5, 6), (3, 8, 9),
                    [("pd", np.array([0, 0, 2, 1, 0, 0, 1, 2], I64))], lambda x: F.pad(x, (1, 2, 2, 1), mode="reflect")),
    "pad_edge": ([node("Pad", ["x", "pd"], mode="edge")], (3, 5, 6), (3, 8, 9),
                 [("pd", np.array([0, 0, 1, 3, 0, 0, 2, 0], I64))], lambda x: F.pad(x, (3, 0, 1, 2), mode="replicate")),
    "pad_wrap": ([node("Pad", ["x", "pd"], mode="wrap")], (3, 5, 6), (3, 8, 9),
                 [("pd", np.array([0, 0, 1, 2, 0, 0, 2, 1], I64))], lambda x: F.pad(x, (2, 1, 1, 2), mode="circular"), 19),
    "col2im": ([node("Col2Im", ["x", "img", "blk"], pads=[1, 1, 1, 1])], (12, 36), (2, 5, 6),
               [("img", np.array([5, 6], I64)), ("blk", np.array([2, 3], I64))],
               lambda x: F.fold(x, (5, 6), (2, 3), padding=1), 18),
    "col2im_strided_dilated": ([node("Col2Im", ["x", "img", "blk"], pads=[1, 0, 1, 0], strides=[2, 2], dilations=[2, 1])],
                               (8, 9), (2, 6, 7), [("img", np.array([6, 7], I64)), ("blk", np.array([2, 2], I64))],
                               lambda x: F.fold(x, (6, 7), (2, 2), dilation=(2, 1), padding=(1, 0), stride=2), 18),
    "cumsum": ([node("CumSum", ["x", "cax"])], (3, 4), (3, 4), [("cax", np.array(2, I64))], lambda x: torch.cumsum(x, 2)),
    "cumsum_exclusive_reverse": ([node("CumSum", ["x", "cax"], exclusive=1, reverse=1)], (3, 4), (3, 4),
                                 [("cax", np.array(-1, np.int32))], lambda x: _rev_cumsum(x, 2) - x),
    "cumsum_exclusive": ([node("CumSum", ["x", "cax"], exclusive=1)], (3, 4), (3, 4), [("cax", np.array(1, I64))],
                         lambda x: torch.cumsum(x, 1) - x),
    "trilu_upper": ([node("Trilu", ["x", "k1"])], (3, 4, 5), (3, 4, 5), [("k1", np.array(1, I64))], lambda x: torch.triu(x, 1)),
    "trilu_lower": ([node("Trilu", ["x", "k1"], upper=0)], (3, 4, 5), (3, 4, 5), [("k1", np.array(-1, I64))],
                    lambda x: torch.tril(x, -1)),
    "mish": ([node("Mish", ["x"])], (3, 4, 4), (3, 4, 4), [], F.mish, 18),
    "selu": ([node("Selu", ["x"])], (3, 4, 4), (3, 4, 4), [], F.selu),
    "celu": ([node("Celu", ["x"], alpha=0.7)], (3, 4, 4), (3, 4, 4), [], lambda x: F.celu(x, 0.7)),
    "thresholded_relu": ([node("ThresholdedRelu", ["x"], alpha=0.5)], (3, 4, 4), (3, 4, 4), [], lambda x: F.threshold(x, 0.5, 0.0)),
    "softsign": ([node("Softsign", ["x"])], (3, 4, 4), (3, 4, 4), [], F.softsign),
    "shrink": ([node("Shrink", ["x"], lambd=0.4, bias=0.3)], (3, 4, 4), (3, 4, 4), [],
               lambda x: torch.where(x < -0.4, x + 0.3, torch.where(x > 0.4, x - 0.3, torch.zeros(())))),
    "sin_cos": ([node("Sin", ["x"], ["s"]), node("Cos", ["s"])], (3, 4), (3, 4), [], lambda x: torch.cos(torch.sin(x))),
    "groupnorm_21": ([node("GroupNormalization", ["x", "gs", "gb"], num_groups=2, epsilon=1e-5)], (4, 3, 3), (4, 3, 3),
                     [("gs", GN_SCALE), ("gb", GN_BIAS)],
                     lambda x: F.group_norm(x, 2, torch.tensor(GN_SCALE), torch.tensor(GN_BIAS), eps=1e-5), 21),
    "lpnorm_l2": ([node("LpNormalization", ["x"], axis=1, p=2)], (4, 5), (4, 5), [], lambda x: F.normalize(x, 2, 1)),
    "lpnorm_l1": ([node("LpNormalization", ["x"], axis=-1, p=1)], (4, 5), (4, 5), [], lambda x: F.normalize(x, 1, -1)),
    "mean_variance_normalization": ([node("MeanVarianceNormalization", ["x"], axes=[0, 2, 3])], (3, 4, 5), (3, 4, 5), [], _mvn),
    "reduce_logsumexp": ([node("ReduceLogSumExp", ["x", "ax"], keepdims=0)], (3, 4, 5), (3, 4),
                         [("ax", np.array([-1], I64))], lambda x: torch.logsumexp(x, 3), 18),
    "reduce_logsumexp_keepdims": ([node("ReduceLogSumExp", ["x"], axes=[1, 2], keepdims=1)], (3, 4, 5), (1, 1, 5), [],
                                  lambda x: torch.logsumexp(x, (1, 2), keepdim=True)),
    "mean_variadic": ([node("Relu", ["x"], ["r"]), node("Mean", ["x", "r", "C"])], (3, 4, 4), (3, 4, 4), [("C", BIAS_C)],
                      lambda x: (x + F.relu(x) + torch.tensor(BIAS_C)) / 3),
    "hardmax_path": ([node("Hardmax", ["x"], ["h"], axis=-1), node("Mul", ["x", "h"])], (3, 5), (3, 5), [],
                     lambda x: x * F.one_hot(x.argmax(-1), 5).float()),
    "argmax_path": ([node("ArgMax", ["x"], ["a"], axis=2, keepdims=1), node("Cast", ["a"], ["af"], to=1),
                     node("Mul", ["x", "af"])], (3, 5), (3, 5), [], lambda x: x * x.argmax(-1, keepdim=True).float()),
}
CASES.update(NEW_CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_autograd(case):
    nodes, x_shape, y_shape, inits, fn, *opset = CASES[case]
    model, w = one_op_model(nodes, x_shape, y_shape, inits, opset=opset[0] if opset else 17)
    x = np.random.default_rng(7).standard_normal((3, *x_shape)).astype(np.float32)
    target = np.array([0, 3, -1])
    ref_scores, _ = autograd_reference(fn, x, w, np.zeros(3, np.int64))
    t = np.where(target < 0, ref_scores.argmax(1), target)
    _, ref = autograd_reference(fn, x, w, t)
    out = explain(model, x, target)
    assert rel_err(out.scores, ref_scores) < 1e-5
    assert rel_err(out.relevance, ref) < 1e-4, case


def test_mean_variance_normalization_default_axes():
    """MVN without `axes` fails onnx's full check (its function body reads the attribute): canonicalization writes
    the default [0, 2, 3] so the explainer passes the checker; the gradient still matches autograd."""
    nodes, x_shape, y_shape, inits, fn = CASES["mean_variance_normalization"]
    model, w = one_op_model(nodes, x_shape, y_shape, inits)
    del model.graph.node[0].attribute[:]
    x = np.random.default_rng(3).standard_normal((3, *x_shape)).astype(np.float32)
    _, ref = autograd_reference(fn, x, w, np.array([1, 2, 0]))
    assert rel_err(explain(model, x, [1, 2, 0]).relevance, ref) < 1e-4


# LRP does not conserve relevance here: a constant operand (Mean) or a bias (ConvTranspose) absorbs a share; a product
# of reductions; ReduceProd (no LRP treatment: its gradient)
NOT_CONSERVATIVE = ("mean_variadic", "conv_transpose", "reduce_l1_logsum", "reduce_prod", "reduce_prod_with_zeros")


@pytest.mark.parametrize("case", sorted(NEW_CASES))
def test_new_ops_lrp_and_cuda(case):
    """The added ops under LRP (epsilon rule set: relevance is conserved through pass / proportional / routing
    treatments, to the stabilizer; NOT_CONSERVATIVE lists the exceptions), and every node the backward emits
    has a CUDA kernel (the forward op itself may not: Mish, Celu, Hardmax, Col2Im are the model's own)."""
    from test_cuda_ops import cuda_offenders

    import xcompile
    nodes, x_shape, y_shape, inits, fn, *opset = CASES[case]
    model, w = one_op_model(nodes, x_shape, y_shape, inits, opset=opset[0] if opset else 17)
    x = np.random.default_rng(5).standard_normal((3, *x_shape)).astype(np.float32)
    t = np.array([0, 3, 1])
    out = explain(model, x, t, "lrp", rules="epsilon")
    assert np.all(np.isfinite(out.relevance))
    if case not in NOT_CONSERVATIVE:
        ratio = out.relevance.reshape(3, -1).sum(1) / out.scores[np.arange(3), t]
        np.testing.assert_allclose(ratio, 1.0, atol=1e-3)
    for method in ("gradient", "lrp"):
        ex = xcompile.compile(model, method, **({"rules": "epsilon"} if method == "lrp" else {}))
        emitted = [n for n in ex.graph.node if n.name.startswith("xc/")]
        del ex.graph.node[:]
        ex.graph.node.extend(emitted)
        bad = cuda_offenders(ex, f"{case}/{method}")
        assert not bad, "\n".join(bad)


def test_groupnorm_opset18_per_group_scale(monkeypatch):
    """GroupNormalization-18 (one scale/bias per group) fails onnx's checker as deprecated: the loader rewrites it
    into Reshape -> InstanceNormalization -> per-group affine -> Reshape; the gradient matches autograd."""
    import onnx
    checker = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda *a, **k: None)  # one_op_model's check: the op is deprecated
    model, w = one_op_model([node("GroupNormalization", ["x", "gs", "gb"], num_groups=2, epsilon=1e-5)], (4, 3, 3),
                            (4, 3, 3), [("gs", GN_SCALE[:2]), ("gb", GN_BIAS[:2])], opset=18)
    monkeypatch.setattr(onnx.checker, "check_model", checker)

    def fn(x):
        return F.group_norm(x, 2, torch.tensor(GN_SCALE[:2]).repeat_interleave(2),
                            torch.tensor(GN_BIAS[:2]).repeat_interleave(2), eps=1e-5)
    x = np.random.default_rng(7).standard_normal((3, 4, 3, 3)).astype(np.float32)
    t = np.array([0, 3, 1])
    ref_scores, ref = autograd_reference(fn, x, w, t)
    out = explain(model, x, t)
    assert rel_err(out.scores, ref_scores) < 1e-5
    assert rel_err(out.relevance, ref) < 1e-4
    lrp = explain(model, x, t, "lrp", rules="epsilon")
    assert np.all(np.isfinite(lrp.relevance))
