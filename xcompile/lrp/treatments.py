"""Treatments of nodes that are not linear layers with a constant weight (Zennit's Pass / Norm beside its rules on
weights): pass, gradient, proportional, std-constant (AttnLRP's LayerNorm; InstanceNormalization's variant),
product of two activations and its signal shares, maxpool-proportional; and the catalogue of every rule
(`make_rule`, `selectable`)."""
from __future__ import annotations

from ..backward.ops.normalization import normalization_vjp
from ..backward.table import TABLE
from ..kinds import LINEAR_OPS, PRODUCT_OPS
from . import emitters as E
from . import gradform
from .rules import RULES, LRPRule, rule


class Treatment(LRPRule):
    """A rule for a node that is not a linear layer with a constant weight (Zennit's Pass / Norm beside Gamma)."""

    @property
    def stabilizer(self) -> float:
        return float(self.p.get("stabilizer", E.STAB))

    @property
    def negligible(self) -> bool:
        """Is the stabilizer small enough to drop (gradient form, lrp/gradform.py)?"""
        return self.stabilizer <= gradform.TINY


@rule("pass")
class Pass(Treatment):
    """Relevance unchanged (Zennit `Pass`): activations, elementwise maps, unfolded normalisation."""

    def emit(self, ctx, gy):
        return E.pass_through(ctx, gy)

    def gradient_form(self, node, live):
        return gradform.passing(node, live)


@rule("gradient")
class Gradient(Treatment):
    """The op's own backward (routing by position, winner-take-all MaxPool)."""
    applies_to = "operators with a backward in the op table"

    def compatible(self, node):
        return node.op_type in TABLE

    def emit(self, ctx, gy):
        return TABLE[ctx.op_type].fn(ctx, gy)

    def gradient_form(self, node, live):
        return gradform.copying(node)


@rule("proportional")
class Proportional(Treatment):
    """Zennit `Norm`: inputs get relevance in proportion to their contributions (residual sums, average pools)."""
    params = {"stabilizer": E.STAB}
    applies_to = "operators with a backward in the op table"

    def compatible(self, node):
        return node.op_type in TABLE

    def emit(self, ctx, gy):
        return E.proportional(ctx, gy, stabilizer=self.stabilizer)

    def gradient_form(self, node, live):
        return gradform.vjp if self.negligible and node.op_type in TABLE else None


@rule("std-constant")
class StdConstant(Treatment):
    """LayerNormalization with its standard deviation held constant (AttnLRP), see emitters.std_constant."""
    params = {"stabilizer": E.STAB}
    applies_to = "LayerNormalization, InstanceNormalization"

    def compatible(self, node):
        return node.op_type in ("LayerNormalization", "InstanceNormalization")

    def bind(self, site, structure, options):
        return InstanceStdConstant(**self.given) if site.op == "InstanceNormalization" else self

    def emit(self, ctx, gy):
        return E.std_constant(ctx, gy, stabilizer=self.stabilizer)

    def gradient_form(self, node, live):
        return gradform.std_constant if self.negligible and node.op_type == "LayerNormalization" else None


@rule("instance-std-constant")
class InstanceStdConstant(StdConstant):
    """InstanceNormalization (also GroupNorm(1) as PyTorch exports it) with its std held constant, as AttnLRP's
    LayerNorm: R_x = x * J^T(R / y), J^T g = (scale g - mean(scale g)) / std over the spatial axes, scale per channel."""
    selectable = False
    applies_to = "InstanceNormalization"

    def compatible(self, node):
        return node.op_type == "InstanceNormalization"

    def bind(self, site, structure, options):
        return self

    def emit(self, ctx, gy):
        b = ctx.b
        rank = len(ctx.in_shape(0))
        scale = b.reshape(ctx.x(1), [-1] + [1] * (rank - 2), "scale")
        gh = b.mul(b.div(gy[0], b.stabilize(ctx.y(0), self.stabilizer), "s"), scale, "s_scaled")
        g = normalization_vjp(b, ctx.x(0), gh, list(range(2, rank)), ctx.attr("epsilon", 1e-5), hold_std=True)
        return [b.mul(ctx.x(0), g, "r"), None, None]

    def gradient_form(self, node, live):
        return None  # (not needed by the transformer rule sets: kept in relevance form)


