"""LRP emitters, called by the rule objects of `rules.py`: ONE generic emitter for linear layers (Conv, Gemm, MatMul
with a constant weight) driven by a Rule's groups, plus the pass / proportional (Zennit `Norm`) / product /
std-constant / maxpool-proportional emitters. Nothing here chooses a rule."""
from __future__ import annotations

import numpy as np

from ..backward.ops.linear import conv_input_grad
from ..backward.ops.normalization import normalization_vjp
from ..backward.table import TABLE
from ..graph import attrs
from . import ranges

STAB = 1e-6  # Zennit's default stabilizer for Norm


# ----------------------------------------------------------------------------------------- helpers


class Linear:
    """The node's linear map with a replaceable weight/bias: forward(inp, W, b) and adjoint(s, W). Weights are graph
    names: the layer's own initializer, or maps of it derived in the graph (`weight`)."""

    def __init__(self, ctx, view):
        self.ctx, self.b, self.live, self.view = ctx, ctx.b, view.slot, view
        self.op = ctx.op_type
        self.orig = view.weight is ctx.const(view.weight_slot)
        self._base = None
        self._derived = {}

    def base(self) -> str:
        """W in the graph: the initializer itself (float16 ones through a Cast), else -- a weight computed at compile
        time (Gemm's alpha folded in, a dequantized or BN-folded weight) -- stored once."""
        if self._base is None:
            self._base = (self.ctx.x(self.view.weight_slot) if self.orig
                          else self.b.const(np.asarray(self.view.weight, np.float32), hint="w"))
        return self._base

    def weight(self, rho, w) -> str:
        """rho(W) as a graph tensor: derived from W in the graph for a WeightMap (onnxruntime folds it at session
        creation), else the numpy value `w` stored."""
        if w is self.view.weight:
            return self.base()
        key = getattr(rho, "key", None)
        if key is None or getattr(rho, "graph", None) is None:
            return self.b.const(np.asarray(w, np.float32), hint="w")
        if key not in self._derived:
            self._derived[key] = rho.graph(self.b, self.base(), self.view.weight.shape)
        return self._derived[key]

    def full_bias(self, v: float) -> np.ndarray:
        """A bias of value v in the layer's bias shape ([C_out] for Conv / Gemm; a scalar for MatMul)."""
        if self.op == "MatMul":
            return np.float32(v)
        n_out = self.view.weight.shape[0 if self.op == "Conv" or self.ctx.attr("transB", 0) else 1]
        return np.full(n_out, v, np.float32)

    def forward(self, inp, wn, bias, late=None):
        """z = rho(W) inp + bias; `late`: a [1] zero that z must wait for (see _zero_after), added to the bias."""
        b, ctx = self.b, self.ctx
        bn = None if bias is None or not np.any(bias) else b.const(np.asarray(bias, np.float32), hint="b")
        if late is not None and self.op in ("Conv", "Gemm"):
            if bn is None:
                bn = b.const(self.full_bias(0.0), hint="b")
            bn = b.add(bn, late, "b_late")
        if self.op == "Conv":
            return b.op("Conv", [inp, wn] + ([bn] if bn else []), "z", **attrs(ctx.node))
        if self.op == "Gemm":
            ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
            return b.op("Gemm", [inp, wn] + ([bn] if bn else []), "z", transA=ta or None, transB=tb or None)
        # MatMul
        z = b.op("MatMul", [inp, wn] if self.live == 0 else [wn, inp], "z")
        return b.add(z, bn, "z_bias") if bn else z

    def adjoint(self, s, wn):
        b, ctx = self.b, self.ctx
        if self.op == "Conv":
            return conv_input_grad(ctx, s, wn)
        if self.op == "Gemm":
            ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
            if ta:
                return b.op("Gemm", [wn, s], "c", transA=tb or None, transB=1)
            return b.op("Gemm", [s, wn], "c", transB=0 if tb else 1)
        wt = b.transpose(wn, [1, 0], "w_t")
        return b.op("MatMul", [s, wt] if self.live == 0 else [wt, s], "c")


