"""LRP rules as small objects (after Zennit's BasicHook / RelevancePropagation.jl).

A rule never walks the graph. It only says, for one linear layer z = W a + b, which *terms* to build:

    group g:  z_g = sum_p  sign_p * (rho_p(W) in_p + rho_p(b))          (stabilised: z + eps * sign(z))
              s_g = R / z_g            (optionally masked by the sign of the layer's real output z)
    R_in     = sum_g coef_g * sum_p sign_p * in_p  (.)  rho_p(W)^T s_g

where in_p is one of the symbolic inputs "x" (the activation), "pos" (x+), "neg" (x-), "ones", "low", "high"
(z^B bounds). A plain rule overrides the four hooks `input`, `modify_weight`, `modify_bias`, `eps`; rules made of
several terms (gamma, alpha-beta, z+, z^B) override `groups()`. Weights are numpy arrays: modified weights
become initializers at compile time; `modify_weight` returning its argument unchanged shares the original.

Adding a rule = a subclass of ~10 lines + `@rule("name")`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

RULES: dict[str, type] = {}


def rule(*names):
    def deco(cls):
        cls.name = names[0]
        for n in names:
            RULES[n] = cls
        return cls
    return deco


def identity(w):
    return w


def pos(w):
    return None if w is None else np.maximum(w, 0)


def neg(w):
    return None if w is None else np.minimum(w, 0)


def zero(w):
    return None


@dataclass
class Part:
    input: str                                   # "x" | "pos" | "neg" | "ones" | "low" | "high"
    weight: Callable[[np.ndarray], np.ndarray]   # rho for W (numpy, compile time)
    bias: Callable[[Optional[np.ndarray]], Optional[np.ndarray]] = zero  # rho for b (None = no bias)
    sign: float = 1.0


@dataclass
class Group:
    parts: list
    coef: float = 1.0
    mask: Optional[str] = None                   # None | "pos" | "neg": keep s only where the layer output z > 0 / < 0
    eps: float = 1e-6
    norm_scale: bool = False                     # eps * sqrt(mean(z^2)) over the non-batch axes (Zennit Stabilizer norm_scale)


class Rule:
    """Base rule = LRP-epsilon shape: one group, one part built from the four hooks."""
    name = "rule"
    params: dict = {}            # parameter -> default (Zennit's defaults)
    input = "x"                  # modify_input: which symbolic input the single part reads

    def __init__(self, **given):
        unknown = set(given) - set(self.params)
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} for rule {self.name!r} "
                             f"(known: {', '.join(sorted(self.params)) or 'none'})")
        self.p = {**self.params, **given}

    # hooks -------------------------------------------------------------------------------------------
    def modify_weight(self, w):
        return w

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


@rule("epsilon")
class Epsilon(Rule):
    params = {"epsilon": 1e-6, "norm_scale": False}

    def groups(self):
        return [Group([Part("x", identity, identity)], eps=float(self.p["epsilon"]),
                      norm_scale=bool(self.p["norm_scale"]))]


@rule("gamma")
class Gamma(Rule):
    """Zennit's sign-aware generalized gamma: positive outputs use (W + g W+) on a+ and (W + g W-) on a-, negative
    outputs the mirror image; the bias gets the same treatment on the a+ term only."""
    params = {"gamma": 0.25, "stabilizer": 1e-6}

    def groups(self):
        g = float(self.p["gamma"])
        up = lambda w: None if w is None else w + g * np.maximum(w, 0)   # noqa: E731
        dn = lambda w: None if w is None else w + g * np.minimum(w, 0)   # noqa: E731
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

    def groups(self):
        return [Group([Part("x", identity, identity), Part("low", pos, pos, -1.0), Part("high", neg, neg, -1.0)],
                      eps=self.eps)]


@rule("wsquare", "w2")
class WSquare(Rule):
    """w^2: R_i = sum_j w_ij^2 / sum_i' w_i'j^2 R_j. ``bias = true`` (default) is Zennit's WSquare, which squares
    the bias too and keeps it in the denominator (parity); ``bias = false`` is the formula of SPEC / Montavon et al.
    2017 (used by deep_taylor): the bias would otherwise absorb relevance at every w^2 layer."""
    params = {"stabilizer": 1e-6, "bias": True}
    input = "ones"

    def modify_weight(self, w):
        return w ** 2

    def modify_bias(self, b):
        return None if b is None or not self.p["bias"] else b ** 2


@rule("flat")
class Flat(Rule):
    """flat: w^2 with all weights 1 and no bias (uniform over the receptive field)."""
    params = {"stabilizer": 1e-6}
    input = "ones"

    def modify_weight(self, w):
        return np.ones_like(w)

    def modify_bias(self, b):
        return None


# treatments of non-linear nodes (not rules on weights, but selectable in rule files)
# std-constant: LayerNormalization with its standard deviation held constant (AttnLRP), see emitters.std_constant
# product: a product of two activations (Mul, Div, MatMul), shares set by the gate option; its params set the
# stabilizer of the bilinear (MatMul) case
TREATMENTS = ("pass", "gradient", "proportional", "std-constant", "product")
STD_CONSTANT_OPS = ("LayerNormalization",)
TREATMENT_PARAMS = {"proportional": ("stabilizer",), "std-constant": ("stabilizer",), "product": ("stabilizer",)}


def make_rule(name: str, params: dict) -> Rule:
    if name not in RULES:
        raise KeyError(name)
    return RULES[name](**params)
