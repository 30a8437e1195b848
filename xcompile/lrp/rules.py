"""LRP rules as small objects (after Zennit's BasicHook / composites and RelevancePropagation.jl's `rules.jl`).

Every treatment a rule set can name is a rule object registered by name with ``@rule("name")``; each one has
``compatible(node)`` (can it treat this forward node?) and ``emit(ctx, gy)`` (append the nodes that map the
output relevance ``gy`` to input relevance, like an op-table emitter). Two families:

* rules on a linear layer z = W a + b (`Rule`: zero, epsilon, gamma, z+, alpha-beta, z^B, w^2, flat). A rule never
  walks the graph. It only says which *terms* to build:

    group g:  z_g = sum_p  sign_p * (rho_p(W) in_p + rho_p(b))          (stabilised: z + eps * sign(z))
              s_g = R / z_g            (optionally masked by the sign of the layer's real output z)
    R_in     = sum_g coef_g * sum_p sign_p * in_p  (.)  rho_p(W)^T s_g

  where in_p is one of the symbolic inputs "x" (the activation), "pos" (x+), "neg" (x-), "ones", "low", "high"
  (z^B bounds). A plain rule overrides the four hooks `input`, `modify_weight`, `modify_bias`, `eps`; rules made of
  several terms (gamma, alpha-beta, z+, z^B) override `groups()`. A weight map is a `WeightMap` (numpy + graph
  form: W+ = Relu(W), W^2 = Mul(W, W), ... derived from the one stored W, folded by onnxruntime at session
  creation) or a plain numpy function (its result stored as an initializer). Terms that are identically zero
  (x- after a ReLU, an all-zero weight, a zero bound; see `ranges.py`) are not emitted.
* treatments of any other node (`treatments.py`): pass, gradient, proportional (Zennit `Norm`), std-constant
  (AttnLRP's LayerNorm), product (of two activations), signal shares, maxpool-proportional.

Each rule binds itself to a node (`bind(site, structure, options)`, see `policy.py`): rule choice never branches
on rule names.

Adding a rule = a subclass of ~10 lines + `@rule("name")`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..backward.table import TABLE
from ..kinds import LINEAR_OPS, linear_view
from ..options import as_floats, like_default
from . import emitters as E
from . import gradform

RULES: dict[str, type] = {}


def rule(*names):
    def deco(cls):
        cls.name = names[0]
        for n in names:
            RULES[n] = cls
        return cls
    return deco


class WeightMap:
    """rho(W) twice: as numpy (what it means, evaluated at compile time to find terms that vanish) and as graph
    nodes on the one stored W (`graph(b, w, shape)`), which onnxruntime folds into a constant at session creation,
    so the explainer file holds W once. A rule's plain numpy function (no graph form) is stored as a constant."""

    def __init__(self, key, fn, graph):
        self.key, self.fn, self.graph = key, fn, graph

    def __call__(self, w):
        return None if w is None else self.fn(w)

    def __repr__(self):
        return f"WeightMap{self.key}"


_same = WeightMap(("same",), lambda w: w, lambda b, w, shape: w)
pos = WeightMap(("pos",), lambda w: np.maximum(w, 0), lambda b, w, shape: b.relu(w, "w_pos"))
neg = WeightMap(("neg",), lambda w: np.minimum(w, 0), lambda b, w, shape: b.negative(w, "w_neg"))
square = WeightMap(("square",), lambda w: w ** 2, lambda b, w, shape: b.mul(w, w, "w_sq"))
ones = WeightMap(("ones",), np.ones_like,
                 lambda b, w, shape: b.op("Expand", [b.f32(1.0), b.i64(list(shape))], "w_ones"))


def gamma_map(g: float, up: bool) -> WeightMap:
    """W + g W+ (up) or W + g W- (down), Zennit's generalized gamma."""
    part = (lambda w: np.maximum(w, 0)) if up else (lambda w: np.minimum(w, 0))
    node = pos.graph if up else neg.graph
    return WeightMap(("gamma", g, up), lambda w: w + g * part(w),
                     lambda b, w, shape: b.add(w, b.mul(node(b, w, shape), b.f32(g)), "w_gamma"))


