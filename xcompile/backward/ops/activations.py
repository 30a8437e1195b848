"""Pointwise nonlinearities and softmax. Masks follow PyTorch's backward (strict inequalities)."""
from __future__ import annotations

import math

import onnx

from ..table import backward


def _gate(ctx, cond, g, other=None):
    b = ctx.b
    if other is None:  # Cast + Mul: 1.5-3x faster than Where with a broadcast 0 on onnxruntime's CPU EP
        return b.mul(g, b.cast(cond, onnx.TensorProto.FLOAT), "gate")
    return b.where(cond, g, other)


@backward("Relu")
def relu(ctx, gy):
    # the gate reads the output (y > 0 exactly where x > 0): the pre-activation need not exist, so onnxruntime
    # keeps Conv+Relu fused (and in its blocked NCHWc layout) in the forward pass
    b = ctx.b
    return [_gate(ctx, b.op("Greater", [ctx.y(), b.f32(0.0)], "active"), gy[0])]


@backward("LeakyRelu")
def leaky_relu(ctx, gy):
    b = ctx.b
    alpha = ctx.attr("alpha", 0.01)
    return [_gate(ctx, b.op("Greater", [ctx.x(0), b.f32(0.0)], "active"), gy[0], b.mul(gy[0], b.f32(alpha)))]


@backward("PRelu", inputs=(0,))
def prelu(ctx, gy):
    b = ctx.b
    return [_gate(ctx, b.op("Greater", [ctx.x(0), b.f32(0.0)], "active"), gy[0], b.mul(gy[0], ctx.x(1)))]


@backward("Elu")
def elu(ctx, gy):
    b = ctx.b
    alpha = ctx.attr("alpha", 1.0)
    neg = b.mul(gy[0], b.add(ctx.y(), b.f32(alpha)))
    return [_gate(ctx, b.op("Greater", [ctx.x(0), b.f32(0.0)], "active"), gy[0], neg)]


@backward("Clip", inputs=(0,))
def clip(ctx, gy):
    # hardtanh/ReLU6 semantics: pass where min < x < max, read off the output y = min(max(x, min), max) (y > min
    # exactly where x > min, y < max where x < max): Conv+Clip stay fused in the forward pass, as for Relu
    b = ctx.b
    conds = []
    if len(ctx.node.input) > 1 and ctx.node.input[1]:
        conds.append(b.op("Greater", [ctx.y(), ctx.x(1)]))
    if len(ctx.node.input) > 2 and ctx.node.input[2]:
        conds.append(b.op("Less", [ctx.y(), ctx.x(2)]))
    if not conds:
        return [gy[0]]
    cond = conds[0] if len(conds) == 1 else b.op("And", conds, "inside")
    return [_gate(ctx, cond, gy[0])]


@backward("Sigmoid")
def sigmoid(ctx, gy):
    b = ctx.b
    return [b.mul(gy[0], b.mul(ctx.y(), b.sub(b.f32(1.0), ctx.y())))]


@backward("Tanh")
def tanh(ctx, gy):
    b = ctx.b
    return [b.mul(gy[0], b.sub(b.f32(1.0), b.mul(ctx.y(), ctx.y())))]


@backward("Softplus")
def softplus(ctx, gy):
    b = ctx.b
    return [b.mul(gy[0], b.op("Sigmoid", [ctx.x(0)]))]


@backward("HardSigmoid")
def hard_sigmoid(ctx, gy):
    b = ctx.b
    alpha, beta = ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5)
    t = b.add(b.mul(ctx.x(0), b.f32(alpha)), b.f32(beta))
    inside = b.op("And", [b.op("Greater", [t, b.f32(0.0)]), b.op("Less", [t, b.f32(1.0)])], "inside")
    return [_gate(ctx, inside, b.mul(gy[0], b.f32(alpha)))]


@backward("HardSwish")
def hard_swish(ctx, gy):
    # PyTorch: 0 for x < -3, g * (x/3 + 1/2) for x <= 3, g above
    b = ctx.b
    x, g = ctx.x(0), gy[0]
    mid = b.mul(g, b.add(b.mul(x, b.f32(1.0 / 3.0)), b.f32(0.5)))
    upper = b.where(b.op("LessOrEqual", [x, b.f32(3.0)]), mid, g)
    return [b.where(b.op("Less", [x, b.f32(-3.0)]), b.f32(0.0), upper)]


@backward("Erf")
def erf(ctx, gy):
    b = ctx.b
    x = ctx.x(0)
    d = b.mul(b.op("Exp", [b.neg(b.mul(x, x))]), b.f32(2.0 / math.sqrt(math.pi)))
    return [b.mul(gy[0], d)]


