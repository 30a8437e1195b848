"""Grad-CAM: channel weights = spatial mean of dF_c/dA at a feature map A; map = ReLU(sum_k a_k A_k),
upsampled to the input size (bilinear as F.interpolate(align_corners=False), or nearest)."""
from __future__ import annotations

import numpy as np

from ..backward.engine import float32_view
from ..errors import XCompileError
from .base import Built, Method, Param, make_seed, register, resolve_target


def interpolation_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """[n_out, n_in] matrix of 1-D resampling with PyTorch's conventions (align_corners=False)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for o in range(n_out):
        if mode == "nearest":
            m[o, min(int(np.floor(o * scale)), n_in - 1)] = 1.0
        else:
            src = max((o + 0.5) * scale - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            w1 = src - i0
            m[o, i0] += 1.0 - w1
            m[o, i1] += w1
    return m.astype(np.float32)


def default_layer(g, engine) -> str:
    """The last feature map on the relevance path that still has spatial extent (>1 position)."""
    live, nodes = engine.paths()
    for node in reversed(nodes):
        for o in node.output:
            if o in live:
                s = g.shapes.get(o)
                if s is not None and len(s) == 4 and s[2] and s[3] and s[2] * s[3] > 1:
                    return o
    raise XCompileError("gradcam: no 4-D feature map with spatial extent on the path to the scores; name one with --set layer=TENSOR")


@register
class GradCAM(Method):
    token_relevance = None
    name = "gradcam"
    summary = "ReLU(sum_k mean(dF_c/dA_k) A_k) at the last conv feature map, upsampled"
    params = {
        "layer": Param(None, "name of the feature-map tensor to explain at"),
        "interpolate": Param("bilinear", "upsampling: bilinear or nearest",
                             lambda v: v if v in ("bilinear", "nearest") else (_ for _ in ()).throw(ValueError(v))),
    }

    def build(self, g, b, where):
        in_shape = g.shape(g.data_input)
        if len(in_shape) != 4:
            raise XCompileError(f"gradcam needs an image input [N,C,H,W]; {g.data_input!r} has shape {list(in_shape)}")
        layer = self.values["layer"] or default_layer(g, self.engine(g, b))
        if layer not in g.shapes:
            raise XCompileError(f"option layer={layer!r}: no such tensor in the model")
        target = resolve_target(b, g, g.explained)
        seed = make_seed(b, g.shape(g.explained)[1], float32_view(b, g, g.explained), target, "one")
        grads = self.engine(g, b, source=layer).run(seed, where)
        ga = grads.get(layer)
        if ga is None:
            raise XCompileError(f"option layer={layer!r}: the scores do not depend on this tensor")
        with b.scope("gradcam"):
            alpha = b.reduce("ReduceMean", ga, [2, 3], keepdims=1, hint="channel_weights")
            cam = b.relu(b.reduce("ReduceSum", b.mul(alpha, float32_view(b, g, layer)), [1], keepdims=1, hint="weighted_sum"), "cam")
            h, w = g.shape(layer)[2:]
            H, W = in_shape[2:]
            mode = self.values["interpolate"]
            up = b.op("MatMul", [b.const(interpolation_matrix(h, H, mode), hint="rows"), cam], "up_rows")
            up = b.op("MatMul", [up, b.const(interpolation_matrix(w, W, mode).T.copy(), hint="cols")], "up_cols")
            rel = b.op("Expand", [up, b.i64([1, in_shape[1], 1, 1])], "per_channel")
        from onnx import TensorProto, helper
        vi = helper.make_tensor_value_info("gradcam_map", TensorProto.FLOAT, ["N", 1, h, w])
        return Built(rel, [(cam, vi)])
