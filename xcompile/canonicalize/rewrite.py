"""Canonicalization as rewrite rules (after onnxscript's rewriter: pattern -> check -> rewrite).

A `RewriteRule` names the op types it looks at (`ops`), `check`s one candidate node and either declines with a
reason (``MatchResult.fail("...")``, shown by ``xcompile inspect``) or returns a match that `rewrite` applies.
Rules work on a `GraphIndex`: the graph's nodes with producer/consumer maps and an initializer table kept up to date
by the edits, so that every edit touches only the nodes concerned and a whole pass stays linear in the graph size
(no ``del graph.node[:]; extend`` per edit). ``GraphIndex.commit()`` writes the nodes back once."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import onnx
from onnx import numpy_helper

from ..protobuf_limit import too_large


@dataclass
class MatchResult:
    ok: bool = True
    reason: str = ""
    data: dict = field(default_factory=dict)   # what check() found, for rewrite()

    @classmethod
    def fail(cls, reason: str) -> "MatchResult":
        return cls(False, reason)


@dataclass
class Decision:
    """One rule on one node: applied, or declined with the reason (for `xcompile inspect`)."""
    rule: str
    node: str
    applied: bool
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.rule}: {self.node}: " + ("applied" if self.applied else f"kept ({self.reason})")


def subgraph_reads(graph) -> set:
    """Names that nodes inside subgraphs (If/Loop/Scan bodies, at any depth) read, outer scope included."""
    names = set()
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []):
                names.update(i for n in sub.node for i in n.input)
                names |= subgraph_reads(sub)
    return names


class GraphIndex:
    """THE index of a graph being canonicalized, shared by every pass (`passes.canonicalize` makes one): nodes (in
    order), producer / consumers, graph outputs (and names read by subgraphs: never renamed or removed),
    initializers by name, and ranks (declared, else inferred once). Edits go through it (`replace_uses`, `remove`,
    `insert_before`, `add_initializer`; `commit` writes the node list back); a pass that edits the proto directly
    calls `reindex()` after."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self.reindex()

    @classmethod
    def of(cls, model) -> "GraphIndex":
        """The index itself, or a new one over a ModelProto (every pass accepts either)."""
        return model if isinstance(model, GraphIndex) else cls(model)

    def reindex(self) -> None:
        self.nodes = list(self.graph.node)
        self.removed: set = set()   # id() of removed nodes
        self._inserted: dict = {}
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for i in node.input:
                self.consumers[i].append(node)
        self.outputs = {o.name for o in self.graph.output}
        self.protected = self.outputs | subgraph_reads(self.graph)
        self.inits = {t.name: t for t in self.graph.initializer}
        self._ranks: Optional[dict] = None
        self._inferred = False

    def upstream(self, t: str, through) -> tuple[str, list]:
        """The chain-pattern helper: follow t's producers while their op type is in `through` (by input 0); returns
        the first tensor not made by one, and the op types passed."""
        passed = []
        while t in self.producer and self.producer[t].op_type in through:
            passed.append(self.producer[t].op_type)
            t = self.producer[t].input[0]
        return t, passed

    # ------------------------------------------------------------------ reading
    def const(self, name: str):
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def rank(self, name: str) -> Optional[int]:
        """Rank of tensor `name` from the declared shapes, else from shape inference (run once); None if unknown."""
        if self._ranks is None:
            self._ranks = _declared_ranks(self.graph)
        if name not in self._ranks and not self._inferred:
            self._inferred = True
            try:
                # a model over 2 GiB got its value_info in the loader; inferring again would copy its weights
                if not too_large(self.model):
                    inferred = onnx.shape_inference.infer_shapes(self.model).graph
                    self._ranks = {**_declared_ranks(inferred), **self._ranks}
            except Exception:  # noqa: BLE001
                pass
        return self._ranks.get(name)

    # ------------------------------------------------------------------ editing
    def add_initializer(self, tensor: onnx.TensorProto) -> str:
        self.graph.initializer.append(tensor)
        self.inits[tensor.name] = tensor
        return tensor.name

    def replace_uses(self, old: str, new: str) -> None:
        """Every node that reads `old` reads `new` instead (only the consumers of `old` are touched)."""
        for node in self.consumers.pop(old, []):
            for k, i in enumerate(node.input):
                if i == old:
                    node.input[k] = new
            self.consumers[new].append(node)

    def remove(self, node) -> None:
        self.removed.add(id(node))
        for i in node.input:
            if i in self.consumers:
                self.consumers[i] = [c for c in self.consumers[i] if c is not node]
        for o in node.output:
            if self.producer.get(o) is node:
                del self.producer[o]

    def insert_before(self, anchor, new_nodes) -> None:
        """Queue `new_nodes` to take the place of `anchor` (which is removed) at commit."""
        self._inserted[id(anchor)] = list(new_nodes)
        self.remove(anchor)

    def commit(self) -> None:
        """Write the node list back (removed nodes dropped, inserted ones in place) and index it afresh."""
        out = []
        for n in self.nodes:
            if id(n) in self._inserted:
                out.extend(self._inserted[id(n)])
            elif id(n) not in self.removed:
                out.append(n)
        self.set_nodes(out)

    def set_nodes(self, nodes) -> None:
        """Write a whole new node list (a pass that rebuilds it, e.g. inlining control flow) and index it afresh."""
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.reindex()


def _declared_ranks(graph) -> dict:
    out = {}
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.name not in out and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = len(vi.type.tensor_type.shape.dim)
    return out


class RewriteRule:
    """pattern (`ops`) -> `check` (a MatchResult, with a reason when it declines) -> `rewrite`."""
    name = "rule"
    ops: tuple = ()

    def check(self, node, gi: GraphIndex) -> MatchResult:
        return MatchResult()

    def rewrite(self, node, gi: GraphIndex, match: MatchResult) -> Any:
        raise NotImplementedError


def apply_rules(model, rules, decisions: Optional[list] = None) -> int:
    """One linear sweep: every node whose op type a rule names is checked and, when it matches, rewritten.
    Returns how many rewrites were applied; appends a Decision per candidate to `decisions`. `model`: a ModelProto
    or the shared GraphIndex."""
    gi = GraphIndex.of(model)
    by_op = {op: r for r in rules for op in r.ops}
    n = 0
    for node in list(gi.nodes):
        r = by_op.get(node.op_type)
        if r is None or id(node) in gi.removed:
            continue
        m = r.check(node, gi)
        if m.ok:
            r.rewrite(node, gi, m)
            n += 1
        if decisions is not None:
            decisions.append(Decision(r.name, node.name or node.output[0], m.ok, m.reason))
    gi.commit()
    return n
