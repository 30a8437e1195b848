"""The layers PatternNet fits: every linear layer with a constant weight on the relevance path (kinds.linear_view),
seen as a [C, Dg] weight with its gate (the post-activation tensor), and a fingerprint of them that pattern files
carry (a file fitted on another model is refused)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from onnx import helper

from ..errors import XCompileError
from ..graph import attr as _attr
from ..kinds import AFFINE_OPS, RELU_LIKE_OPS, linear_view


@dataclass
class LinearLayer:
    key: str             # the layer's output tensor in the canonical graph (unique)
    node: str            # node name (for messages)
    op: str              # Conv | Gemm | MatMul
    input: str           # forward input tensor x
    gate: str            # tensor whose sign defines "active" (post-activation)
    w2d: np.ndarray      # [C, Dg] effective weight (alpha folded in), float64
    groups: int
    layout: str          # conv | rows ([C, D] like Gemm transB=1) | cols ([D, C])
    weight_shape: tuple  # shape of the weight initializer (the pattern is emitted in this shape)
    positions: int       # samples per data row (output positions, or extra MatMul dims)
    weight_name: str

    @property
    def channels(self) -> int:
        return self.w2d.shape[0]

    @property
    def gated(self) -> bool:
        """Is the layer followed by a ReLU-like activation (else its own output's sign is the "gate")?"""
        return self.gate != self.key

    def pattern_kind(self, kind: str) -> str:
        """`relu` = the two-component pattern where an activation gates the layer and the linear pattern
        where none does (logits, linear projection convs: nothing in the forward pass splits them by sign);
        `relu_all` = a₊ on every layer (iNNvestigate 1.0.8); `linear` = a everywhere."""
        if kind == "relu":
            return "relu" if self.gated else "linear"
        return "relu" if kind == "relu_all" else kind

    def to_layout(self, a2d: np.ndarray) -> np.ndarray:
        """[C, Dg] pattern -> the layout of the weight initializer (the weight's scale: alpha stays out)."""
        if self.layout == "conv":
            return a2d.reshape(self.weight_shape)
        return a2d if self.layout == "rows" else a2d.T

    def describe(self) -> dict:
        return {"key": self.key, "node": self.node, "op": self.op, "groups": self.groups,
                "weight_shape": list(self.weight_shape), "positions": self.positions}


def _find_gate(g, t: str) -> str:
    """The post-activation tensor of a linear layer: follow single-consumer per-channel affine ops
    (bias Add, BatchNormalization, Mul/Div by constants) to a Relu/Clip; else the layer output itself."""
    seen = 0
    cur = t
    while seen < 8:
        seen += 1
        cons = g.consumers.get(cur, [])
        if len(cons) != 1:
            break
        n = cons[0]
        if n.op_type in RELU_LIKE_OPS:
            return n.output[0]
        if n.op_type == "BatchNormalization" or (
                n.op_type in AFFINE_OPS and len(n.input) == 2 and n.input[0] == cur and g.is_const(n.input[1])):
            try:
                if g.shape(n.output[0]) != g.shape(cur):
                    break
            except KeyError:
                break
            cur = n.output[0]
            continue
        break
    return t


def linear_layers(g, where: str = "model") -> list[LinearLayer]:
    """Every linear layer with a constant weight on the data-input -> scores path, in graph order."""
    from ..backward.builder import Builder
    from ..backward.engine import Engine
    live, nodes = Engine(g, Builder(g.opset)).paths()
    out = []
    for node in nodes:
        view = linear_view(g, node, live, need_const_bias=False)
        if view is None or view.slot != 0:  # patterns: x @ W (or W * x for Conv) with the activation in slot 0
            continue
        x, wname = node.input[0], node.input[1]
        W = g.const(wname)
        name = node.name or node.output[0]
        key = node.output[0]
        gate = _find_gate(g, key)
        if node.op_type == "Conv":
            groups = int(_attr(node, "group", 1))
            C = W.shape[0]
            w2d = W.reshape(C, -1).astype(np.float64)
            positions = int(np.prod(g.shape(key)[2:]))
            layout = "conv"
        elif node.op_type == "Gemm":
            if W.ndim != 2:
                continue
            alpha = float(_attr(node, "alpha", 1.0))
            tb = int(_attr(node, "transB", 0))
            w2d = (W if tb else W.T).astype(np.float64) * alpha
            groups, positions, layout = 1, 1, ("rows" if tb else "cols")
        else:  # MatMul x @ W
            if W.ndim != 2 or len(g.shape(x)) < 2:
                continue
            w2d = W.T.astype(np.float64)
            groups, layout = 1, "cols"
            positions = int(np.prod(g.shape(x)[1:-1])) if len(g.shape(x)) > 2 else 1
        out.append(LinearLayer(key, name, node.op_type, x, gate, w2d, groups, layout, tuple(W.shape),
                               positions, wname))
    if not out:
        raise XCompileError(f"{where}: no linear layer (Conv, Gemm, MatMul with a constant weight) on the path from the input to the scores")
    return out


def fingerprint(g, layers: list[LinearLayer]) -> str:
    """sha256 of the linear layers (names, geometry, weights) and the input shape."""
    h = hashlib.sha256()
    h.update(json.dumps([list(g.shape(g.data_input)[1:])]).encode())
    for L in layers:
        node = g.producer[L.key]
        # raw attribute values (bytes as bytes): the fingerprint of files already written must not change
        attrs = sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute)
        h.update(json.dumps([L.key, L.op, list(L.weight_shape), attrs]).encode())
        h.update(np.ascontiguousarray(g.const(L.weight_name), dtype=np.float32).tobytes())
    return h.hexdigest()