def _zero_pad_before(ctx, live):
    """The constant-zero Pad node feeding the layer (TF-style 'same' padding as a separate node), if any."""
    name = ctx.node.input[live]
    p = ctx.g.producer.get(name)
    if p is None or p.op_type != "Pad" or len(ctx.g.consumers.get(name, [])) != 1:
        return None
    if attrs(p).get("mode", "constant") not in ("constant", ""):
        return None
    if len(p.input) > 2 and p.input[2]:
        v = ctx.g.const(p.input[2])
        if v is None or np.any(v != 0):
            return None
    if len(p.input) < 2 or ctx.g.const(p.input[1]) is None:
        return None
    return p


def _constant_input(ctx, value, a_name: str, a: str, hint: str) -> str:
    """A constant input (ones, a z^B bound) with batch 1, as Expand of constants: onnxruntime folds it -- and the
    layer's forward on it -- at session creation, so the term costs nothing per call. Falls back to the input's
    full shape when a non-batch dimension is unknown."""
    b = ctx.b
    shape = ctx.g.shapes.get(a_name)
    value = np.asarray(value, np.float32)
    v = b.const(value.reshape(()) if value.size == 1 else value, hint=hint)  # a scalar bound fits any layer's rank
    if shape is None or any(d is None for d in shape[1:]):
        return b.add(b.zeros_like(a), v, hint)
    return b.op("Expand", [v, b.i64([1] + [int(d) for d in shape[1:]])], hint)


def _input(ctx, kind: str, a_name: str, a: str, rule, sign: int, pad=None) -> str:
    b = ctx.b
    if kind in ("ones", "low", "high") and pad is not None:
        # constant inputs live on the unpadded tensor and get the same zero padding (as a conv's own pads would)
        t = _input(ctx, kind, pad.input[0], ctx.engine.fwd(pad.input[0]), rule, sign)
        return b.op("Pad", [t] + list(pad.input[1:]), f"{kind}_padded", mode="constant")
    if kind == "x" or (kind == "pos" and sign > 0) or (kind == "neg" and sign < 0):
        return a
    if kind == "pos":
        return b.relu(a, "a_pos")
    if kind == "neg":
        return b.negative(a, "a_neg")
    if kind == "ones":
        return _constant_input(ctx, 1.0, a_name, a, "ones")
    if kind in ("low", "high"):
        return _constant_input(ctx, rule.p.get(kind), a_name, a, kind)
    raise ValueError(kind)


def _vanishes(kind: str, sign: int, rule) -> bool:
    """Is the input of this kind identically zero? (x- of a non-negative tensor, x+ of a non-positive one, a zero
    z^B bound.)"""
    if kind == "neg":
        return sign > 0
    if kind == "pos":
        return sign < 0
    if kind in ("low", "high"):
        return not np.any(np.asarray(rule.p.get(kind), np.float64))
    return False


def input_sign(g, name: str) -> int:
    """+1 when the tensor is provably >= 0, -1 when <= 0, else 0 (ranges.py)."""
    r = ranges.range_of(g, name)
    return 1 if r.nonneg else -1 if r.nonpos else 0


def _zero_after(ctx, t: str) -> str:
    """A [1] zero computed from one element of `t`: added to the bias of a modified forward z = rho(W) a, it makes
    z wait for the relevance that reaches this layer. Without it onnxruntime's execution order evaluates every
    layer's z (which needs only forward tensors) right after the forward pass and keeps them all alive until the
    backward pass reaches them: an activation-sized tensor per layer at the peak."""
    b = ctx.b
    rank = len(ctx.out_shape(0))
    first = b.reshape(b.slice(t, [0] * rank, [1] * rank, list(range(rank)), hint="first"), [1], "first_flat")
    return b.op("Min", [b.op("Abs", [first], "first_abs"), b.f32(0.0)], "after_relevance")


