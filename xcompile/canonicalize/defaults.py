"""Attribute defaults written out where onnx's own checker needs them: a MeanVarianceNormalization without `axes`
fails onnx's full-check shape inference (its function body reads the attribute), although ONNX defines the
default [0, 2, 3]. Writing the default keeps the node (and what it computes) the model's own."""
from __future__ import annotations

from onnx import helper

from .rewrite import GraphIndex

DEFAULTS = {"MeanVarianceNormalization": {"axes": [0, 2, 3]}}


def explicit_defaults(model, decisions=None) -> int:
    n = 0
    for node in GraphIndex.of(model).nodes:
        for name, value in DEFAULTS.get(node.op_type, {}).items():
            if node.domain in ("", "ai.onnx") and all(a.name != name for a in node.attribute):
                node.attribute.append(helper.make_attribute(name, value))
                n += 1
    return n
