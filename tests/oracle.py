"""Test helpers: tiny ONNX graphs around one operator, the PyTorch autograd oracle, and numpy LRP references
written from the formulas."""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import xcompile

N_CLASSES = 5


def one_op_model(nodes, x_shape, y_shape, inits=(), opset=17, scores_from="y"):
    """x -> nodes -> y -> Flatten -> MatMul(W) -> scores. W is a fixed random [prod(y_shape), 5]."""
    d = int(np.prod(y_shape))
    w = np.random.default_rng(1).standard_normal((d, N_CLASSES)).astype(np.float32)
    tail = [helper.make_node("Flatten", [scores_from], ["flat"], name="flatten", axis=1),
            helper.make_node("MatMul", ["flat", "W_head"], ["scores"], name="head")]
    graph = helper.make_graph(
        list(nodes) + tail, "one_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", N_CLASSES])],
        initializer=[numpy_helper.from_array(np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v), k)
                     for k, v in inits] + [numpy_helper.from_array(w, "W_head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model, w


def autograd_reference(fn, x, w, target):
    """d scores[target] / dx for scores = flatten(fn(x)) @ w, through PyTorch autograd."""
    xt = torch.tensor(x, requires_grad=True)
    y = fn(xt)
    scores = y.reshape(y.shape[0], -1) @ torch.tensor(w)
    g, = torch.autograd.grad(scores.gather(1, torch.tensor(target)[:, None]).sum(), xt)
    return scores.detach().numpy(), g.numpy()


def explain(model, x, target, method="gradient", **params):
    ex = xcompile.Explainer(xcompile.compile(model, method, **params))
    return ex.explain(x, np.asarray(target))


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-12))


def lrp_seed(scores, target):
    """The relevance the backward starts from: the explained score at the target class, 0 elsewhere."""
    R = np.zeros_like(scores)
    R[np.arange(len(target)), target] = scores[np.arange(len(target)), target]
    return R


def lrp_stab(z, eps):
    """The epsilon rule's stabilized denominator z + eps * sign(z) (sign(0) = +1); eps = 0: z with its zeros
    replaced by 1 (0 / 0 -> 0)."""
    if eps == 0:
        return np.where(z == 0, 1.0, z)
    return z + eps * np.where(z < 0, -1.0, 1.0)


def layernorm_lrp_reference(x, w, b, target, eps=1e-5, stabilizer=1e-9):
    """AttnLRP's LayerNorm rule over the last axis (float64): the std held constant, R_x = x * J^T(R / y) with
    J^T g = (w g - mean(w g)) / std, R the seed of y = LN(x) * w + b at ``target``."""
    x64 = x.astype(np.float64)
    xc = x64 - x64.mean(1, keepdims=True)
    std = np.sqrt((xc ** 2).mean(1, keepdims=True) + eps)
    y = xc / std * w + b
    g = w * (lrp_seed(y, target) / lrp_stab(y, stabilizer))
    return x64 * (g - g.mean(1, keepdims=True)) / std
