"""THE backward engine: one reverse walk over the forward graph for every method.

It visits the nodes on relevance-carrying paths in reverse topological order, asks each node's emitter
(``method.backward_for(node)``: the op table, or the method's own choice for that node) for the nodes that map output relevance to input
relevance, and sums relevance where a tensor has several consumers (fan-in)."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import onnx
from onnx import helper

from ..errors import UnsupportedNodeError, UnsupportedOperatorsError
from ..graph import ForwardGraph, attr
from . import ops  # noqa: F401 - registers the emitters
from .builder import Builder
from .table import NON_DIFFERENTIABLE, Backward, lookup


class NodeContext:
    """What an emitter sees: the forward node, its tensors (as named in the emitted graph), shapes,
    constants, the builder and the method's parameters."""

    def __init__(self, engine: "Engine", node: onnx.NodeProto, live: set):
        self.engine, self.node, self.b, self.g = engine, node, engine.b, engine.g
        self.params = engine.params
        self.method = engine.method  # the Method object (rule choice, fitted patterns, ...)
        self._live = live

    # names
    def viewed_as(self, op_type: str, keep) -> "NodeContext":
        """This node read as `op_type` with its attributes named in `keep` (its first input and output): another
        op's emitter run on it (LRP's proportional MaxPool is the AveragePool backward over the same windows)."""
        node = helper.make_node(op_type, list(self.node.input[:1]), list(self.node.output[:1]), name=self.node.name,
                                **{k: v for k in keep if (v := self.attr(k)) is not None})
        return NodeContext(self.engine, node, self._live)

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def x(self, k: int = 0) -> str:
        """The forward value of input k, as it exists in the emitted graph (float16 ones cast to float32)."""
        name = self.node.input[k]
        return float32_view(self.b, self.g, name, name if self.g.is_const(name) else self.engine.fwd(name))

    def y(self, k: int = 0) -> str:
        name = self.node.output[k]
        return float32_view(self.b, self.g, name, self.engine.fwd(name))

    @property
    def live(self) -> set:
        """The tensors that carry relevance (on a path from the source to the explained scores)."""
        return self._live

    def needs(self, k: int) -> bool:
        return k < len(self.node.input) and self.node.input[k] in self._live

    # attributes, shapes, constants
    def attr(self, name: str, default=None):
        return attr(self.node, name, default)

    def in_shape(self, k: int = 0) -> tuple:
        return self.g.shape(self.node.input[k])

    def out_shape(self, k: int = 0) -> tuple:
        return self.g.shape(self.node.output[k])

    def const(self, k: int):
        return self.g.const(self.node.input[k]) if k < len(self.node.input) else None

    # common shape helpers (constants only: the batch dimension becomes -1)
    def reshape_to(self, t: str, shape: tuple, hint="reshape") -> str:
        dims = [-1 if d is None else int(d) for d in shape]
        if dims.count(-1) > 1:  # more than one dynamic dim: fall back to the forward tensor's run-time shape
            raise ValueError("reshape_to needs at most one dynamic dimension")
        return self.b.reshape(t, dims, hint)

    def unbroadcast(self, g: str, g_shape: tuple, target_shape: tuple, hint="unbroadcast") -> str:
        """Sum g over the axes that broadcasting added or expanded, so it gets target_shape."""
        r, tr = len(g_shape), len(target_shape)
        lead = r - tr
        axes = list(range(lead))
        for i, d in enumerate(target_shape):
            gd = g_shape[lead + i]
            if d == 1 and gd != 1:
                axes.append(lead + i)
        if axes:
            g = self.b.reduce("ReduceSum", g, axes, keepdims=1, hint=hint)
        if lead:
            g = self.b.squeeze(g, list(range(lead)), hint=hint + "_squeeze")
        return g


