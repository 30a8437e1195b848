"""Plain gradient methods: they differ only in the seed handling and the ReLU backward."""
from __future__ import annotations

import numpy as np

from ..backward.engine import float32_view
from ..backward.table import TABLE, Backward
from .base import Method, Param, as_bool, register


@register
class Gradient(Method):
    name = "gradient"
    summary = "dF_c/dx (saliency)"
    token_relevance = "norm"


@register
class InputXGradient(Method):
    name = "input_x_gradient"
    summary = "x * dF_c/dx"

    def finish(self, g, b, r):
        return b.mul(float32_view(b, g, g.data_input), r, "input_x_gradient")


def _guided_relu(ctx, gy):
    b = ctx.b
    active = b.cast(b.op("Greater", [ctx.x(0), b.f32(0.0)], "active"), 1)
    return [b.mul(b.relu(gy[0]), active)]


def _deconv_relu(ctx, gy):
    return [ctx.b.relu(gy[0])]


def _rectifying_clip(ctx) -> bool:
    """Clip(x, 0, max) is a rectifier (ReLU6 / ReLU-n); a Clip with a negative or missing floor is not."""
    node = ctx.node
    if len(node.input) < 2 or not node.input[1]:
        return False
    low = ctx.g.const(node.input[1])
    return low is not None and float(np.asarray(low)) == 0.0


def _modified_clip(relu_rule):
    def emit(ctx, gy):
        if not _rectifying_clip(ctx):
            return TABLE["Clip"].fn(ctx, gy)
        # the forward gate of the clip (0 < x < max) for guided backprop; the rectified signal for both
        grad = TABLE["Clip"].fn(ctx, [ctx.b.relu(gy[0])])[0]
        return [grad if relu_rule is _guided_relu else ctx.b.relu(gy[0])]
    return emit


class _ModifiedRelu(Method):
    """Captum and Zennit modify only ReLU modules, so by default ReLU6 (Clip(x, 0, 6): MobileNetV2,
    EfficientNet-Lite) keeps its plain gradient there too; ``clip=true`` treats it as the rectifier it is."""
    relu_rule = staticmethod(_guided_relu)
    token_relevance = None
    params = {"clip": Param(False, "also modify rectifying Clip(x, 0, max) nodes (ReLU6): true/false", as_bool)}

    @property
    def overrides(self):
        table = {"Relu": Backward(self.relu_rule)}
        if self.values["clip"]:
            table["Clip"] = Backward(_modified_clip(self.relu_rule), TABLE["Clip"].inputs)
        return table


@register
class GuidedBackprop(_ModifiedRelu):
    name = "guided_backprop"
    summary = "ReLU backward 1[x>0] * max(r, 0)"
    relu_rule = staticmethod(_guided_relu)


@register
class DeconvNet(_ModifiedRelu):
    name = "deconvnet"
    summary = "ReLU backward max(r, 0), no forward gating"
    relu_rule = staticmethod(_deconv_relu)