@rule("product")
class Product(Treatment):
    """A product of two activations (Mul, Div, MatMul): operand k gets the share `weights[k]` (set by the method
    from the gate option: the gate is a constant weight, or both split); params set the stabilizer of the bilinear
    (MatMul) case."""
    params = {"stabilizer": E.STAB}
    applies_to = ", ".join(PRODUCT_OPS + LINEAR_OPS)
    on_linear_layers = False     # a layer with a constant weight is no product of two activations
    takes_gate = True

    def __init__(self, weights=None, gate=None, chosen=True, **given):
        super().__init__(**given)
        self.weights, self.gate, self.chosen = weights, gate, chosen

    def compatible(self, node):
        return True  # on a node that is no product, a chosen product keeps the node's default treatment (bind)

    def bind(self, site, structure, options):
        """The shares of this product. Chosen by a rule-set entry: where the block type names the signal operand (a
        gate, a normalisation's statistic, PoolFormer's mixer), the gate option `signal` (--set gate, else the
        entry's, else the rule set's) gives it all; a node whose default treatment is no product keeps it; else
        `Structure.product_weights` by that gate option. As the built-in default (`chosen=False`): a product of one
        activation and a constant passes it (MatMul: its gradient); a gate times a computed state gives the state
        nothing (Arras et al. 2017); a normalisation's statistic is held constant (AttnLRP)."""
        n, blk = site.node, site.block
        signal = None if blk is None else blk.signal
        norm = blk is not None and blk.label == "norm"
        live = structure.live_in(n)
        if self.chosen:
            gate = options.gate_given or self.gate or options.gate
            if (gate == "signal" or norm) and signal is not None:  # a std is constant, never a gate
                return Shares(_one_hot(n, signal), **self.given)
            default = options.default(site)
            if not isinstance(default, Product):
                return default
            return Product(structure.product_weights(n, live, gate), **self.given)
        if len(live) == 1 and structure.gates_a_state(n, live[0], options.gate):
            return Product([0.0] * len(n.input))  # the gate is a constant weight; its signal is no activation
        if len(live) <= 1:
            return Pass() if n.op_type in PRODUCT_OPS else Gradient()
        if norm and signal is not None:
            return Shares(_one_hot(n, signal))
        return Product(structure.product_weights(n, live, options.gate))

    def emit(self, ctx, gy):
        if ctx.op_type == "Mul":
            return E.product_shares(ctx, gy, self.weights)
        return E.proportional(ctx, gy, self.weights, stabilizer=self.stabilizer)

    def gradient_form(self, node, live):
        """w_k times the VJP into operand k: exact for an elementwise product (w_k x_k VJP_k(g) = w_k y g = w_k R);
        the bilinear / quotient cases divide by y in relevance form, so only with a negligible stabilizer."""
        op = node.op_type
        if self.weights is None or op not in TABLE or op not in ("Mul", "Div", "MatMul", "Gemm"):
            return None
        return gradform.weighted_vjp(list(self.weights)) if op == "Mul" or self.negligible else None

    def describe(self):
        return "product " + "/".join(f"{w:g}" for w in self.weights)


def _one_hot(n, k) -> list:
    w = [0.0] * len(n.input)
    w[k] = 1.0
    return w


@rule("signal")
class Shares(Product):
    """Relevance of a product / difference to ONE operand unchanged (the others are constant weights): the gate
    of a gated cell, the statistic of a normalisation, the identity branch of PoolFormer's pool(x) - x."""
    selectable = False

    def bind(self, site, structure, options):
        return self

    def emit(self, ctx, gy):
        return E.product_shares(ctx, gy, self.weights)

    def gradient_form(self, node, live):
        """R passed to one operand unchanged: x_k VJP_k(g) = y g for a product's factor or a quotient's numerator
        (a denominator would get -R)."""
        w = list(self.weights)
        ok = node.op_type == "Mul" or (node.op_type == "Div" and w[1:] == [0.0] * (len(w) - 1))
        return gradform.weighted_vjp(w) if ok and node.op_type in TABLE else None

    def describe(self):
        return "signal " + "/".join(f"{w:g}" for w in self.weights)


@rule("maxpool-proportional")
class MaxPoolProportional(Treatment):
    """MaxPool as the overview's VGG recipe does (`--set maxpool=proportional` or a rule set's option)."""
    selectable = False
    applies_to = "MaxPool"

    def compatible(self, node):
        return node.op_type == "MaxPool"

    def emit(self, ctx, gy):
        return E.maxpool_proportional(ctx, gy)


def make_rule(name: str, params: dict) -> LRPRule:
    if name not in RULES:
        raise KeyError(name)
    return RULES[name](**params)


def selectable() -> dict[str, type]:
    """The rules a rule file may name."""
    return {n: c for n, c in RULES.items() if c.selectable}
