"""Block types of the nodes on the relevance path, read from graph structure alone, so that a rule file can choose a
rule per block (`block = "attention"`; rules/README.md) and `--rules auto` can apply the rule the literature gives
for each kind of block: Zennit's composites in CNNs, AttnLRP (Achtibat et al. 2024) for normalisations, softmax
attention and products of two activations, Arras et al. (2017) for gated cells (the gate is a constant weight).

Labels (one per node; `classify` returns {first output: Block}):

* ``cnn``: every node of a model that has none of the transformer-type blocks below (a pure CNN: the rule set's
  CNN entries apply, everything else keeps the built-in treatment).
* ``attention``: Softmax (also written as Exp / ReduceSum), a matrix product of two activations (q k^T, attention
  x value, XCiT's cross-covariance), an elementwise product or quotient with a softmax output.
* ``norm``: LayerNormalization / RMS / group / instance normalisation, and the parts of one written out (legacy
  exports, hand-written RMSNorm, L2 normalisation): the division or product by a statistic of the activations
  (its std, rms or norm: held constant, the signal takes all relevance) and the centering x - mean(x).
* ``gate``: a product whose one operand is a squashed gate (Sigmoid, HardSigmoid: SE blocks, recurrent cells):
  the gate is a constant weight and the signal takes all relevance (Arras et al. 2017).
* ``gating``: a product of two activations neither of which is a gate (SwiGLU, GEGLU, gMLP's spatial gating).
* ``activation``: a product x * f(x) (SiLU, GELU, HardSwish, Mish written out): relevance passes to x.
* ``token-mixer``: PoolFormer's pool(x) - x: relevance goes to the pooled operand (the mixer as the pooling it is
  a correction of; proportional shares would divide by the cancelling difference).
* ``residual``: a sum of several activations. ``bias``: an activation plus or minus a constant (bias, position
  embedding).
* ``cnn-stage``: in a model that is not a pure CNN, a convolution whose input is non-negative (ReLU-fed).
* ``linear``: any other linear layer (Conv, Gemm, MatMul with a constant weight). ``other``: everything else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..backward.ops.normalization import normalization_vjp
from ..kinds import (
    GATE_OPS,
    LINEAR_OPS,
    RELU_TRANSPARENT_OPS,
    ROUTE_OPS,
    SCALE_OPS,
    SELF_GATE_OPS,
    SUM_OPS,
    linear_view,
)
from . import emitters as E
from .rules import Product, StdConstant

LABELS = ("cnn", "attention", "norm", "gate", "gating", "activation", "token-mixer", "residual", "bias",
          "cnn-stage", "linear", "other")
# the labels that make a model more than a CNN: CNN rule sets were not designed for them (see `foreign`)
TRANSFORMER_LABELS = ("attention", "norm", "gating", "token-mixer")
NORM_OPS = frozenset({"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
                      "SkipLayerNormalization", "GroupNormalization", "InstanceNormalization",
                      "MeanVarianceNormalization", "LpNormalization"})
REDUCE_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceL2", "ReduceSumSquare", "ReduceL1"})
# elementwise maps between a reduction and the divisor of a normalisation: var + eps, sqrt, 1/x, powers, clamps
STAT_OPS = frozenset({"Sqrt", "Reciprocal", "Pow", "Add", "Sub", "Mul", "Div", "Max", "Clip", "Abs", "Expand"}) | ROUTE_OPS
NONNEG_OPS = frozenset({"Relu", "Sigmoid", "HardSigmoid", "Softmax", "Abs"})


@dataclass
class Block:
    label: str
    why: str = ""
    signal: Optional[int] = None      # products/sums: the input slot that takes all relevance (gate, norm, mixer)

    def __str__(self):
        return f"{self.label}: {self.why}" if self.why else self.label


class Shares(Product):
    """Relevance of a product / difference to ONE operand unchanged (the others are constant weights): the gate
    of a gated cell, the statistic of a normalisation, the identity branch of PoolFormer's pool(x) - x."""
    selectable = False

    def emit(self, ctx, gy):
        return E.product_shares(ctx, gy, self.weights)

    def describe(self):
        return "signal " + "/".join(f"{w:g}" for w in self.weights)


class InstanceStdConstant(StdConstant):
    """InstanceNormalization (also GroupNorm(1) as PyTorch exports it) with its std held constant, as AttnLRP's
    LayerNorm: R_x = x * J^T(R / y), J^T g = (scale g - mean(scale g)) / std over the spatial axes, scale per channel."""
    selectable = False
    applies_to = "InstanceNormalization"

    def compatible(self, node):
        return node.op_type == "InstanceNormalization"

    def emit(self, ctx, gy):
        b = ctx.b
        rank = len(ctx.in_shape(0))
        scale = b.reshape(ctx.x(1), [-1] + [1] * (rank - 2), "scale")
        gh = b.mul(b.div(gy[0], b.stabilize(ctx.y(0), self.stabilizer), "s"), scale, "s_scaled")
        g = normalization_vjp(b, ctx.x(0), gh, list(range(2, rank)), ctx.attr("epsilon", 1e-5), hold_std=True)
        return [b.mul(ctx.x(0), g, "r"), None, None]


