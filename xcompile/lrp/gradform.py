"""LRP in gradient form: relevance carried as R = a * g (a the forward tensor, g a modified gradient).

Every rule of AttnLRP (Achtibat et al. 2024) is, with its 1e-9 stabilizers, of the form R_x = x * VJP(R / y): the
epsilon rule on a linear layer, the proportional rule on sums and the softmax, the uniform / signal shares of a
product, LayerNorm with its std held constant. With R_y = y * g_y the division cancels: R_x = x * VJP(g_y), so the
whole rule set is ONE modified backward pass of g (the plain VJP through linear layers, sums and the softmax; the
VJP with the std constant through LayerNorm; w_k times the VJP into operand k of a product) and one product with
the input at the end -- no per-layer Less / Where / Add / Div / Mul on every activation, which made AttnLRP 1.3x
the gradient's cost (docs/benchmarks.md, "the gradient near its floor"). This is how LXT computes it too (a
modified autograd pass, then input x gradient).

Each rule object says whether it has such a form at a node (`LRPRule.gradient_form(node, live)`, built from the
emitters below); the method takes the gradient form only when EVERY rule chosen on the relevance path has one and
every stabilizer is at most `TINY` (dropping a 1e-9 stabilizer changes relevance by about 1e-9 / |z|); otherwise
it emits the relevance form (lrp/emitters.py). The relevance is the same up to float rounding
(tests/lrp/test_gradform.py, and the LXT parity tests of tests/methods/test_tokens.py and
tests/lrp/test_lrp_transformers.py at their tolerances). Nothing here chooses a rule."""
from __future__ import annotations

from typing import Callable, Optional

from ..backward.ops.normalization import normalization_vjp
from ..backward.table import TABLE
from ..kinds import ROUTE_OPS

TINY = 1e-9
Emitter = Callable  # (ctx, gy) -> [input gradients], as an op-table emitter
# ops whose outputs are copies of input values (or masked out): the VJP moves g exactly as the rule moves R
COPY_OPS = ROUTE_OPS | {"MaxPool", "Dropout", "Gather", "GatherElements", "GatherND", "Slice", "Pad", "Tile",
                        "Concat", "Split", "Trilu", "DepthToSpace", "SpaceToDepth"}
# Pass (R unchanged) through y = x * c, x / c, -x, x: g_x = R / x = g * y / x is the VJP
SCALING_OPS = ("Mul", "Div", "Neg", "Identity", "Dropout", "Cast")
# Pass through an elementwise f with f(0) = 0: g_x = g * f(x) / x (0 where x = 0, where R_y = f(0) g = 0 too)
ZERO_FIXING_OPS = frozenset({"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Tanh", "Erf", "Gelu", "Mish",
                             "Softsign", "HardSwish", "Shrink", "ThresholdedRelu", "Abs", "Sin", "Sqrt"})


def vjp(ctx, gy):
    """The op's own VJP of g (a linear layer by LRP-0 / epsilon <= TINY, a proportional sum, a routing op)."""
    return TABLE[ctx.op_type].fn(ctx, gy)


def weighted_vjp(weights) -> Emitter:
    """w_k times the VJP into operand k: a product's shares (R_k = w_k x_k VJP_k(R / y) = w_k x_k VJP_k(g))."""
    def emit(ctx, gy):
        b = ctx.b
        out = TABLE[ctx.op_type].fn(ctx, gy)
        return [None if v is None or w == 0.0 or not ctx.needs(k) else v if w == 1.0 else b.mul(v, b.f32(w), "g_share")
                for k, (v, w) in enumerate(zip(out, weights))]
    return emit


def std_constant(ctx, gy):
    """LayerNormalization with its std held constant: the VJP of that linear map (emitters.std_constant without
    the division by y and the product with x)."""
    b = ctx.b
    rank = len(ctx.in_shape(0))
    axes = list(range(ctx.attr("axis", -1) % rank, rank))
    gh = b.mul(gy[0], ctx.x(1), "g_scaled")
    return [normalization_vjp(b, ctx.x(0), gh, axes, ctx.attr("epsilon", 1e-5), hold_std=True)] + \
        [None] * (len(ctx.node.input) - 1)


def _identity(ctx, gy):
    return [gy[0]] + [None] * (len(ctx.node.input) - 1)


def _pass_unary(ctx, gy):
    b = ctx.b
    x = ctx.x(0)
    q = b.div(b.mul(ctx.y(0), gy[0], "r"), x, "g_ratio")
    zero = b.op("Equal", [x, b.f32(0.0)], "at_zero")
    return [b.where(zero, b.f32(0.0), q, "g_pass")] + [None] * (len(ctx.node.input) - 1)


def _scales(node, live) -> bool:
    """y = x * c, x / c or -x with one live x (c: anything the input does not reach): y / x is the VJP's factor."""
    return sum(i in live for i in node.input) == 1 and (node.op_type != "Div" or node.input[0] in live)


def passing(node, live) -> Optional[Emitter]:
    """Relevance unchanged (R_x = R_y) in gradient form: g_x = g * y / x -- the VJP of a scaling, else the ratio
    for an elementwise map with f(0) = 0; None for any other op."""
    op = node.op_type
    if op in ("Identity", "Dropout", "Cast") or (op in SCALING_OPS and _scales(node, live)):
        return vjp if op in TABLE else _identity
    if op in ZERO_FIXING_OPS and sum(i in live for i in node.input) == 1 and node.input[0] in live:
        return _pass_unary
    return None


def copying(node) -> Optional[Emitter]:
    """The op's gradient (routing by position, MaxPool's winner) in gradient form: the VJP where outputs are copies
    of input values (R_x = VJP(y * g) = x * VJP(g))."""
    return vjp if node.op_type in COPY_OPS and node.op_type in TABLE else None


def plan(choices: dict, nodes, live) -> Optional[dict]:
    """{forward node (first output): gradient-form emitter} for every node on the path that receives relevance, or
    None if the rule of any such node has no gradient form. A node whose every use is a product share of weight 0
    (or a node that receives none itself) receives none: CP-LRP's attention probabilities and what computes them,
    whose rules (the softmax's gradient) need no gradient form. `nodes` are in forward order."""
    uses: dict = {}
    for n in nodes:
        for k, t in enumerate(n.input):
            uses.setdefault(t, []).append((n, k))
    silent: set = set()  # first outputs of nodes that receive no relevance
    out = {}
    for n in reversed(nodes):
        used = [(c, k) for o in n.output for c, k in uses.get(o, [])]
        if used and all(c.output[0] in silent or _share(choices.get(c.output[0]), k) == 0.0 for c, k in used):
            silent.add(n.output[0])
            continue
        rule = choices.get(n.output[0])
        e = None if rule is None else rule.gradient_form(n, live)
        if e is None:
            return None
        out[n.output[0]] = e
    return out


def _share(rule, k) -> Optional[float]:
    """The share of input k of a product's rule (None for any other rule)."""
    w = getattr(rule, "weights", None)
    return None if w is None or k >= len(w) else float(w[k])
