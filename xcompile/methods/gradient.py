"""Plain gradient methods: they differ only in the seed handling and the ReLU backward."""
from __future__ import annotations

from ..backward.table import Backward
from .base import Method, register


@register
class Gradient(Method):
    name = "gradient"
    summary = "dF_c/dx (saliency)"


@register
class InputXGradient(Method):
    name = "input_x_gradient"
    summary = "x * dF_c/dx"

    def finish(self, g, b, r):
        return b.mul(g.data_input, r, "input_x_gradient")


def _guided_relu(ctx, gy):
    b = ctx.b
    active = b.op("Greater", [ctx.x(0), b.f32(0.0)], "active")
    return [b.where(active, b.relu(gy[0]), b.f32(0.0))]


def _deconv_relu(ctx, gy):
    return [ctx.b.relu(gy[0])]


@register
class GuidedBackprop(Method):
    name = "guided_backprop"
    summary = "ReLU backward 1[x>0] * max(r, 0)"
    overrides = {"Relu": Backward(_guided_relu)}


@register
class DeconvNet(Method):
    name = "deconvnet"
    summary = "ReLU backward max(r, 0), no forward gating"
    overrides = {"Relu": Backward(_deconv_relu)}