def std_constant_for(node, params) -> Optional[StdConstant]:
    """The std-constant treatment of a data-dependent normalisation node (None for other ops)."""
    if node.op_type == "LayerNormalization":
        return StdConstant(**params)
    if node.op_type == "InstanceNormalization":
        return InstanceStdConstant(**params)
    return None


class Structure:
    def __init__(self, g, live):
        self.g, self.live = g, live

    def live_in(self, n):
        return [k for k, i in enumerate(n.input) if i in self.live]

    def chain(self, t, ops, limit=16):
        """t and its ancestors along single-live-input nodes of the given op types."""
        out = [t]
        while t in self.g.producer and len(out) < limit:
            p = self.g.producer[t]
            live = list(dict.fromkeys(i for i in p.input if i in self.live))
            if p.op_type not in ops or len(live) != 1:
                break
            t = live[0]
            out.append(t)
        return out

    def source_op(self, t, through=ROUTE_OPS):
        """The op type of the first producer of t that is not in `through` (None at a graph input)."""
        top = self.chain(t, through)[-1]
        p = self.g.producer.get(top)
        return None if p is None else p.op_type

    def is_gate(self, t):
        """A squashed gate: sigmoid(x), or 1 - sigmoid(x) (GRU's update gate)."""
        top = self.chain(t, ROUTE_OPS)[-1]
        p = self.g.producer.get(top)
        if p is not None and p.op_type == "Sub" and len(p.input) == 2 and self.g.const(p.input[0]) is not None:
            return self.is_gate(p.input[1])
        return p is not None and p.op_type in GATE_OPS - {"Softmax"}

    def is_softmax(self, t):
        # through Where too: PyTorch's sdpa export guards the probabilities as Where(IsNaN(s), 0, s)
        if self.source_op(t, ROUTE_OPS | {"Where"}) == "Softmax":
            return True
        top = self.chain(t, ROUTE_OPS)[-1]
        p = self.g.producer.get(top)
        return p is not None and p.op_type == "Div" and self._is_softmax_div(p)

    def _is_softmax_div(self, n):
        """exp(x) / sum(exp(x)) written out."""
        if len(n.input) != 2:
            return False
        num = self.chain(n.input[0], ROUTE_OPS)[-1]
        den = self.chain(n.input[1], ROUTE_OPS)[-1]
        pn, pd = self.g.producer.get(num), self.g.producer.get(den)
        return (pn is not None and pn.op_type == "Exp" and pd is not None and pd.op_type == "ReduceSum"
                and pd.input[0] == num)

    def self_gate(self, gate, sig, limit=32):
        """Is `gate` an elementwise function f of the (scaled) signal `sig` alone, so that gate * sig is an activation
        x * f(x) (SiLU, HardSwish, Mish, GELU as x * 0.5 (1 + erf(x / sqrt 2)) or in its tanh form
        x * 0.5 (1 + tanh(c (x + 0.044715 x^3))))? Every live path up from `gate` runs through elementwise ops (with
        constants as their other operands) and ends at `sig` or a constant multiple of it."""
        roots = set(self.chain(sig, SCALE_OPS))
        if gate in roots:
            return False  # x * x is a product of two activations, not an activation
        todo, seen = [gate], set()
        while todo:
            t = todo.pop()
            if t in roots or t in seen:
                continue
            seen.add(t)
            p = self.g.producer.get(t)
            if p is None or p.op_type not in SELF_GATE_OPS or len(seen) > limit:
                return False
            live = [i for i in p.input if i in self.live]
            if p.op_type == "Pow" and live != [p.input[0]]:
                return False  # x ** c only: a live exponent is not an elementwise map of x
            todo.extend(live)
        return True

    def statistic(self, t, depth=0):
        """Is t a statistic of an activation (std, rms, norm, mean of squares) computed by a reduction through
        elementwise maps only: the divisor of a written-out normalisation?"""
        p = self.g.producer.get(t)
        if p is None or depth > 12:
            return False
        if p.op_type in REDUCE_OPS:
            return True
        if p.op_type not in STAT_OPS:
            return False
        return any(self.statistic(i, depth + 1) for i in dict.fromkeys(p.input) if i in self.live)

    def is_mean_of(self, t, x):
        """Is t = ReduceMean(x) (through routing ops)?"""
        p = self.g.producer.get(self.chain(t, ROUTE_OPS)[-1])
        return p is not None and p.op_type == "ReduceMean" and self.chain(p.input[0], ROUTE_OPS)[-1] == \
            self.chain(x, ROUTE_OPS)[-1]

    def is_pool_of(self, t, x):
        p = self.g.producer.get(self.chain(t, ROUTE_OPS)[-1])
        return p is not None and p.op_type in ("AveragePool", "GlobalAveragePool") and \
            self.chain(p.input[0], ROUTE_OPS)[-1] == self.chain(x, ROUTE_OPS)[-1]

    def layer_bias(self, n):
        """Is n (Add / Sub of an activation and a constant) the bias of the linear layer or normalisation before it,
        written as a separate node (MatMul + Add of 3-D linear layers, the affine of an unfolded GroupNorm)?"""
        live = self.live_in(n)
        if n.op_type not in ("Add", "Sub") or len(live) != 1 or (n.op_type == "Sub" and live[0] != 0):
            return False
        top = self.chain(n.input[live[0]], ROUTE_OPS | {"Mul"})[-1]  # through reshapes and the scale of an affine
        p = self.g.producer.get(top)
        if p is None:
            return False
        if p.op_type in ("LayerNormalization", "InstanceNormalization"):
            return True
        view = linear_view(self.g, p, self.live) if p.op_type in LINEAR_OPS else None
        return view is not None and view.bias is None and not (len(p.input) > 2 and p.input[2])

    def nonneg(self, t):
        top = self.chain(t, RELU_TRANSPARENT_OPS)[-1]
        p = self.g.producer.get(top)
        if p is None:
            return False
        if p.op_type in NONNEG_OPS:
            return True
        if p.op_type == "Clip" and len(p.input) > 1 and p.input[1]:
            lo = self.g.const(p.input[1])
            return lo is not None and float(lo) >= 0
        return False