def zero(w):
    return None


@dataclass
class Part:
    input: str                                   # "x" | "pos" | "neg" | "ones" | "low" | "high"
    weight: Callable[[np.ndarray], np.ndarray]   # rho for W: a WeightMap (derived in the graph) or a numpy function
    bias: Callable[[Optional[np.ndarray]], Optional[np.ndarray]] = zero  # rho for b (None = no bias)
    sign: float = 1.0


@dataclass
class Group:
    parts: list
    coef: float = 1.0
    mask: Optional[str] = None                   # None | "pos" | "neg": keep s only where the layer output z > 0 / < 0
    eps: float = 1e-6
    norm_scale: bool = False                     # eps * sqrt(mean(z^2)) over the non-batch axes (Zennit Stabilizer norm_scale)


class LRPRule:
    """What every rule object has: parameters (with defaults), `compatible(node)`, `emit(ctx, gy)`, `describe()`."""
    name = "rule"
    params: dict = {}            # parameter -> default (Zennit's defaults)
    linear = False               # a rule on a linear layer's weights (Rule) or a treatment of any node
    selectable = True            # may a rule file name it?
    on_linear_layers = True      # may it treat a linear layer with a constant weight?
    takes_gate = False           # does an entry's `gate = ...` apply to it (products of two activations)?
    applies_to = "any node"      # for messages: what `compatible` accepts

    def __init__(self, **given):
        unknown = set(given) - set(self.params)
        if unknown:
            raise ValueError(f"{self.name!r} takes params: {', '.join(self.params) or 'none'} "
                             f"(got {', '.join(sorted(given))})")
        given = {k: like_default(k, v, self.params[k]) for k, v in given.items()}  # types, finiteness, ranges
        self.given = given
        self.p = {**self.params, **given}

    def compatible(self, node) -> bool:
        return True

    def bind(self, site, structure, options) -> "LRPRule":
        """The rule as it applies to one node (`site`: lrp.selectors.Site; `structure`: lrp.structure.Structure;
        `options`: lrp.policy.Options): itself, or the treatment the node's structure calls for (a z^B layer's
        bounds, a product's shares, InstanceNormalization's std-constant). Rule choice calls nothing else."""
        return self

    def emit(self, ctx, gy) -> list:
        raise NotImplementedError

    def gradient_form(self, node, live) -> Optional[Callable]:
        """This rule at `node` as an emitter of g = R / y (lrp/gradform.py), or None where it has no such form (then
        the whole graph keeps the relevance form)."""
        return None

    def describe(self) -> str:
        return self.name


class Rule(LRPRule):
    """Base rule on a linear layer = LRP-epsilon shape: one group, one part built from the four hooks."""
    linear = True
    applies_to = ", ".join(LINEAR_OPS)
    input = "x"                  # modify_input: which symbolic input the single part reads

    def compatible(self, node) -> bool:
        return node.op_type in LINEAR_OPS

    def emit(self, ctx, gy) -> list:
        return E.emit_rule(ctx, gy[0], self, linear_view(ctx.g, ctx.node, ctx.live))

    # hooks -------------------------------------------------------------------------------------------
    modify_weight = _same  # a WeightMap, or a method (w -> numpy) in a subclass

    def modify_bias(self, b):
        return b

    @property
    def eps(self) -> float:
        return float(self.p.get("stabilizer", 1e-6))

    def groups(self) -> list[Group]:
        return [Group([Part(self.input, self.modify_weight, self.modify_bias)], eps=self.eps)]

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.p.items()) if k not in ("low", "high"))
        return f"{self.name}({args})" if args else self.name


@rule("zero", "lrp0")
class Zero(Rule):
    """LRP-0: z = W a + b; zero denominators are replaced by 1 (0/0 -> 0) instead of giving NaN."""
    eps = 0.0

    def gradient_form(self, node, live):
        return gradform.vjp if node.op_type in TABLE else None  # R_x = x * W^T (R / z) = x * W^T g


