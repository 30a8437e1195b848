"""LRP emitters: ONE generic emitter for linear layers (Conv, Gemm, MatMul with a constant weight) driven by a
Rule object, plus the pass / proportional (Zennit `Norm`) / product emitters. They plug into the generic engine
as op-table overrides; every other op keeps its gradient entry (routing by position, winner-take-all)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..backward.ops.linear import conv_input_grad
from ..backward.table import TABLE
from .rules import Group, Part, Rule

STAB = 1e-6  # Zennit's default stabilizer for Norm


# ----------------------------------------------------------------------------------------- helpers
def stabilize(b, z: str, eps: float, norm_scale: bool = False, rank: int = 2) -> str:
    """z + eps * sign(z), sign(0) = +1 (Zennit). eps == 0 (LRP-0): zero denominators become 1 (0/0 -> 0)."""
    if eps == 0.0:
        return b.where(b.op("Equal", [z, b.f32(0.0)], "is_zero"), b.f32(1.0), z, "safe_z")
    if not norm_scale:
        return b.stabilize(z, eps)
    rms = b.op("Sqrt", [b.reduce("ReduceMean", b.mul(z, z), list(range(1, rank)), keepdims=1, hint="ms")], "rms")
    e = b.mul(rms, b.f32(eps), "eps_scaled")
    sign = b.where(b.op("Less", [z, b.f32(0.0)]), b.f32(-1.0), b.f32(1.0), "sign")
    return b.add(z, b.mul(sign, e), "stabilized")


class Linear:
    """The node's linear map with a replaceable weight/bias: forward(inp, W, b) and adjoint(s, W)."""

    def __init__(self, ctx, live: int, W: np.ndarray, bias):
        self.ctx, self.b, self.live, self.W, self.bias = ctx, ctx.b, live, W, bias
        self.op = ctx.op_type

    def _wname(self, w, original: bool, hint="w"):
        if original:
            return self.ctx.node.input[1 - self.live] if self.op != "Conv" else self.ctx.node.input[1]
        return self.b.const(np.asarray(w, np.float32), hint=hint)

    def forward(self, inp, w, w_is_orig, bias):
        b, ctx = self.b, self.ctx
        wn = self._wname(w, w_is_orig)
        bn = None if bias is None or not np.any(bias) else b.const(np.asarray(bias, np.float32), hint="b")
        if self.op == "Conv":
            attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute}
            return b.op("Conv", [inp, wn] + ([bn] if bn else []), "z", **attrs)
        if self.op == "Gemm":
            ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
            return b.op("Gemm", [inp, wn] + ([bn] if bn else []), "z", transA=ta or None, transB=tb or None)
        # MatMul
        z = b.op("MatMul", [inp, wn] if self.live == 0 else [wn, inp], "z")
        return b.add(z, bn, "z_bias") if bn else z

    def adjoint(self, s, w, w_is_orig):
        b, ctx = self.b, self.ctx
        if self.op == "Conv":
            return conv_input_grad(ctx, s, self._wname(w, w_is_orig))
        if self.op == "Gemm":
            wn = self._wname(w, w_is_orig)
            ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
            if ta:
                return b.op("Gemm", [wn, s], "c", transA=tb or None, transB=1)
            return b.op("Gemm", [s, wn], "c", transB=0 if tb else 1)
        wt = b.transpose(self._wname(w, w_is_orig), [1, 0], "w_t")
        return b.op("MatMul", [s, wt] if self.live == 0 else [wt, s], "c")


def linear_of(ctx):
    """(live input slot, effective weight, effective bias) when the node is a linear layer with constant parameters
    and ONE live input, else None. Gemm's alpha/beta are folded into W and C."""
    op = ctx.op_type
    if op == "Conv":
        W = ctx.const(1)
        if W is None or not ctx.needs(0) or ctx.needs(1):
            return None
        bias = ctx.const(2) if len(ctx.node.input) > 2 and ctx.node.input[2] else None
        if len(ctx.node.input) > 2 and ctx.node.input[2] and bias is None:
            return None
        return 0, W, bias
    if op == "Gemm":
        W = ctx.const(1)
        if W is None or not ctx.needs(0) or ctx.needs(1):
            return None
        C = None
        if len(ctx.node.input) > 2 and ctx.node.input[2]:
            C = ctx.const(2)
            if C is None:
                return None
            C = C * ctx.attr("beta", 1.0)
        alpha = ctx.attr("alpha", 1.0)
        return 0, (W if alpha == 1.0 else W * alpha), C
    if op == "MatMul":
        for live in (0, 1):
            W = ctx.const(1 - live)
            if W is not None and ctx.needs(live) and not ctx.needs(1 - live) and W.ndim == 2 and len(ctx.in_shape(live)) >= 2:
                return live, W, None
    return None