def label(G: Structure, n) -> Block:
    op, ins = n.op_type, n.input
    live = G.live_in(n)
    if op == "Softmax":
        return Block("attention", "softmax")
    if op in NORM_OPS:
        return Block("norm", op)
    if op in LINEAR_OPS and linear_view(G.g, n, G.live) is not None:
        if op == "Conv" and G.nonneg(ins[linear_view(G.g, n, G.live).slot]):
            return Block("cnn-stage", "convolution of a non-negative input")
        return Block("linear", "constant weight")
    if op == "MatMul" and len(live) == 2:
        soft = [k for k in live if G.is_softmax(ins[k])]
        return Block("attention", "softmax x value" if soft else "product of two activations (q k^T)")
    if op in ("Mul", "Div") and len(live) == 2 and ins[0] != ins[1]:
        a, c = live
        if op == "Div" and G._is_softmax_div(n):
            return Block("attention", "softmax written as exp / sum(exp)")
        if op == "Div" and G.statistic(ins[1]):
            return Block("norm", "division by a statistic (std, rms, norm) held constant", signal=0)
        if op == "Mul":
            for sig, other in ((a, c), (c, a)):
                if G.self_gate(ins[other], ins[sig]):
                    return Block("activation", "x * f(x)", signal=sig)
            for sig, other in ((a, c), (c, a)):
                if G.statistic(ins[other]) and not G.statistic(ins[sig]):
                    return Block("norm", "product with a statistic (1/std, 1/rms) held constant", signal=sig)
        soft = [k for k in live if G.is_softmax(ins[k])]
        if soft:
            return Block("attention", "product with a softmax output")
        gates = [k for k in live if G.is_gate(ins[k])]
        if len(gates) == 1:
            return Block("gate", "sigmoid gate constant (Arras et al. 2017)",
                         signal=next(k for k in live if k != gates[0]))
        return Block("gating", "product of two activations")
    if op in SUM_OPS and len(live) >= 2:
        if op == "Sub" and len(live) == 2:
            if G.is_mean_of(ins[1], ins[0]):
                return Block("norm", "centering x - mean(x)")
            for sig, other in ((0, 1), (1, 0)):
                if G.is_pool_of(ins[sig], ins[other]):
                    return Block("token-mixer", "pool(x) - x", signal=sig)
        return Block("residual", "sum of activations")
    if op in ("Add", "Sub") and len(live) == 1:
        return Block("bias", "activation and a constant")
    return Block("other")


def classify(g, live, nodes) -> tuple[dict, bool]:
    """{first output: Block} for the nodes on the relevance path, and whether the model is a pure CNN (then every
    node is labelled ``cnn``)."""
    G = Structure(g, live)
    blocks = {n.output[0]: label(G, n) for n in nodes}
    foreign = [b for b in blocks.values() if b.label in TRANSFORMER_LABELS]
    if foreign:
        return blocks, False
    return {k: Block("cnn", f"pure CNN ({b.label})" if b.label != "other" else "pure CNN") for k, b in blocks.items()}, True


def foreign(blocks: dict, designed_for: str) -> Optional[tuple[str, str]]:
    """(label, node) of the first block a rule set designed for `designed_for` ("cnn", "transformer", "any") was
    not designed for, else None."""
    if designed_for != "cnn":
        return None
    return next(((b.label, k) for k, b in blocks.items() if b.label in TRANSFORMER_LABELS), None)
