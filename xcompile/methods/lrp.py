"""LRP and Deep Taylor: the relevance family on the generic engine.

`prepare()` hands the rule set to `lrp.policy.Policy`, THE place that chooses a rule object for every node on the
relevance path (a rule on the weights of linear layers: epsilon, z+, gamma, ...; else a treatment: pass,
proportional, product, std-constant, gradient, ...; see `lrp/`). The engine asks `backward_for(node)` and calls
the chosen rule's `emit`; traversal stays the engine's."""
from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import TensorProto

from ..backward.builder import Builder
from ..backward.table import TABLE, Backward
from ..errors import XCompileError
from ..kinds import PASS_OPS
from ..lrp import gradform, rulesets
from ..lrp.policy import NonNegInput, Policy, entries
from ..lrp.rules import LRPRule, WSquare, ZBox, ZPlus
from ..lrp.selectors import Position
from ..lrp.treatments import Gradient
from ..options import as_floats as _floats
from ..options import as_str
from .base import Method, Param, register


@register
class LRP(Method):
    name = "lrp"
    seed = "score"
    summary = "layer-wise relevance propagation with a rule set (rules/*.toml)"
    uses_rules = True
    params = {
        "rules": Param(None, "a built-in rule set name or a path to a .toml rule file"),
        "low": Param(None, "z^B lower bound of the data input: a number or per-channel list, e.g. 0 or 0,0,0", _floats),
        "high": Param(None, "z^B upper bound of the data input: a number or per-channel list", _floats),
        "mean": Param(None, "per-channel mean to map low/high into a model that takes normalised input", _floats),
        "std": Param(None, "per-channel std to map low/high into a model that takes normalised input", _floats),
        "maxpool": Param(None, "MaxPool backward: winner (default) or proportional", as_str),
        "gate": Param(None, "product of two activations: signal (gate is a constant weight, default) or split", as_str),
        "form": Param("auto", "auto (gradient form where every rule has one: lrp/gradform.py) or relevance", as_str),
    }

    blocks: dict = {}   # forward node (its first output) -> lrp.blocks.Block (its block type)
    choices: dict = {}  # forward node (its first output) -> the LRPRule chosen by prepare()
    gradient_form: Optional[dict] = None  # forward node -> gradient-form emitter (lrp/gradform.py), when all have one

    def __init__(self, **given):
        super().__init__(**given)
        self.rules = self.make_ruleset()  # read once; fails early (one line) on an unknown or malformed rule set

    def make_ruleset(self) -> rulesets.RuleSet:
        return rulesets.load(self.values["rules"])

    def ruleset(self) -> rulesets.RuleSet:
        return self.rules

    @property
    def band(self) -> Optional[tuple]:
        """The conservation band of the rule set (recorded in the explainer's metadata at compile time)."""
        return self.rules.band

    def rule_for(self, node) -> LRPRule:
        """The rule chosen for `node` (the gradient before prepare() and off the relevance path)."""
        return self.choices.get(node.output[0], _GRADIENT)

    def backward_for(self, node) -> Optional[Backward]:
        """The chosen rule's emitter, with the op table's relevance slots ((0,) for pass-through ops it lacks)."""
        op = node.op_type
        if op not in TABLE and op not in PASS_OPS:
            return None
        emit = (self.gradient_form or {}).get(node.output[0]) or self.rule_for(node).emit
        return Backward(emit, TABLE[op].inputs if op in TABLE else (0,))

    def seed_kind(self) -> str:
        """Gradient form: the modified backward pass starts from 1 at the target (R = score * 1 at the output)."""
        return "one" if self.gradient_form is not None else self.seed

    def finish(self, g, b, r):
        """Gradient form: relevance = input * g (the relevance form's R arrives as is)."""
        return b.mul(g.data_input, r, "input_times_g") if self.gradient_form is not None else r

    def prepare(self, g, where):
        self.choices = {}
        live, nodes = self.engine(g, Builder(g.opset)).paths()
        rs = self.ruleset()
        self.ruleset_name = rs.name
        policy = Policy(g, live, nodes, rs, self.values, where)
        self.blocks, self.choices = policy.blocks, policy.choices
        form = self.values["form"]
        if form not in ("auto", "relevance"):
            raise XCompileError(f"option form={form!r}: expected auto or relevance")
        self.gradient_form = None
        if form == "auto" and _float32(g, g.data_input):  # (float16 / float64 inputs keep the relevance form)
            self.gradient_form = gradform.plan(self.choices, nodes, live)


@register
class DeepTaylor(LRP):
    """Deep Taylor decomposition (Montavon et al. 2017, "Explaining nonlinear classification decisions with deep
    Taylor decomposition"): z+ on layers whose input is non-negative (a ReLU output), z^B on the first layer
    (bounds required), w^2 where the input is unbounded (first=wsquare, or a layer whose input may be negative)."""
    name = "deep_taylor"
    token_relevance = None
    summary = "deep Taylor decomposition: z+ on ReLU layers, z^B first (bounds required), w^2 on unbounded inputs"
    uses_rules = False
    params = {k: v for k, v in LRP.params.items() if k != "rules"} | {
        "first": Param("zbox", "rule of the first layer: zbox (needs low/high) or wsquare", as_str),
    }

    def make_ruleset(self):
        first = self.values["first"]
        if first not in ("zbox", "wsquare"):
            raise XCompileError(f"option first={first!r}: expected zbox or wsquare")
        rules = entries([([Position("first")], ZBox() if first == "zbox" else WSquare(bias=False)),
                         ([NonNegInput()], ZPlus()),
                         ([], WSquare(bias=False))])
        return rulesets.RuleSet("deep_taylor", None, rules, {k: v[0] for k, v in rulesets.OPTIONS.items()})

    def prepare(self, g, where):
        if self.values["first"] == "zbox" and (self.values.get("low") is None or self.values.get("high") is None):
            raise XCompileError("deep_taylor: the first layer uses z^B and needs --set low=... --set high=... "
                                "(or --set first=wsquare for unbounded inputs)")
        super().prepare(g, where)


def _float32(g, name) -> bool:
    """Is `name` float32: a probed tensor (a token model's embedding), else a graph input by its declared type?"""
    if name in g.dtypes:
        return g.dtypes[name] == np.float32
    return any(i.name == name and i.type.tensor_type.elem_type == TensorProto.FLOAT for i in g.model.graph.input)


_GRADIENT = Gradient()
