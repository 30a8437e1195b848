"""Copy the input-dependent part of the forward graph onto another input tensor (weights shared)."""
from __future__ import annotations

import networkx as nx
from onnx import NodeProto

from ..backward.builder import Builder
from ..errors import XCompileError
from ..graph import ForwardGraph


def input_dependent_nodes(g: ForwardGraph, sources=None) -> list[NodeProto]:
    """Nodes that read (directly or not) one of `sources` (default: the data tensor), except the producer of a
    source itself (a token model's embedding Gather when the source is its output)."""
    sources = set(sources or [g.data_input])
    dg = nx.DiGraph()
    for node in g.nodes:
        for i in node.input:
            for o in node.output:
                if i and o:
                    dg.add_edge(i, o)
    reach = set()
    for s in sources:
        if s in dg:
            reach |= nx.descendants(dg, s)
    return [n for n in g.nodes if any(o in reach for o in n.output) and not any(o in sources for o in n.output)]


def repeat_rows(b: Builder, t: str, m: int, sample) -> str:
    """[N, *sample] -> [N*m, *sample], each row repeated m times consecutively."""
    e = b.op("Expand", [b.unsqueeze(t, [1]), b.i64([1, m] + [1] * len(sample))], "repeat")
    return b.reshape(e, [-1] + [int(d) for d in sample], "repeated")


def clone_forward(g: ForwardGraph, b: Builder, new_input: str, prefix: str, repeat: int = 1, source: str | None = None):
    """Append copies of every node that depends on `source` (default: the data tensor), reading `new_input` instead.
    With ``repeat`` = m > 1 the copy runs on a batch of N*m rows (m consecutive rows per input row): the model's
    other inputs (masks, token types, the token ids themselves) are repeated the same way and what depends on them
    is copied too. Returns rename(name) -> name of that tensor in the copy."""
    source = source or g.data_input
    mapping = {source: new_input}
    if repeat > 1:
        with b.scope("inputs"):
            for name in g.input_names:
                if name != source and g.shape(name):
                    mapping[name] = repeat_rows(b, name, repeat, g.shape(name)[1:])
    for node in input_dependent_nodes(g, set(mapping)):
        if any(a.g.node or a.graphs for a in node.attribute):
            raise XCompileError(f"node {node.name!r} ({node.op_type}): control flow on the input path cannot be replicated")
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{prefix}/{node.name or node.output[0]}"
        for k, i in enumerate(copy.input):
            if i in mapping:
                copy.input[k] = mapping[i]
        for k, o in enumerate(copy.output):
            if o:
                mapping[o] = f"{prefix}/{o}"
                copy.output[k] = mapping[o]
        b.nodes.append(copy)
    return lambda name: mapping.get(name, name)
