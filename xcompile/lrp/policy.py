"""THE place that chooses an LRP rule for every node on the relevance path.

A rule set (`rulesets.py`: a TOML file, or one built in code) is an ordered list of entries, each = typed
selectors (`selectors.py`) + a rule object; the first entry whose selectors all match a node's `Site` wins, as in
Zennit's composites and RelevancePropagation.jl's `Composite` of primitives. Linear layers must be matched by the
rule set; every other node falls back to `BASE`, the built-in rule set of default treatments. The chosen rule
then binds itself to the node (`rule.bind(site, structure, options)`): nothing here, nor in any method, branches
on a rule's name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..errors import XCompileError, warn_once
from ..kinds import LINEAR_OPS, PASS_OPS, PRODUCT_OPS, SUM_OPS, is_proportional, linear_view
from . import blocks as B
from .rules import LRPRule
from .rulesets import OPTIONS, Entry, RuleSet
from .selectors import Op, Selector, Site
from .structure import Structure
from .treatments import Gradient, MaxPoolProportional, Pass, Product, Proportional, StdConstant


@dataclass
class Options:
    """What a rule's `bind` may read besides the graph: the rule set's options after --set (gate, maxpool), the
    --set gate value itself (it beats an entry's own gate), the z^B bounds (--set low/high/mean/std), where (for
    messages) and the built-in default treatment (`default(site)`)."""
    gate: str = "signal"
    maxpool: str = "winner"
    gate_given: Optional[str] = None
    low: Optional[list] = None
    high: Optional[list] = None
    mean: Optional[list] = None
    std: Optional[list] = None
    where: str = "rules"
    default: Callable[[Site], LRPRule] = lambda site: Gradient()  # noqa: E731

    @classmethod
    def of(cls, ruleset: RuleSet, values: dict) -> "Options":
        opts = dict(ruleset.options)
        for k in ("maxpool", "gate"):
            v = values.get(k)
            if v is not None:
                if v not in OPTIONS[k]:
                    raise XCompileError(f"option {k}={v!r}: expected one of {', '.join(OPTIONS[k])}")
                opts[k] = v
        return cls(gate=opts["gate"], maxpool=opts["maxpool"], gate_given=values.get("gate"),
                   **{k: values.get(k) for k in ("low", "high", "mean", "std")}, where=f"rule set {ruleset.name!r}")


# ------------------------------------------------------------------- selectors of the built-in rule sets
class _Shared(Selector):
    """A sum that shares relevance: several inputs carry it, or it is a split-off layer bias (which absorbs its
    share, as in the layer's epsilon rule)."""

    def match(self, site):
        S = site.structure
        return len(S.live_in(site.node)) > 1 or S.layer_bias(site.node)


class _Summing(Selector):
    """Average pools, means and sums, scatters with reduction "add" (`kinds.is_proportional`)."""

    def match(self, site):
        return is_proportional(site.node)


class _Option(Selector):
    def __init__(self, key, value):
        super().__init__(value)
        self.key = key

    def match(self, site):
        return getattr(site.options, self.key) == self.value


class NonNegInput(Selector):
    """A linear layer whose input is provably >= 0 (value ranges): Deep Taylor's z+ domain."""
    linear_only = True

    def match(self, site):
        view = linear_view(site.structure.g, site.node, site.structure.live)
        return view is not None and site.structure.nonneg(site.node.input[view.slot])


def _entry(i, select, rule) -> Entry:
    return Entry(i, select, rule.name, dict(rule.given), rule.linear or any(s.linear_only for s in select), proto=rule)


BASE = RuleSet("base", None, [_entry(i, sel, r) for i, (sel, r) in enumerate([
    ([Op(["LayerNormalization", "InstanceNormalization"])], StdConstant()),  # AttnLRP: a data-dependent std constant
    ([Op(sorted(PASS_OPS))], Pass()),
    ([Op(list(SUM_OPS)), _Shared()], Proportional()),
    ([Op(list(SUM_OPS))], Pass()),
    ([Op(list(PRODUCT_OPS + LINEAR_OPS))], Product(chosen=False)),
    ([_Summing()], Proportional()),
    ([Op(["MaxPool"]), _Option("maxpool", "proportional")], MaxPoolProportional()),
    ([], Gradient()),
])])


def entries(rules: list) -> list:
    """Entries of a rule set built in code: [(selectors, rule object)] in order."""
    return [_entry(i, sel, r) for i, (sel, r) in enumerate(rules)]


# -------------------------------------------------------------------------------------------- the choice
class Policy:
    """The rule of every node on the relevance path (`choices`, by first output) and every node's block type."""

    def __init__(self, g, live, nodes, ruleset: RuleSet, values: dict, where: str = "model"):
        self.g, self.live, self.ruleset = g, live, ruleset
        self.structure = Structure(g, live)
        self.blocks, _ = B.classify(g, live, nodes, self.structure)
        self.options = Options.of(ruleset, values)
        self.options.default = self._default
        self._warn_foreign(where)
        lin = [n for n in nodes if n.op_type in LINEAR_OPS and linear_view(g, n, live) is not None]
        index = {n.output[0]: i + 1 for i, n in enumerate(lin)}
        bounds = values.get("low") is not None and values.get("high") is not None
        self.choices = {}
        for n in nodes:
            key = n.output[0]
            site = Site(n, n.op_type, n.name or key, index.get(key, 0), len(lin),
                        "conv" if n.op_type == "Conv" else "dense", self.blocks[key], bounds, self.structure,
                        self.options)
            self.choices[key] = self.choose(site)

    def _default(self, site: Site) -> LRPRule:
        return BASE.match(site).proto.bind(site, self.structure, self.options)

    def choose(self, site: Site) -> LRPRule:
        rs = self.ruleset
        e = rs.match(site)
        if e is None:
            if site.linear:
                raise XCompileError(f"rule set {rs.name!r}: no [[rule]] entry matches node {site.name!r} ({site.op}, "
                                    f"layer {site.index} of {site.count}); add a catch-all entry")
            return self._default(site)
        r = e.proto
        if site.linear and not r.on_linear_layers:
            raise XCompileError(f"rule set {rs.name!r}: {e.label()} selects the linear layer {site.name!r} ({site.op}) "
                                f"for {e.rule!r}, which applies to products of two activations only")
        if not r.compatible(site.node):
            raise XCompileError(f"rule set {rs.name!r}: {e.label()} selects node {site.name!r} ({site.op}) "
                                f"for {e.rule!r}, which applies to {r.applies_to} only")
        return r.bind(site, self.structure, self.options)

    def _warn_foreign(self, where):
        hit = B.foreign(self.blocks, self.ruleset.options.get("designed_for", "any"))
        if hit:
            warn_once(f"rules:{self.ruleset.name}:{where}", f"{where}: rule set {self.ruleset.name!r} is designed for "
                      f"CNNs, but the model has {hit[0]} blocks (node {hit[1]!r}); their relevance may not be "
                      "meaningful: use --rules auto (or attnlrp)")

