"""GroupNormalization-18 (opsets 18-20: one scale and bias per GROUP) is deprecated in onnx, whose checker refuses
the node, so neither the model nor an explainer that keeps it would validate. Before the check, each such node is
rewritten into what it computes, with ops every opset has: the grouped view [N, G, -1], InstanceNormalization
(unit scale, zero bias, the node's epsilon), the per-group affine map, and the input's shape back. The opset-21
GroupNormalization (per-channel scale) is valid and stays as it is (its backward is in backward/ops)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import attrs


def _opset(model: onnx.ModelProto) -> int:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)


def expand_groupnorm18(model: onnx.ModelProto) -> int:
    if not 18 <= _opset(model) <= 20:
        return 0
    g = model.graph
    dtypes = {t.name: helper.tensor_dtype_to_np_dtype(t.data_type) for t in g.initializer}
    out, n = [], 0
    for node in g.node:
        if node.op_type != "GroupNormalization" or node.domain not in ("", "ai.onnx"):
            out.append(node)
            continue
        a = attrs(node)
        groups, eps = int(a["num_groups"]), float(a.get("epsilon", 1e-5))
        p = f"{node.name or node.output[0]}/expanded"
        x, scale, bias = node.input[:3]
        dt = dtypes.get(scale, np.float32)  # the model's float type (InstanceNormalization's scale matches x)
        consts = {f"{p}/grouped_shape": np.array([0, groups, -1], np.int64),
                  f"{p}/ones": np.ones(groups, dt), f"{p}/zeros": np.zeros(groups, dt),
                  f"{p}/per_group": np.array([groups, 1], np.int64)}
        g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
        t = [f"{p}/{s}" for s in ("grouped", "normalized", "scale", "bias", "scaled", "affine", "shape")]
        out += [helper.make_node("Reshape", [x, f"{p}/grouped_shape"], [t[0]], name=t[0]),
                helper.make_node("InstanceNormalization", [t[0], f"{p}/ones", f"{p}/zeros"], [t[1]], name=t[1],
                                 epsilon=eps),
                helper.make_node("Reshape", [scale, f"{p}/per_group"], [t[2]], name=t[2]),
                helper.make_node("Reshape", [bias, f"{p}/per_group"], [t[3]], name=t[3]),
                helper.make_node("Mul", [t[1], t[2]], [t[4]], name=t[4]),
                helper.make_node("Add", [t[4], t[3]], [t[5]], name=t[5]),
                helper.make_node("Shape", [x], [t[6]], name=t[6]),
                helper.make_node("Reshape", [t[5], t[6]], [node.output[0]], name=node.name or p)]
        n += 1
    if n:
        del g.node[:]
        g.node.extend(out)
    return n
