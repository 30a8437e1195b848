"""Copy the input-dependent part of the forward graph onto another input tensor (weights shared)."""
from __future__ import annotations

import networkx as nx
from onnx import NodeProto

from ..backward.builder import Builder
from ..errors import XCompileError
from ..graph import ForwardGraph


def input_dependent_nodes(g: ForwardGraph) -> list[NodeProto]:
    dg = nx.DiGraph()
    for node in g.nodes:
        for i in node.input:
            for o in node.output:
                if i and o:
                    dg.add_edge(i, o)
    reach = nx.descendants(dg, g.data_input) if g.data_input in dg else set()
    return [n for n in g.nodes if any(o in reach for o in n.output)]


def clone_forward(g: ForwardGraph, b: Builder, new_input: str, prefix: str):
    """Append copies of every node that depends on the data input, reading `new_input` instead.
    Returns rename(name) -> name of that tensor in the copy."""
    mapping = {g.data_input: new_input}
    for node in input_dependent_nodes(g):
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
