"""DeepLIFT's exact difference rules for the blocks of token transformers (docs/deeplift.md, "Transformer blocks").

DeepLIFT's summation-to-delta, sum(relevance) = F(x) - F(x'), holds when every node's multipliers m_k satisfy
y - y' = sum_k m_k (x_k - x_k') exactly; the chain rule then carries it to the input. Linear nodes do with their
gradient; elementwise nonlinearities with the Rescale rule; these rules cover the rest of a transformer block:

- a product of two data-dependent operands (MatMul Q K^T and attention x V, Gemm, a two-operand Einsum): the
  gradient with each operand replaced by its midpoint (x + x')/2, since A B - A' B' = (A - A') (B + B')/2 +
  (A + A')/2 (B - B') for any bilinear map;
- Softmax: split as exp(z - c) / sum(exp(z - c)) with ONE shift c = max(max z, max z') for both passes (Rescale on
  the Exp, the exact quotient rule on the division, the sum linear); masked logits (-inf in both passes) get 0;
- LayerNormalization: centring (linear), the square (c^2 - c'^2 = (c + c')(c - c'), exact), the mean (linear),
  Sqrt (Rescale; its derivative at the midpoint where the variances nearly agree), the quotient (exact), scale and
  bias (linear).

RMSNorm (Pow, ReduceMean, Sqrt, Div / Reciprocal, Mul as exporters write it), SiLU gating (x * sigmoid(x) * up),
GELU and rotary embeddings (products with constant cos / sin, Slice, Neg, Concat) need nothing new: Rescale, the
product rule in methods/deeplift.py and linear nodes already split them exactly."""
from __future__ import annotations

from ..backward.engine import float32_view
from ..backward.table import TABLE

NEAR_REL = 1e-3  # Sqrt: relative variance difference below which the midpoint derivative replaces the quotient


def ref(ctx, name: str) -> str:
    """The tensor `name` in the reference forward pass (constants are shared)."""
    return float32_view(ctx.b, ctx.g, name, name if ctx.g.is_const(name) else ctx.method.reference(name))


class _Midpoints:
    """The node's context with every data-dependent input read as the midpoint (x + x') / 2."""

    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def x(self, k: int = 0) -> str:
        ctx = self._ctx
        if not ctx.needs(k):
            return ctx.x(k)
        b = ctx.b
        return b.mul(b.add(ctx.x(k), ref(ctx, ctx.node.input[k])), b.f32(0.5), "midpoint")


def bilinear(ctx, gy):
    """MatMul / Gemm / Einsum: with two data-dependent operands, the gradient at the midpoints (exact)."""
    live = [k for k in range(len(ctx.node.input)) if ctx.needs(k)]
    fn = TABLE[ctx.op_type].fn
    if ctx.op_type == "Gemm":
        live = [k for k in live if k < 2]
    if len(live) != 2:  # linear in its one data operand (or more than bilinear: gradient)
        return fn(ctx, gy)
    return fn(_Midpoints(ctx), gy)


def _axis(ctx) -> int:
    return ctx.attr("axis", -1) % len(ctx.in_shape(0))


def softmax(ctx, gy):
    b = ctx.b
    ax = [_axis(ctx)]
    z, zr = ctx.x(0), ref(ctx, ctx.node.input[0])
    c = b.op("Max", [b.reduce("ReduceMax", z, ax, keepdims=1), b.reduce("ReduceMax", zr, ax, keepdims=1)], "shift")
    c = b.where(b.op("IsInf", [c]), b.f32(0.0), c, "finite_shift")  # a fully masked row
    e, er = b.op("Exp", [b.sub(z, c)], "e"), b.op("Exp", [b.sub(zr, c)], "e_ref")
    s, sr = b.reduce("ReduceSum", e, ax, keepdims=1), b.reduce("ReduceSum", er, ax, keepdims=1)
    half = b.f32(0.5)
    g_e = b.mul(gy[0], b.mul(b.add(b.op("Reciprocal", [s]), b.op("Reciprocal", [sr])), half), "quotient")
    g_s = b.mul(b.reduce("ReduceSum", b.mul(gy[0], b.mul(b.add(e, er), half)), ax, keepdims=1),
                b.neg(b.op("Reciprocal", [b.mul(s, sr)])), "sum_multiplier")
    g_e = b.add(g_e, g_s)
    dz = b.sub(z, zr, "delta_in")
    dz = b.where(b.op("IsNaN", [dz]), b.f32(0.0), dz, "delta_in_masked")  # -inf in both passes: no difference
    near = b.op("Less", [b.op("Abs", [dz]), b.f32(1e-2)], "near")
    mid = b.op("Exp", [b.sub(b.mul(b.add(z, zr), half), c)], "midpoint_slope")
    ratio = b.div(b.sub(e, er), b.where(near, b.f32(1.0), dz), "rescale")
    return [b.mul(g_e, b.where(near, mid, ratio), "multiplier")]


def layernorm(ctx, gy):
    if any(ctx.needs(k) for k in (1, 2)):  # a data-dependent scale or bias: the gradient (not split)
        return TABLE["LayerNormalization"].fn(ctx, gy)
    b = ctx.b
    rank = len(ctx.in_shape(0))
    axes = list(range(ctx.attr("axis", -1) % rank, rank))
    eps = b.f32(float(ctx.attr("epsilon", 1e-5)))
    size = 1
    for d in ctx.in_shape(0)[axes[0]:]:
        size *= int(d)
    x, xr = ctx.x(0), ref(ctx, ctx.node.input[0])
    half = b.f32(0.5)
    c = b.sub(x, b.reduce("ReduceMean", x, axes, keepdims=1), "centred")
    cr = b.sub(xr, b.reduce("ReduceMean", xr, axes, keepdims=1), "centred_ref")
    v, vr = b.reduce("ReduceMean", b.mul(c, c), axes, keepdims=1), b.reduce("ReduceMean", b.mul(cr, cr), axes, keepdims=1)
    sig, sigr = b.op("Sqrt", [b.add(v, eps)], "std"), b.op("Sqrt", [b.add(vr, eps)], "std_ref")
    g_n = b.mul(gy[0], ctx.x(1)) if len(ctx.node.input) > 1 and ctx.node.input[1] else gy[0]
    g_c = b.mul(g_n, b.mul(b.add(b.op("Reciprocal", [sig]), b.op("Reciprocal", [sigr])), half), "quotient")
    g_sig = b.mul(b.reduce("ReduceSum", b.mul(g_n, b.mul(b.add(c, cr), half)), axes, keepdims=1),
                  b.neg(b.op("Reciprocal", [b.mul(sig, sigr)])), "std_multiplier")
    dv = b.sub(v, vr, "delta_variance")
    mean_v = b.add(b.mul(b.add(v, vr), half), eps)
    near = b.op("Less", [b.op("Abs", [dv]), b.mul(mean_v, b.f32(NEAR_REL))], "near")
    slope = b.where(near, b.div(half, b.op("Sqrt", [mean_v])), b.div(b.sub(sig, sigr), b.where(near, b.f32(1.0), dv)),
                    "sqrt_multiplier")
    g_v = b.mul(g_sig, slope)
    g_c = b.add(g_c, b.mul(g_v, b.mul(b.add(c, cr), b.f32(1.0 / size))), "centred_multiplier")
    return [b.sub(g_c, b.reduce("ReduceMean", g_c, axes, keepdims=1), "multiplier"), None, None]
