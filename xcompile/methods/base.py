"""What a method is: parameters, a seed (1 at the target, or the target score), and overrides of the
op table. ``Method.build`` appends the explanation to the builder and returns the relevance tensor."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..backward.builder import Builder
from ..backward.engine import Engine, float32_view
from ..backward.table import Backward, lookup
from ..errors import UnsupportedOperatorsError
from ..graph import TARGET, ForwardGraph
from ..options import Param, as_bool, as_float, as_int, parse_params

__all__ = ["Method", "Param", "Built", "METHODS", "register", "as_int", "as_float", "as_bool", "TARGET",
           "resolve_target", "make_seed"]


@dataclass
class Built:
    relevance: str
    extra_outputs: list = field(default_factory=list)  # [(tensor, ValueInfoProto)]


class Method:
    name: str = ""
    seed: str = "one"  # "one": gradient family; "score": relevance family
    summary: str = ""
    params: dict = {}
    overrides: dict = {}

    # token-id inputs (methods/tokens.py): "sum" / "norm" over the embedding axis, "own" (one value per token
    # already), None (no meaning at an embedding: refused)
    token_relevance: str | None = "sum"

    def __init__(self, **given):
        self.values = self.parse_params(given)
        self.given = set(given)  # the options the user set (defaults that depend on the input kind look at it)

    @classmethod
    def parse_params(cls, given: dict) -> dict:
        return parse_params(cls.params, given, f"method {cls.name!r}")

    def __getitem__(self, key):
        return self.values[key]

    # -------------------------------------------------------------- building
    def prepare(self, g: ForwardGraph, where: str) -> None:
        """Hook for methods that need to look at the whole graph first (rule choice, patterns)."""

    def backward_for(self, node) -> Optional[Backward]:
        """The backward of one forward node: by default the op table, with this method's `overrides`."""
        return lookup(node.op_type, self.overrides)

    def engine(self, g: ForwardGraph, b: Builder, **kw) -> Engine:
        return Engine(g, b, params=self.values, method=self, **kw)

    def check(self, g: ForwardGraph, where: str, full: bool = False) -> None:
        """THE support check shared by `compile` and `inspect`: raise ONE `UnsupportedOperatorsError` listing every
        unsupported node, both the ops without a backward and the nodes whose emitter refuses an attribute or a mode
        (e.g. Pad mode 'reflect'). The cheap op-table look-up runs first; the emitters' own checks need a build on a
        scratch builder, which runs when the look-up found something (so the list is complete) or with ``full``
        (inspect). Without either, the real build raises the same complete list."""
        from .tokens import refuse  # tokens builds on this module
        refuse(self, g, where)
        bad = self.engine(g, Builder(g.opset)).unsupported()
        if bad or full:
            self.build(g, Builder(g.opset, prefix=f"xc/{self.name}"), where)
        if bad:  # pragma: no cover - the build above raises first
            raise UnsupportedOperatorsError(bad, where)

    def build(self, g: ForwardGraph, b: Builder, where: str) -> Built:
        target = resolve_target(b, g, g.explained)
        seed = make_seed(b, g.shape(g.explained)[1], float32_view(b, g, g.explained), target, self.seed_kind())
        grads = self.engine(g, b).run(seed, where)
        self.grads = grads  # every tensor's emitted gradient: the self-check locates a wrong backward with them
        r = grads.get(g.data_input)
        if r is None:
            r = b.zeros_like(g.data_input)
        built = Built(self.finish(g, b, r))
        if self.seed == "score" and getattr(self, "attribution", True):  # relevance family (not PatternNet's signal)
            from ..write.writer import conservation
            built.extra_outputs.append(conservation(g, b, built.relevance, b.explained_class))
        return built

    def finish(self, g: ForwardGraph, b: Builder, r: str) -> str:
        return r

    def seed_kind(self) -> str:
        """The seed this build starts from: the family's (`seed`), unless the method computes it otherwise (LRP in
        gradient form starts from 1 and multiplies by the input in `finish`)."""
        return self.seed


def resolve_target(b: Builder, g: ForwardGraph, scores: str) -> str:
    """int64 [N]: the given target, or the predicted class where the target is -1."""
    with b.scope("target"):
        if g.single_logit:  # [-z, z] view of one logit: -1 explains the logit (class 1)
            pred = b.op("Add", [b.op("Mul", [TARGET, b.i64(0)], "zero"), b.i64(1)], "logit_class")
        else:
            pred = b.arg_extreme(scores, largest=True, hint="predicted")
        negative = b.op("Less", [TARGET, b.i64(0)], "use_predicted")
        cls = b.where(negative, pred, TARGET, "class")
    if getattr(b, "explained_class", None) is None:
        b.explained_class = cls  # the writer exposes it as the `explained_class` output (Explanation.predicted)
    return cls


def make_seed(b: Builder, n_classes: int, scores: str, target: str, kind: str) -> str:
    """One-hot of the target class (gradient family), times the score itself (relevance family)."""
    with b.scope("seed"):
        onehot = b.one_hot(target, n_classes, "onehot")
        if kind == "score":
            return b.mul(onehot, scores, "target_score")
        return onehot


METHODS: dict[str, type] = {}


def register(cls):
    METHODS[cls.name] = cls
    return cls