def emit_rule(ctx, R: str, rule, view) -> list:
    """The four LRP steps for one linear node (`view`: kinds.LinearView) under `rule` (every group / part of it).
    Parts whose input or weight is identically zero are left out (their bias stays in the denominator); a group
    left with no part gives no relevance to the input."""
    b = ctx.b
    live, W, bias = view.slot, view.weight, view.bias
    L = Linear(ctx, view)
    a_name = ctx.node.input[live]
    a = ctx.x(live)
    sign = input_sign(ctx.g, a_name)
    rank = len(ctx.out_shape(0))
    inputs, total = {}, []
    pad = _zero_pad_before(ctx, live)
    groups = rule.groups()
    late = {}

    def after(t):
        if t not in late:
            late[t] = _zero_after(ctx, t)
        return late[t]

    for gi, group in enumerate(groups):
        with b.scope(f"{rule.name}{gi}" if len(groups) > 1 else rule.name):
            kept, net_bias = [], None
            for part in group.parts:
                bb = part.bias(bias)
                if bb is not None and np.any(bb):
                    net_bias = part.sign * bb if net_bias is None else net_bias + part.sign * bb
                if _vanishes(part.input, sign, rule):
                    continue
                w = part.weight(W)
                if w is not None and not np.any(w):
                    continue
                kept.append((part, w, bb))
            if not kept:
                continue
            terms, mods = [], []
            # z >= 0 by construction (non-negative inputs, weights and bias): z + eps sign(z) = z + eps, folded
            # into the bias -- the layer's forward is then the whole denominator
            fold = (group.eps > 0 and not group.norm_scale and (net_bias is None or np.all(net_bias >= 0))
                    and all(p.sign > 0 and (p.input == "ones" or (p.input in ("x", "pos") and sign > 0))
                            and w is not None and np.all(w >= 0) for p, w, _ in kept))
            for k, (part, w, bb) in enumerate(kept):
                if len(group.parts) > 1:  # the group's bias, summed, goes with its first remaining part
                    bb = None if k or net_bias is None else part.sign * net_bias
                if fold and k == 0:
                    bb = L.full_bias(group.eps) + (0 if bb is None else bb)
                if part.input not in inputs:
                    inputs[part.input] = _input(ctx, part.input, a_name, a, rule, sign, pad)
                inp = inputs[part.input]
                wn = L.weight(part.weight, w)
                if w is W and L.orig and part.input == "x" and bb is bias and len(group.parts) == 1:
                    # the layer's own output: recomputing it could round differently, and where z is a cancellation
                    # (|z| << |w||a|) the ratio R / z -- R carries the forward z -- would amplify that difference
                    z = ctx.y(0)
                else:
                    z = L.forward(inp, wn, bb, None if part.input in ("ones", "low", "high") else after(R))
                terms.append(z if part.sign > 0 else b.neg(z))
                mods.append((part, inp, wn))
            z = b.sum(terms, "z_sum")
            s = b.div(R, z if fold else b.stabilize(z, group.eps, norm_scale=group.norm_scale, rank=rank), "s")
            if group.mask:
                zo = ctx.y(0)
                cond = b.op("Greater" if group.mask == "pos" else "Less", [zo, b.f32(0.0)], f"mask_{group.mask}")
                s = b.where(cond, s, b.f32(0.0), "s_masked")
            for part, inp, wn in mods:
                coef = part.sign * group.coef
                if coef != 1.0:  # scale s, not r: the same count of Muls, on the smaller tensor for strided layers
                    c = L.adjoint(b.mul(s, b.f32(coef), "s_scaled"), wn)
                else:
                    c = L.adjoint(s, wn)
                total.append(c if part.input == "ones" else b.mul(inp, c, "r"))
    out = [None] * len(ctx.node.input)
    out[live] = b.sum(total, "relevance") if total else b.zeros_like(a, "relevance")
    return out