@rule("epsilon")
class Epsilon(Rule):
    params = {"epsilon": 1e-6, "norm_scale": False}

    def groups(self):
        return [Group([Part("x", _same, _same)], eps=float(self.p["epsilon"]),
                      norm_scale=bool(self.p["norm_scale"]))]

    def gradient_form(self, node, live):
        """LRP-0's where the stabilizer is negligible (AttnLRP's 1e-9 guards 0 / 0 only)."""
        small = float(self.p["epsilon"]) <= gradform.TINY and not self.p["norm_scale"]
        return gradform.vjp if small and node.op_type in TABLE else None


@rule("gamma")
class Gamma(Rule):
    """Zennit's sign-aware generalized gamma: positive outputs use (W + g W+) on a+ and (W + g W-) on a-, negative
    outputs the mirror image; the bias gets the same treatment on the a+ term only."""
    params = {"gamma": 0.25, "stabilizer": 1e-6}

    def groups(self):
        g = float(self.p["gamma"])
        up, dn = gamma_map(g, True), gamma_map(g, False)
        return [Group([Part("pos", up, up), Part("neg", dn)], mask="pos", eps=self.eps),
                Group([Part("pos", dn, dn), Part("neg", up)], mask="neg", eps=self.eps)]


@rule("zplus", "z+")
class ZPlus(Rule):
    """z+ (= alpha1-beta0, Zennit ZPlus): W+ on a+, W- on a-, bias b+ in the denominator."""
    params = {"stabilizer": 1e-6}

    def groups(self):
        return [Group([Part("pos", pos, pos), Part("neg", neg)], eps=self.eps)]


@rule("alpha_beta", "alphabeta")
class AlphaBeta(Rule):
    params = {"alpha": 2.0, "beta": 1.0, "stabilizer": 1e-6}

    def __init__(self, **given):
        super().__init__(**given)
        a, b = float(self.p["alpha"]), float(self.p["beta"])
        if a < 0 or b < 0 or abs(a - b - 1.0) > 1e-9:
            raise ValueError(f"alpha_beta needs alpha, beta >= 0 and alpha - beta = 1 (got {a}, {b})")

    def groups(self):
        a, b = float(self.p["alpha"]), float(self.p["beta"])
        out = [Group([Part("pos", pos, pos), Part("neg", neg)], coef=a, eps=self.eps)]
        if b:
            out.append(Group([Part("pos", neg, neg), Part("neg", pos)], coef=-b, eps=self.eps))
        return out


@rule("zbox", "zb")
class ZBox(Rule):
    """z^B for inputs in [low, high]: z = W x - W+ l - W- h (biases cancel, as in Zennit)."""
    params = {"low": None, "high": None, "stabilizer": 1e-6}

    def bind(self, site, structure, options):
        """The bounds at this layer: --set low/high (else the entry's), through mean/std and the constant
        arithmetic before the layer."""
        low = options.low if options.low is not None else as_floats(self.p.get("low"))
        high = options.high if options.high is not None else as_floats(self.p.get("high"))
        bounds = structure.box_bounds(site.node, low, high, options.mean, options.std, options.where)
        return type(self)(**{**self.given, **bounds})

    def groups(self):
        return [Group([Part("x", _same, _same), Part("low", pos, pos, -1.0), Part("high", neg, neg, -1.0)],
                      eps=self.eps)]


@rule("wsquare", "w2")
class WSquare(Rule):
    """w^2: R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j. ``bias = true`` (default) is Zennit's WSquare, which squares
    the bias too and keeps it in the denominator (parity); ``bias = false`` is the formula of Montavon et al.
    2017 (used by deep_taylor): the bias would otherwise absorb relevance at every w^2 layer."""
    params = {"stabilizer": 1e-6, "bias": True}
    input = "ones"
    modify_weight = square

    def modify_bias(self, b):
        return None if b is None or not self.p["bias"] else b ** 2


@rule("flat")
class Flat(Rule):
    """flat: w^2 with all weights 1 and no bias (uniform over the receptive field)."""
    params = {"stabilizer": 1e-6}
    input = "ones"
    modify_weight = ones

    def modify_bias(self, b):
        return None
