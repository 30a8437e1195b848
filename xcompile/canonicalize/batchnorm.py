"""BatchNormalization folded into the Conv/ConvTranspose/Gemm before it when that is exact (the linear layer's
output feeds only the BatchNorm), else replaced by a per-channel affine Mul + Add; kept (with the reason) when its
statistics are not constants or its input's rank is unknown. After onnxscript's `rewriter/fuse_batchnorm.py`."""
from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import helper, numpy_helper

from ..graph import attr, attrs
from ..kinds import BN_FOLDABLE_OPS
from .constants import remove_unused_initializers
from .rewrite import GraphIndex, MatchResult, RewriteRule, apply_rules


def _bn_affine(gi: GraphIndex, node):
    vals = [gi.const(i) for i in node.input[1:5]]
    if any(v is None for v in vals):
        return None
    scale, bias, mean, var = (v.astype(np.float64) for v in vals)
    eps = attr(node, "epsilon", 1e-5)
    k = scale / np.sqrt(var + eps)
    return k, bias - mean * k


def _mergeable(gi: GraphIndex, lin) -> bool:
    """Can the affine map fold into `lin`'s weight and bias (both constants; Gemm's bias not cancelled)?"""
    a = attrs(lin)
    if lin.op_type == "Gemm" and a.get("beta", 1.0) == 0:
        return False  # the bias input is cancelled: a folded bias could not be expressed (keep Mul+Add)
    return not (len(lin.input) > 2 and lin.input[2] and lin.input[2] not in gi.inits)


class FoldBatchNorm(RewriteRule):
    name = "fold_batchnorm"
    ops = ("BatchNormalization",)

    def check(self, node, gi: GraphIndex) -> MatchResult:
        if len([o for o in node.output if o]) > 1:
            return MatchResult.fail("its running mean/var outputs are used (training mode)")
        aff = _bn_affine(gi, node)
        if aff is None:
            return MatchResult.fail("scale, bias, mean or var is not a constant")
        k, c = aff
        prev = gi.producer.get(node.input[0])
        if (prev is not None and prev.op_type in BN_FOLDABLE_OPS and len(gi.consumers[node.input[0]]) == 1
                and node.input[0] not in gi.outputs and prev.input[1] in gi.inits and _mergeable(gi, prev)):
            return MatchResult(data={"k": k, "c": c, "into": prev})
        # keep a correct per-channel affine: y = x * k + c, broadcast over spatial dims; needs the input's rank
        rank = gi.rank(node.input[0])
        if rank is None:
            return MatchResult.fail("the rank of its input is unknown")
        return MatchResult(data={"k": k, "c": c, "rank": rank})

    def rewrite(self, node, gi: GraphIndex, m: MatchResult) -> None:
        k, c = m.data["k"], m.data["c"]
        prev = m.data.get("into")
        if prev is not None:
            _merge_into_linear(gi, prev, k, c)
            gi.producer.pop(prev.output[0], None)
            prev.output[0] = node.output[0]
            gi.remove(node)  # (a second BatchNorm after it is not folded again: it becomes Mul + Add)
            return
        shape = [-1] + [1] * max(m.data["rank"] - 2, 0)
        kn, cn = f"{node.name or node.output[0]}/bn_scale", f"{node.name or node.output[0]}/bn_shift"
        dt = gi.const(node.input[1]).dtype  # the model's float type (float16 models stay float16)
        gi.add_initializer(numpy_helper.from_array(k.reshape(shape).astype(dt), kn))
        gi.add_initializer(numpy_helper.from_array(c.reshape(shape).astype(dt), cn))
        mid = f"{node.output[0]}/scaled"
        gi.insert_before(node, [helper.make_node("Mul", [node.input[0], kn], [mid], name=f"{node.name}/scale"),
                                helper.make_node("Add", [mid, cn], [node.output[0]], name=f"{node.name}/shift")])


def fold_batchnorm(model, decisions: Optional[list] = None) -> int:
    """BatchNormalization folded into the Conv/Gemm before it when that is exact (the linear layer's
    output feeds only the BatchNorm); otherwise replaced by a per-channel affine Mul + Add."""
    gi = GraphIndex.of(model)
    n = apply_rules(gi, [FoldBatchNorm()], decisions)
    remove_unused_initializers(gi)
    return n


def _merge_into_linear(gi: GraphIndex, lin, k, c) -> None:
    w = gi.const(lin.input[1])
    dt = w.dtype  # folded parameters keep the weight's float type (float16 models stay float16)
    w = w.astype(np.float64)
    a = attrs(lin)
    if lin.op_type == "Conv":
        w2 = w * k.reshape([-1] + [1] * (w.ndim - 1))
    elif lin.op_type == "ConvTranspose":
        grp = a.get("group", 1)
        cin, cpg = w.shape[0], w.shape[1]
        w2 = w.reshape(grp, cin // grp, cpg, *w.shape[2:]) * k.reshape(grp, 1, cpg, *([1] * (w.ndim - 2)))
        w2 = w2.reshape(w.shape)
    else:  # Gemm: output features are the columns of op(B)
        beta = a.get("beta", 1.0)
        w2 = w * (k[None, :] if not a.get("transB", 0) else k[:, None])
        if len(lin.input) > 2 and lin.input[2]:
            b = gi.const(lin.input[2]).astype(np.float64) * beta
            b2 = (np.broadcast_to(b, k.shape) * k + c) / beta
            _set_init_new(gi, lin, 2, b2, dt)
        else:
            _add_bias(gi, lin, c / beta, dt)
        _set_init_new(gi, lin, 1, w2, dt)
        return
    if len(lin.input) > 2 and lin.input[2]:
        b2 = gi.const(lin.input[2]).astype(np.float64) * k + c
        _set_init_new(gi, lin, 2, b2, dt)
    else:
        _add_bias(gi, lin, c, dt)
    _set_init_new(gi, lin, 1, w2, dt)
    return


def _set_init_new(gi: GraphIndex, node, slot, arr, dt=np.float32):
    """Write a folded parameter under a new name (the old one may be shared by other nodes)."""
    name, j = f"{node.input[slot]}/bn_folded", 1
    while name in gi.inits:
        name, j = f"{node.input[slot]}/bn_folded_{j}", j + 1
    gi.add_initializer(numpy_helper.from_array(np.asarray(arr, dt), name))
    node.input[slot] = name


def _add_bias(gi: GraphIndex, node, c, dt=np.float32):
    name = f"{node.name or node.output[0]}/bias_bn_folded"
    gi.add_initializer(numpy_helper.from_array(np.asarray(c, dt), name))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