def _zero_pad_before(ctx, live):
    """The constant-zero Pad node feeding the layer (TF-style 'same' padding as a separate node), if any."""
    name = ctx.node.input[live]
    p = ctx.g.producer.get(name)
    if p is None or p.op_type != "Pad" or len(ctx.g.consumers.get(name, [])) != 1:
        return None
    for a in p.attribute:
        if a.name == "mode" and a.s not in (b"constant", b""):
            return None
    if len(p.input) > 2 and p.input[2]:
        v = ctx.g.const(p.input[2])
        if v is None or np.any(v != 0):
            return None
    if len(p.input) < 2 or ctx.g.const(p.input[1]) is None:
        return None
    return p


def _input(ctx, kind: str, a: str, rule: Rule, pad=None) -> str:
    b = ctx.b
    if kind in ("ones", "low", "high") and pad is not None:
        # constant inputs live on the unpadded tensor and get the same zero padding (as a conv's own pads would)
        inner = ctx.engine.fwd(pad.input[0])
        t = _input(ctx, kind, inner, rule)
        return b.op("Pad", [t] + list(pad.input[1:]), f"{kind}_padded", mode="constant")
    if kind == "x":
        return a
    if kind == "pos":
        return b.relu(a, "a_pos")
    if kind == "neg":
        return b.negative(a, "a_neg")
    if kind == "ones":
        return b.add(b.zeros_like(a), b.f32(1.0), "ones")
    if kind in ("low", "high"):
        v = rule.p.get(kind)
        return b.add(b.zeros_like(a), b.const(np.asarray(v, np.float32), hint=kind), kind)
    raise ValueError(kind)


def emit_rule(ctx, R: str, rule: Rule, lin) -> list:
    """The four LRP steps for one linear node under `rule` (every group / part of it)."""
    b = ctx.b
    live, W, bias = lin
    L = Linear(ctx, live, W, bias)
    a = ctx.x(live)
    orig_w = W is ctx.const(1 - live if ctx.op_type == "MatMul" else 1)
    rank = len(ctx.out_shape(0))
    inputs, total = {}, []
    pad = _zero_pad_before(ctx, live)
    for gi, group in enumerate(rule.groups()):
        with b.scope(f"{rule.name}{gi}" if len(rule.groups()) > 1 else rule.name):
            terms = []
            mods = []
            for part in group.parts:
                w = part.weight(W)
                same = w is W and orig_w
                bb = part.bias(bias)
                if part.input not in inputs:
                    inputs[part.input] = _input(ctx, part.input, a, rule, pad)
                inp = inputs[part.input]
                if same and part.input == "x" and bb is bias and len(group.parts) == 1:
                    # the layer's own output: recomputing it could round differently, and where z is a cancellation
                    # (|z| << |w||a|) the ratio R / z -- R carries the forward z -- would amplify that difference
                    z = ctx.y(0)
                else:
                    z = L.forward(inp, w, same, bb)
                terms.append(z if part.sign > 0 else b.neg(z))
                mods.append((part, inp, w, same))
            z = b.sum(terms, "z_sum")
            s = b.div(R, stabilize(b, z, group.eps, group.norm_scale, rank), "s")
            if group.mask:
                zo = ctx.y(0)
                cond = b.op("Greater" if group.mask == "pos" else "Less", [zo, b.f32(0.0)], f"mask_{group.mask}")
                s = b.where(cond, s, b.f32(0.0), "s_masked")
            for part, inp, w, same in mods:
                c = L.adjoint(s, w, same)
                r = c if part.input == "ones" else b.mul(inp, c, "r")
                coef = part.sign * group.coef
                if coef != 1.0:
                    r = b.mul(r, b.f32(coef), "r_scaled")
                total.append(r)
    out = [None] * len(ctx.node.input)
    out[live] = b.sum(total, "relevance")
    return out


