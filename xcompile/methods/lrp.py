"""LRP and Deep Taylor: the relevance family on the generic engine.

`prepare()` chooses, for every node on the relevance path, a rule object (`lrp/rules.py`): a rule on the weights
for linear layers (epsilon, z+, gamma, ...), else a treatment: pass (activations, elementwise affine maps with a
constant, unfolded normalisation), proportional (Zennit's Norm: residual Add/Sum, average pools, means/sums),
product (elementwise/matrix product of two activations: the gate is a constant weight; a gate times a recurrent
cell's initial state absorbs the relevance, Arras et al. 2017), maxpool-proportional
(option) or gradient (routing by position, winner-take-all). The engine asks `backward_for(node)` and calls the
chosen rule's `emit`; traversal stays the engine's."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..backward.builder import Builder
from ..backward.table import TABLE, Backward
from ..errors import XCompileError, warn_once
from ..kinds import (
    GATE_OPS,
    LINEAR_OPS,
    PASS_OPS,
    PRODUCT_OPS,
    RELU_TRANSPARENT_OPS,
    ROUTE_OPS,
    SUM_OPS,
    is_proportional,
    linear_view,
)
from ..lrp import blocks as B
from ..lrp import rulesets
from ..lrp.rules import Gradient, LRPRule, MaxPoolProportional, Pass, Product, Proportional, make_rule
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
    }

    def __init__(self, **given):
        super().__init__(**given)
        if self.uses_rules:
            rulesets.load(self.values["rules"])  # fail early (one line) on an unknown or malformed rule set

    blocks: dict = {}   # forward node (its first output) -> lrp.blocks.Block (its block type)
    choices: dict = {}  # forward node (its first output) -> the LRPRule chosen by prepare()

    def rule_for(self, node) -> LRPRule:
        """The rule chosen for `node` (the gradient before prepare() and off the relevance path)."""
        return self.choices.get(node.output[0], _GRADIENT)

    @staticmethod
    def _slots(op):
        return TABLE[op].inputs if op in TABLE else (0,)

    def backward_for(self, node) -> Optional[Backward]:
        """The chosen rule's emitter, with the op table's relevance slots ((0,) for pass-through ops it lacks)."""
        op = node.op_type
        if op not in TABLE and op not in PASS_OPS:
            return None
        return Backward(self.rule_for(node).emit, self._slots(op))

    @property
    def overrides(self):
        """The ops LRP treats (the op table's and the pass-through ones), as table entries; the rule is per node."""
        return {op: Backward(self._emit, self._slots(op)) for op in set(TABLE) | PASS_OPS}

    def _emit(self, ctx, gy):
        return self.rule_for(ctx.node).emit(ctx, gy)

    # ---------------------------------------------------------------------------------- rule choice
    def ruleset(self):
        return rulesets.load(self.values["rules"])

    def prepare(self, g, where):
        self.g = g
        rs = self.ruleset()
        self.ruleset_name = rs.name
        opts = dict(rs.options)
        for k in ("maxpool", "gate"):
            if self.values.get(k) is not None:
                if self.values[k] not in rulesets.OPTIONS[k]:
                    raise XCompileError(f"option {k}={self.values[k]!r}: expected one of {', '.join(rulesets.OPTIONS[k])}")
                opts[k] = self.values[k]
        self.options = opts
        self.choices = {}
        live, nodes = self.engine(g, Builder(g.opset)).paths()
        self.live, self.nodes = live, nodes
        self._graph = B.Structure(g, live)
        self.blocks, self.pure_cnn = B.classify(g, live, nodes)
        self._warn_foreign(rs, where)
        lin_nodes = [n for n in nodes if n.op_type in LINEAR_OPS and linear_view(g, n, live) is not None]
        index = {n.output[0]: i + 1 for i, n in enumerate(lin_nodes)}
        choices = {}
        for n in nodes:
            key = n.output[0]
            info = {"op": n.op_type, "name": n.name or key, "index": index.get(key, 0), "count": len(lin_nodes),
                    "kind": "conv" if n.op_type == "Conv" else "dense", "block": self.blocks[key].label,
                    "bounds": self.values.get("low") is not None and self.values.get("high") is not None}
            if key in index:
                choices[key] = self.choose_linear(rs, n, info)
                continue
            e = rs.match_other(info)
            if e is None:
                choices[key] = self.default_choice(n)
            elif e.rule == "product":
                choices[key] = self._product(n, e)
            else:
                r = (B.std_constant_for(n, e.params) if e.rule == "std-constant" else None) or make_rule(e.rule, e.params)
                choices[key] = self._checked(rs, e, n, info, r)
        self.choices = choices

    def _product(self, n, e) -> LRPRule:
        """A `product` entry: the entry's gate option (unless --set gate= says otherwise); where the block type names
        the signal operand (a gate, a normalisation's statistic, PoolFormer's mixer), `signal` gives it all."""
        gate = self.values.get("gate") or e.gate or self.options["gate"]
        blk = self.blocks[n.output[0]]
        if (gate == "signal" or blk.label == "norm") and blk.signal is not None:  # a std is constant, never a gate
            w = [0.0] * len(n.input)
            w[blk.signal] = 1.0
            return B.Shares(w, **e.params)
        ch = self.default_choice(n)  # a product of one activation and a constant stays what it was
        if not isinstance(ch, Product):
            return ch
        live_in = [k for k, i in enumerate(n.input) if i in self.live]
        return Product(self.product_weights(n, live_in, gate), **e.params)

    def _warn_foreign(self, rs, where):
        hit = B.foreign(self.blocks, rs.options.get("designed_for", "any"))
        if hit:
            warn_once(f"rules:{rs.name}:{where}", f"{where}: rule set {rs.name!r} is designed for CNNs, but the model "
                      f"has {hit[0]} blocks (node {hit[1]!r}); their relevance may not be meaningful: use "
                      "--rules auto (or attnlrp)")

    @staticmethod
    def _checked(rs, e, n, info, r: LRPRule) -> LRPRule:
        if not r.compatible(n):
            raise XCompileError(f"rule set {rs.name!r}: {e.label()} selects node {info['name']!r} ({n.op_type}) "
                                f"for {e.rule!r}, which applies to {r.applies_to} only")
        return r

    def choose_linear(self, rs, n, info) -> LRPRule:
        e = rs.match_linear(info)
        where = f"rule set {rs.name!r}"
        if e is None:
            raise XCompileError(f"{where}: no [[rule]] entry matches node {info['name']!r} ({n.op_type}, layer {info['index']} of {info['count']}); add a catch-all entry")
        params = dict(e.params)
        if e.rule in ("zbox", "zb"):
            params.update(self.box_bounds(n, params, where))
        r = make_rule(e.rule, params)
        if isinstance(r, Product):  # a layer with a constant weight is no product of two activations
            raise XCompileError(f"{where}: {e.label()} selects the linear layer {info['name']!r} ({n.op_type}) for "
                                f"'product', which applies to products of two activations only")
        return self._checked(rs, e, n, info, r)

    def default_choice(self, n) -> LRPRule:
        op = n.op_type
        live_in = [k for k, i in enumerate(n.input) if i in self.live]
        norm = B.std_constant_for(n, {})
        if norm is not None:  # data-dependent std held constant (AttnLRP): passing R would decouple it from x
            return norm
        if op in PASS_OPS:
            return Pass()
        if op in SUM_OPS:
            if len(live_in) == 1 and self._graph.layer_bias(n):
                return Proportional()  # a split-off bias absorbs its share, as in the layer's epsilon rule
            return Proportional() if len(live_in) > 1 else Pass()
        if op in PRODUCT_OPS or op in LINEAR_OPS:
            if len(live_in) == 1 and self._gates_a_state(n, live_in[0]):
                return Product([0.0] * len(n.input))  # the gate is a constant weight; its signal is no activation
            if len(live_in) <= 1:
                return Pass() if op in PRODUCT_OPS else Gradient()
            blk = self.blocks.get(n.output[0])
            if blk is not None and blk.label == "norm" and blk.signal is not None:
                w = [0.0] * len(n.input)  # x / std, x * rsqrt(var): the statistic is held constant (AttnLRP)
                w[blk.signal] = 1.0
                return B.Shares(w)
            return Product(self.product_weights(n, live_in))
        if is_proportional(n):
            return Proportional()
        if op == "MaxPool" and self.options["maxpool"] == "proportional":
            return MaxPoolProportional()
        return Gradient()

    def product_weights(self, n, live_in, mode=None):
        """Which operand of a product of two activations is the gate (a constant weight: it gets no relevance)."""
        mode = mode or self.options["gate"]
        w = [0.0] * len(n.input)
        if n.op_type == "Mul" and len(live_in) == 2:
            a, c = (n.input[k] for k in live_in)
            for sig, gate in ((live_in[0], c), (live_in[1], a)):
                if self._self_gate(gate, n.input[sig]):  # x * f(x): an activation (SiLU, GELU, ...): identity rule
                    w[sig] = 1.0
                    return w
        if mode == "signal":
            if n.op_type == "Div" and len(live_in) == 2:
                w[0] = 1.0  # the divisor (a norm, a std) is the gate
                return w
            gates = [k for k in live_in if self._is_gate(n.input[k])]
            if len(gates) == 1 and len(live_in) == 2:
                w[next(k for k in live_in if k not in gates)] = 1.0
                return w
        for k in live_in:
            w[k] = 1.0 / len(live_in)
        return w

    def _self_gate(self, gate, sig):
        """x * f(x) written as a product (GELU, SiLU, HardSwish, Mish): lrp/blocks.py decides, for every rule set."""
        return self._graph.self_gate(gate, sig)

    def _gates_a_state(self, n, k):
        """Mul(gate, s) where s carries no relevance and is computed, not a weight: a recurrent cell's initial state
        (Arras et al. 2017: the gate takes no relevance, so what reaches the state is absorbed there)."""
        if n.op_type != "Mul" or self.options["gate"] != "signal" or len(n.input) != 2:
            return False
        other = n.input[1 - k]
        return self._is_gate(n.input[k]) and other not in self.live and self.g.const(other) is None

    def _is_gate(self, t):
        seen = 0
        while t in self.g.producer and seen < 16:
            p = self.g.producer[t]
            if p.op_type in GATE_OPS:
                return True
            if p.op_type == "Sub" and self.g.const(p.input[0]) is not None and np.all(self.g.const(p.input[0]) == 1):
                t, seen = p.input[1], seen + 1  # 1 - gate (GRU's update share) is a gate too
                continue
            live = [i for i in p.input[1:] if i in self.live]
            if p.op_type == "Where" and len(live) == 1:  # sdpa exports guard softmax as Where(IsNaN(s), 0, s)
                t, seen = live[0], seen + 1
                continue
            if p.op_type not in ROUTE_OPS:
                return False
            t, seen = p.input[0], seen + 1
        return False

    # ------------------------------------------------------------------------------------- z^B bounds
    def box_bounds(self, n, params, where):
        """low/high for the z^B layer `n`, from --set low/high (data-input space, optionally through mean/std) or
        the rule entry's params, pushed through the constant arithmetic between the data input and the layer."""
        low = self.values.get("low") if self.values.get("low") is not None else _floats(params.get("low"))
        high = self.values.get("high") if self.values.get("high") is not None else _floats(params.get("high"))
        if low is None or high is None:
            raise XCompileError(f"{where}: node {n.name or n.output[0]!r} uses z^B, which needs the input bounds: --set low=... --set high=... (numbers or per-channel lists)")
        g = self.g
        rank = len(g.shape(g.data_input))
        lo, hi = (self._shape_bounds(v, rank, "low") for v in (low, high))
        mean, std = self.values.get("mean"), self.values.get("std")
        if mean is not None:
            lo, hi = lo - self._shape_bounds(mean, rank, "mean"), hi - self._shape_bounds(mean, rank, "mean")
        if std is not None:
            s = self._shape_bounds(std, rank, "std")
            if not np.all(s > 0):
                raise XCompileError("option std: every std must be > 0 (it divides the z^B bounds)")
            lo, hi = lo / s, hi / s
        lo, hi = self._push(n, lo, hi)
        return {"low": lo.astype(np.float32), "high": hi.astype(np.float32)}

    def _shape_bounds(self, v, rank, what):
        v = np.asarray(v, np.float64)
        if v.ndim == 0 or rank < 2:
            return v.reshape([1] * max(rank, 1)) if v.ndim == 0 else v
        c = self.g.shape(self.g.data_input)[1]
        if v.size != c:
            raise XCompileError(f"option {what}: {v.size} values for {c} input channels")
        return v.reshape([1, c] + [1] * (rank - 2))

    def _push(self, n, lo, hi):
        """Carry the bounds through Sub/Add/Mul/Div-by-constant nodes between the data input and node n."""
        g = self.g
        chain, t = [], next(i for i in n.input if i in self.live)
        while t != g.data_input and t in g.producer:
            p = g.producer[t]
            live_in = [i for i in p.input if i in self.live]
            if len(live_in) != 1:
                return lo, hi  # not a simple chain: bounds are taken as given at the layer input
            chain.append(p)
            t = live_in[0]
        for p in reversed(chain):
            op = p.op_type
            if op in ("Identity", "Cast", "Dropout"):
                continue
            if op not in ("Sub", "Add", "Mul", "Div") or len(p.input) != 2:
                return lo, hi
            k = 0 if p.input[0] in self.live else 1
            c = g.const(p.input[1 - k])
            if c is None:
                return lo, hi
            c = np.asarray(c, np.float64)
            if op == "Add":
                lo, hi = lo + c, hi + c
            elif op == "Sub":
                lo, hi = (lo - c, hi - c) if k == 0 else (c - hi, c - lo)
            elif op == "Mul":
                a, b2 = lo * c, hi * c
                lo, hi = np.minimum(a, b2), np.maximum(a, b2)
            else:
                a, b2 = (lo / c, hi / c) if k == 0 else (c / lo, c / hi)
                lo, hi = np.minimum(a, b2), np.maximum(a, b2)
        return lo, hi


@register
class DeepTaylor(LRP):
    """Deep Taylor decomposition (Montavon et al. 2017, "Explaining nonlinear classification decisions with deep
    Taylor decomposition"): z+ on layers whose input is a ReLU output, z^B on the first layer
    (bounds required), w^2 where the input is unbounded (first=wsquare, or a layer not fed by a ReLU)."""
    name = "deep_taylor"
    token_relevance = None
    summary = "deep Taylor decomposition: z+ on ReLU layers, z^B first (bounds required), w^2 on unbounded inputs"
    uses_rules = False
    params = {k: v for k, v in LRP.params.items() if k != "rules"} | {
        "first": Param("zbox", "rule of the first layer: zbox (needs low/high) or wsquare", as_str),
    }

    def ruleset(self):
        first = self.values["first"]
        if first not in ("zbox", "wsquare"):
            raise XCompileError(f"option first={first!r}: expected zbox or wsquare")
        return rulesets.RuleSet("deep_taylor", None, [], {k: v[0] for k, v in rulesets.OPTIONS.items()})

    def choose_linear(self, rs, n, info):
        if info["index"] == 1:
            if self.values["first"] == "wsquare":
                return make_rule("wsquare", {"bias": False})
            if self.values.get("low") is None or self.values.get("high") is None:
                raise XCompileError("deep_taylor: the first layer uses z^B and needs --set low=... --set high=... "
                                    "(or --set first=wsquare for unbounded inputs)")
            return make_rule("zbox", self.box_bounds(n, {}, "deep_taylor"))
        if self._fed_by_relu(n):
            return make_rule("zplus", {})
        return make_rule("wsquare", {"bias": False})

    def _fed_by_relu(self, n):
        t = next(i for i in n.input if i in self.live)
        for _ in range(32):
            p = self.g.producer.get(t)
            if p is None:
                return False
            if p.op_type in ("Relu",) or (p.op_type == "Clip" and (self.g.const(p.input[1]) if len(p.input) > 1 and p.input[1] else None) is not None
                                          and float(np.asarray(self.g.const(p.input[1]))) >= 0):
                return True
            if p.op_type not in RELU_TRANSPARENT_OPS:
                return False
            t = next((i for i in p.input if i in self.live), None)
            if t is None:
                return False
        return False


_GRADIENT = Gradient()
