"""A read-only view of the (canonicalized) forward graph that the backward engine walks.

It knows each tensor's measured shape (None at the batch dimension), its dtype, constant values,
producers and consumers, and — through a networkx graph of differentiable edges — which tensors
carry relevance from the data input to the explained scores. Shape arithmetic, constants and
integer index paths never do: they are left untouched and never differentiated.

Also the two names every explainer adds (`TARGET` input, `RELEVANCE` output) and the one attribute reader."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

import networkx as nx
import onnx
from onnx import helper, numpy_helper

# the explainer's own I/O names (docs/ARCHITECTURE.md, "Emitted model")
TARGET = "target"
RELEVANCE = "relevance"


def _decoded(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [x.decode() for x in v]
    return v


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute `name` of `node` (strings decoded to str), else `default`."""
    for a in node.attribute:
        if a.name == name:
            return _decoded(helper.get_attribute_value(a))
    return default


def attrs(node: onnx.NodeProto) -> dict:
    """Every attribute of `node` as {name: value} (strings decoded to str)."""
    return {a.name: _decoded(helper.get_attribute_value(a)) for a in node.attribute}


@dataclass
class TokenInput:
    """A token-id data input: `input` (int ids [N, L]) is read by the Gather whose output `embedding` (E = table[ids],
    [N, L, D]) is what every method explains; `table` is the embedding initializer with `vocab` rows."""
    input: str
    embedding: str
    table: str
    vocab: int
    baseline_token: Optional[int] = None


def subgraphs(node: onnx.NodeProto) -> list:
    """The node's subgraph attributes (If branches, Loop / Scan bodies)."""
    return [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH] + \
        [s for a in node.attribute if a.type == onnx.AttributeProto.GRAPHS for s in a.graphs]


def defined_names(graph: onnx.GraphProto) -> set:
    """Every name a (sub)graph defines, nested subgraphs included."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {t.name for t in graph.sparse_initializer}
    for n in graph.node:
        names.update(o for o in n.output if o)
        for s in subgraphs(n):
            names |= defined_names(s)
    return names


def outer_reads(graph: onnx.GraphProto) -> set:
    """Names a subgraph reads from enclosing scopes (at any depth)."""
    inner = defined_names(graph)
    reads = set()
    for n in graph.node:
        reads.update(i for i in n.input if i and i not in inner)
        for s in subgraphs(n):
            reads |= outer_reads(s) - inner
    return reads


def outer_reads_of(node: onnx.NodeProto) -> set:
    """What a node's subgraphs read from the scope the node is in."""
    return set().union(*[outer_reads(s) for s in subgraphs(node)]) if subgraphs(node) else set()


@dataclass
class ForwardGraph:
    model: onnx.ModelProto
    data_input: str
    score_output: str
    explained: str  # tensor whose entries are the explained scores (pre-softmax logits by default)
    shapes: dict
    dtypes: dict
    fixed_batch: bool = False
    opset: int = 17
    _consts: dict = field(default_factory=dict)
    canonicalization: list = field(default_factory=list)  # the rewrite rules' decisions (canonicalize.rewrite)
    token: Optional[TokenInput] = None  # set when the explained input is token ids: data_input is then its embedding
    # the nodes the backward walks (the model's own, or a quantized model's float view: load/quantized.py) and their
    # index; set by __post_init__ / `walk`, during loading only
    nodes: list = field(init=False)
    initializers: dict = field(init=False)
    producer: dict = field(init=False)
    consumers: dict = field(init=False)
    virtual: dict = field(default_factory=dict)         # a quantized model's float view: tensor -> its node
    virtual_consts: dict = field(default_factory=dict)  # ... and its dequantized constants
    virtual_alias: dict = field(default_factory=dict)   # forward tensor -> its recomputed copy (QDQ scores)
    single_logit: bool = False  # one logit shown as [-z, z] (load/forward.py)
    feed_plan: dict = field(default_factory=dict)  # how every input is fed (load/probe.py)
    derived: dict = field(default_factory=dict)         # computed once and kept: "value_ranges" (lrp/ranges.py), ...

    def __post_init__(self):
        g = self.model.graph
        self.initializers = {t.name: t for t in g.initializer}
        self.walk(list(g.node))
        for vi in list(g.input):
            if vi.name == self.data_input:
                self.shapes.setdefault(vi.name, None)

    def walk(self, nodes: list, constants: Optional[dict] = None) -> None:
        """Set the nodes the backward walks and index them (producer / consumers); `constants` join the
        initializers. Used while loading: a quantized model's float view replaces its quantized nodes, fused
        contrib ops their expansion."""
        self.nodes = nodes
        self.initializers.update(constants or {})
        self.producer = {}
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers[i].append(node)
        self.derived.pop("value_ranges", None)  # facts of the node list (a kept session stays)

    @property
    def graph_input(self) -> str:
        """The model input the user gives for the explained data (the token ids for a token model)."""
        return self.token.input if self.token else self.data_input

    @property
    def input_names(self) -> list:
        """Every model input (not initializers), in order: the explainer keeps them all."""
        return [i.name for i in self.model.graph.input if i.name not in self.initializers]

    # ------------------------------------------------------------------ values
    def is_const(self, name: str) -> bool:
        return name in self.initializers

    def const(self, name: str):
        """numpy value of an initializer, else None."""
        if not name:
            return None
        if name not in self._consts:
            t = self.initializers.get(name)
            self._consts[name] = None if t is None else numpy_helper.to_array(t)
        return self._consts[name]

    def shape(self, name: str) -> tuple:
        if name in self.shapes and self.shapes[name] is not None:
            return self.shapes[name]
        v = self.const(name)
        if v is not None:
            return tuple(v.shape)
        raise KeyError(f"no shape known for tensor {name!r}")

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    # -------------------------------------------------------------- reachability
    def relevance_paths(self, differentiable, source: Optional[str] = None,
                        explained: Optional[str] = None) -> tuple[set, list]:
        """Tensors on differentiable paths from `source` (default the data input) to `explained` (default the
        explained tensor), and the nodes that produce them (in graph order). `differentiable(node)` -> indices of input slots that
        carry relevance, or None when the op is unknown (it is then treated as fully connected, so
        that it can be reported as unsupported)."""
        dg = nx.DiGraph()
        hidden = {}  # a node with subgraphs (If / Loop / Scan left by canonicalization) reads outer tensors inside
        for node in self.nodes:
            slots = differentiable(node)
            ins = range(len(node.input)) if slots is None else slots
            for k in ins:
                if k < len(node.input) and node.input[k]:
                    for o in node.output:
                        if o:
                            dg.add_edge(node.input[k], o)
            if subgraphs(node):  # every read is an edge: such a node on a relevance path is refused, never skipped
                hidden[id(node)] = outer_reads_of(node)
                for i in hidden[id(node)]:
                    for o in node.output:
                        if o:
                            dg.add_edge(i, o)
        source, explained = source or self.data_input, explained or self.explained
        if source not in dg or explained not in dg:
            return set(), []
        carried = nx.descendants(dg, source) | {source}
        needed = nx.ancestors(dg, explained) | {explained}
        live = carried & needed
        # the producer of the data tensor (a token model's embedding Gather) is not walked: relevance stops at it
        nodes = [n for n in self.nodes if any(o in live for o in n.output)
                 and any(i in live for i in list(n.input) + sorted(hidden.get(id(n), ())))]
        return live, nodes