# ------------------------------------------------------------------------------- other treatments
def gradient(ctx, gy):
    return TABLE[ctx.op_type].fn(ctx, gy)


def pass_through(ctx, gy):
    """Relevance unchanged (Zennit `Pass`), summed over broadcast axes for each live input."""
    out = []
    for k in range(len(ctx.node.input)):
        if not ctx.needs(k) or gy[0] is None:
            out.append(None)
        elif tuple(ctx.in_shape(k)) == tuple(ctx.out_shape(0)):
            out.append(gy[0])
        else:
            out.append(ctx.unbroadcast(gy[0], ctx.out_shape(0), ctx.in_shape(k)))
    return out


def proportional(ctx, gy, weights=None, stabilizer: float = STAB):
    """Zennit `Norm`: R_k = x_k * VJP_k(R / stab(y)) — each input gets relevance in proportion to its contribution
    to the output (residual sums, average pools, means). `weights` scales input k (product rule: gate/split)."""
    b = ctx.b
    s = b.div(gy[0], b.stabilize(ctx.y(0), stabilizer), "s")
    vjp = TABLE[ctx.op_type].fn(ctx, [s] + [None] * (len(gy) - 1))
    out = []
    for k, v in enumerate(vjp):
        w = 1.0 if weights is None else weights[k]
        if v is None or not ctx.needs(k) or w == 0.0:
            out.append(None)
            continue
        r = b.mul(ctx.x(k), v, "r")
        out.append(r if w == 1.0 else b.mul(r, b.f32(w), "r_share"))
    return out


def std_constant(ctx, gy, stabilizer: float = STAB):
    """LayerNorm as AttnLRP treats it (LXT: `y = (x - mean) / stop_gradient(std)`): with the standard deviation held
    constant, x -> scale * (x - mean(x)) / std + bias is linear, and relevance goes through that map by LRP-0
    (bias absorbs its share): R_x = x * J^T (R / y), J^T g = (scale g - mean(scale g)) / std over the normalized axes."""
    b = ctx.b
    rank = len(ctx.in_shape(0))
    axes = list(range(ctx.attr("axis", -1) % rank, rank))
    x = ctx.x(0)
    xc = b.sub(x, b.reduce("ReduceMean", x, axes, keepdims=1, hint="mean"), "centered")
    var = b.reduce("ReduceMean", b.mul(xc, xc), axes, keepdims=1, hint="var")
    inv = b.op("Reciprocal", [b.op("Sqrt", [b.add(var, b.f32(ctx.attr("epsilon", 1e-5)))])], "inv_std")
    gh = b.mul(b.div(gy[0], b.stabilize(ctx.y(0), stabilizer), "s"), ctx.x(1), "s_scaled")
    g = b.mul(inv, b.sub(gh, b.reduce("ReduceMean", gh, axes, keepdims=1)), "vjp")
    return [b.mul(x, g, "r")] + [None] * (len(ctx.node.input) - 1)


def maxpool_proportional(ctx, gy):
    """MaxPool as the overview's VGG recipe does: relevance spread in proportion to the window's activations
    (the average-pool backward), instead of winner-take-all."""
    from ..backward.engine import NodeContext
    attrs = {k: ctx.attr(k) for k in ("kernel_shape", "strides", "pads", "ceil_mode", "auto_pad") if ctx.attr(k) is not None}
    fake = helper.make_node("AveragePool", [ctx.node.input[0]], [ctx.node.output[0]], name=ctx.node.name, **attrs)
    fctx = NodeContext(ctx.engine, fake, ctx._live)
    b = ctx.b
    avg = b.op("AveragePool", [ctx.x(0)], "window_mean", **attrs)
    s = b.div(gy[0], b.stabilize(avg, STAB), "s")
    v = TABLE["AveragePool"].fn(fctx, [s])[0]
    return [b.mul(ctx.x(0), v, "r")]