# ------------------------------------------------------------------------------- other treatments
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
    y = ctx.y(0)
    if stabilizer > 0 and ctx.op_type in ("Add", "Sum"):
        # b.stabilize with the sign test against a zero that waits for R (_zero_after): a residual sum's
        # denominator is not computed (and kept) at the end of the forward pass, but when R reaches it
        den = b.stabilize(y, stabilizer, after=_zero_after(ctx, gy[0]))
    else:
        den = b.stabilize(y, stabilizer)
    s = b.div(gy[0], den, "s")
    vjp = TABLE[ctx.op_type].fn(ctx, [s] + [None] * (len(gy) - 1))
    out = []
    for k, v in enumerate(vjp):
        w = 1.0 if weights is None else weights[k]
        if v is None or not ctx.needs(k) or w == 0.0:
            out.append(None)
            continue
        x = ctx.x(k)
        r = b.mul(x, v, "r")
        if ctx.op_type == "Softmax":
            # masked attention logits are -inf (or overflow to it: finfo.min + a score in float16): their share is
            # x * 0 = NaN (x * NaN in a fully masked row, whose softmax is NaN: sdpa exports zero it afterwards);
            # LXT's softmax rule reads -inf as 0 (AttnLRP, Achtibat et al. 2024): masked keys get exactly 0
            r = b.where(b.op("Equal", [x, b.f32(-np.inf)], "masked"), b.f32(0.0), r, "unmasked")  # IsInf: no float16
        out.append(r if w == 1.0 else b.mul(r, b.f32(w), "r_share"))
    return out


def product_shares(ctx, gy, weights):
    """Elementwise a * b: operand k's share w_k * a * b * R / (a * b) is w_k * R, passed on without the division
    (a stabilizer would bias it wherever the product is tiny)."""
    return [None if r is None or w == 0.0 else r if w == 1.0 else ctx.b.mul(r, ctx.b.f32(w), "r_share")
            for r, w in zip(pass_through(ctx, gy), weights)]


def std_constant(ctx, gy, stabilizer: float = STAB):
    """LayerNorm as AttnLRP treats it (LXT: `y = (x - mean) / stop_gradient(std)`): with the standard deviation held
    constant, x -> scale * (x - mean(x)) / std + bias is linear, and relevance goes through that map by LRP-0
    (bias absorbs its share): R_x = x * J^T (R / y), J^T g = (scale g - mean(scale g)) / std over the normalized axes."""
    b = ctx.b
    rank = len(ctx.in_shape(0))
    axes = list(range(ctx.attr("axis", -1) % rank, rank))
    gh = b.mul(b.div(gy[0], b.stabilize(ctx.y(0), stabilizer), "s"), ctx.x(1), "s_scaled")
    g = normalization_vjp(b, ctx.x(0), gh, axes, ctx.attr("epsilon", 1e-5), hold_std=True)
    return [b.mul(ctx.x(0), g, "r")] + [None] * (len(ctx.node.input) - 1)


def maxpool_proportional(ctx, gy):
    """MaxPool as the overview's VGG recipe does: relevance spread in proportion to the window's activations
    (the average-pool backward), instead of winner-take-all."""
    window = ("kernel_shape", "strides", "pads", "ceil_mode", "auto_pad")
    pool = {k: ctx.attr(k) for k in window if ctx.attr(k) is not None}
    avg_ctx = ctx.viewed_as("AveragePool", window)
    b = ctx.b
    avg = b.op("AveragePool", [ctx.x(0)], "window_mean", **pool)
    s = b.div(gy[0], b.stabilize(avg, STAB), "s")
    v = TABLE["AveragePool"].fn(avg_ctx, [s])[0]
    return [b.mul(ctx.x(0), v, "r")]