class Engine:
    def __init__(self, graph: ForwardGraph, builder: Builder, params: Optional[dict] = None, rename: Optional[Callable[[str], str]] = None,
                 source: Optional[str] = None, explained: Optional[str] = None, method=None):
        self.g, self.b = graph, builder
        self.method = method
        self.params = params or {}
        self.fwd = rename or (lambda name: name)
        self.source = source or graph.data_input
        self.explained = explained or graph.explained

    def spec(self, node: onnx.NodeProto) -> Optional[Backward]:
        """The node's backward: the method decides (without one: the op table)."""
        if self.method is not None:
            return self.method.backward_for(node)
        return lookup(node.op_type)

    def _slots(self, node):
        if node.op_type in NON_DIFFERENTIABLE:
            return []
        spec = self.spec(node)
        return None if spec is None else spec.slots(node)

    def paths(self):
        return self.g.relevance_paths(self._slots, self.source, self.explained)

    def unsupported(self) -> list[tuple[str, str]]:
        _, nodes = self.paths()
        return [(n.name or n.output[0], n.op_type) + ((why,) if (why := _declined(n)) else ())
                for n in nodes if n.op_type not in NON_DIFFERENTIABLE and self.spec(n) is None]

    def run(self, seed: str, where: str = "model") -> dict[str, str]:
        """Propagate `seed` (relevance/gradient at the explained tensor) back to the source.
        Returns {forward tensor name: emitted relevance tensor} for every live tensor reached."""
        live, nodes = self.paths()
        failed: list = []  # every unsupported node (no emitter, or an emitter that refuses it): raised once, at the end
        pending: dict[str, list[str]] = {self.explained: [seed]}
        total: dict[str, str] = {}

        def collect(t: str) -> Optional[str]:
            if t in total:
                return total[t]
            parts = pending.pop(t, None)
            if not parts:
                return None
            with self.b.scope("fanin"):
                total[t] = self.b.sum(parts, hint=_short(t))
            return total[t]

        for node in reversed(nodes):
            gys = [collect(o) if o in live else None for o in node.output]
            if all(gy is None for gy in gys):
                continue
            spec = None if node.op_type in NON_DIFFERENTIABLE else self.spec(node)
            ctx = NodeContext(self, node, live)
            try:
                if spec is None:
                    raise UnsupportedNodeError(node.name or node.output[0], node.op_type, _declined(node))
                with self.b.scope(_short(node.name or node.output[0])):
                    gxs = spec.fn(ctx, gys)
            except UnsupportedNodeError as e:
                # keep walking (zeros stand in for its input relevance) so that every unsupported node is named
                failed.append(e.node if e.node[2] else e.node[:2])
                gxs = [self.b.zeros_like(ctx.x(k)) if name in live and not self.g.is_const(name) else None
                       for k, name in enumerate(node.input)]
            for k, (name, gx) in enumerate(zip(node.input, gxs)):
                if gx is not None and name in live:
                    pending.setdefault(name, []).append(gx)
        collect(self.source)
        if failed:
            raise UnsupportedOperatorsError(failed[::-1], where)  # in forward order
        return total


def float32_view(b: Builder, g: ForwardGraph, name: str, emitted: Optional[str] = None) -> str:
    """The backward runs in float32: a float16 forward tensor `name` (emitted as `emitted`) is read through one
    Cast to float32 per tensor (a float16 model's explainer returns float32 relevance)."""
    emitted = emitted or name
    if g.is_const(name):
        c = g.const(name)
        low = c is not None and c.dtype == np.float16
    elif name in g.dtypes:
        low = g.dtypes[name] == np.float16
    else:  # a graph input
        low = any(i.name == name and i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in g.model.graph.input)
    if not low:
        return emitted
    cache = b.float32_views
    if emitted not in cache:
        with b.scope("float32"):
            cache[emitted] = b.cast(emitted, onnx.TensorProto.FLOAT, _short(emitted))
    return cache[emitted]


def _declined(node: onnx.NodeProto) -> str:
    """Why canonicalization left a node as it is (control flow it could not inline: canonicalize/controlflow.py)."""
    return node.doc_string[len("xcompile: "):] if node.doc_string.startswith("xcompile: ") else ""


def _short(name: str) -> str:
    return name.strip("/").replace(":", "_") or "node"