@backward("Gelu")
def gelu(ctx, gy):
    b = ctx.b
    x = ctx.x(0)
    approx = ctx.attr("approximate", "none")
    if approx == "tanh":
        k = math.sqrt(2.0 / math.pi)
        inner = b.mul(b.add(x, b.mul(b.mul(b.mul(x, x), x), b.f32(0.044715))), b.f32(k))
        t = b.op("Tanh", [inner])
        dinner = b.mul(b.add(b.f32(1.0), b.mul(b.mul(x, x), b.f32(3 * 0.044715))), b.f32(k))
        d = b.add(b.mul(b.f32(0.5), b.add(b.f32(1.0), t)),
                  b.mul(b.mul(b.mul(b.f32(0.5), x), b.sub(b.f32(1.0), b.mul(t, t))), dinner))
    else:
        cdf = b.mul(b.add(b.op("Erf", [b.mul(x, b.f32(1.0 / math.sqrt(2.0)))]), b.f32(1.0)), b.f32(0.5))
        pdf = b.mul(b.op("Exp", [b.mul(b.mul(x, x), b.f32(-0.5))]), b.f32(1.0 / math.sqrt(2.0 * math.pi)))
        d = b.add(cdf, b.mul(x, pdf))
    return [b.mul(gy[0], d)]


def _axis(ctx):
    axis = ctx.attr("axis", -1)
    return axis % len(ctx.in_shape(0))


@backward("Softmax")
def softmax(ctx, gy):
    b = ctx.b
    y, g = ctx.y(), gy[0]
    if any(c.op_type == "IsNaN" for c in ctx.g.consumers.get(ctx.node.output[0], [])):
        # PyTorch's sdpa export zeroes the NaN rows of a fully masked softmax (Where(IsNaN(s), 0, s)): those rows
        # are constants of the model, so their backward is 0 (NaN * 0 would spread NaN over every key)
        y = b.where(b.op("IsNaN", [y]), b.f32(0.0), y)
    s = b.reduce("ReduceSum", b.mul(g, y), [_axis(ctx)], keepdims=1)
    return [b.mul(y, b.sub(g, s))]


@backward("LogSoftmax")
def log_softmax(ctx, gy):
    b = ctx.b
    s = b.reduce("ReduceSum", gy[0], [_axis(ctx)], keepdims=1)
    return [b.sub(gy[0], b.mul(b.op("Exp", [ctx.y()]), s))]


@backward("Selu")
def selu(ctx, gy):
    # y = gamma * x (x > 0), gamma * alpha * (e^x - 1) else: dy/dx = gamma * alpha * e^x = y + gamma * alpha
    b = ctx.b
    alpha, gamma = ctx.attr("alpha", 1.67326319217681884765625), ctx.attr("gamma", 1.05070102214813232421875)
    pos = b.mul(gy[0], b.f32(gamma))
    neg = b.mul(gy[0], b.add(ctx.y(), b.f32(alpha * gamma)))
    return [_gate(ctx, b.op("Greater", [ctx.x(0), b.f32(0.0)], "active"), pos, neg)]


@backward("Celu")
def celu(ctx, gy):
    # y = max(0, x) + min(0, alpha * (exp(x / alpha) - 1)): dy/dx = 1 (x > 0), exp(x / alpha) else
    b = ctx.b
    alpha = ctx.attr("alpha", 1.0)
    neg = b.mul(gy[0], b.op("Exp", [b.mul(ctx.x(0), b.f32(1.0 / alpha))]))
    return [_gate(ctx, b.op("Greater", [ctx.x(0), b.f32(0.0)], "active"), gy[0], neg)]


@backward("ThresholdedRelu")
def thresholded_relu(ctx, gy):
    b = ctx.b
    return [_gate(ctx, b.op("Greater", [ctx.x(0), b.f32(ctx.attr("alpha", 1.0))], "active"), gy[0])]


@backward("Mish")
def mish(ctx, gy):
    # y = x tanh(softplus(x)): dy/dx = t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x))
    b = ctx.b
    x = ctx.x(0)
    t = b.op("Tanh", [b.op("Softplus", [x])], "t")
    d = b.add(t, b.mul(b.mul(x, b.op("Sigmoid", [x])), b.sub(b.f32(1.0), b.mul(t, t))))
    return [b.mul(gy[0], d)]


@backward("Sin")
def sin(ctx, gy):
    return [ctx.b.mul(gy[0], ctx.b.op("Cos", [ctx.x(0)]))]


@backward("Cos")
def cos(ctx, gy):
    b = ctx.b
    return [b.neg(b.mul(gy[0], b.op("Sin", [ctx.x(0)])))]


@backward("Softsign")
def softsign(ctx, gy):
    # y = x / (1 + |x|): dy/dx = 1 / (1 + |x|)^2
    b = ctx.b
    d = b.add(b.op("Abs", [ctx.x(0)]), b.f32(1.0))
    return [b.div(gy[0], b.mul(d, d))]


@backward("Shrink")
def shrink(ctx, gy):
    # y = x -+ bias outside [-lambd, lambd], 0 inside: the gradient passes where x < -lambd or x > lambd
    b = ctx.b
    lambd = ctx.attr("lambd", 0.5)
    out = b.op("Or", [b.op("Less", [ctx.x(0), b.f32(-lambd)]), b.op("Greater", [ctx.x(0), b.f32(lambd)])], "outside")
    return [_gate(ctx, out, gy[0])]
