"""The table "op type -> backward emitter" that the engine reads.

An emitter is a function ``(ctx, grads_of_outputs) -> grads_of_inputs`` that appends plain ONNX nodes
through ``ctx.b`` (the builder). It is the vector-Jacobian product of the op; methods (LRP, guided
backprop, patterns, ...) override single entries, never the traversal. ``inputs`` lists the input slots
that carry relevance (shape/index inputs do not)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..kinds import NON_DIFFERENTIABLE  # noqa: F401 - re-exported: ops whose outputs never carry relevance

ALL = "all"


@dataclass(frozen=True)
class Backward:
    fn: Callable
    inputs: Sequence[int] | str = (0,)

    def slots(self, node) -> list[int]:
        if self.inputs == ALL:
            return list(range(len(node.input)))
        return [k for k in self.inputs if k < len(node.input)]


TABLE: dict[str, Backward] = {}


def backward(*op_types: str, inputs: Sequence[int] | str = (0,)):
    """Register the emitter for one or more op types."""
    def deco(fn):
        for op in op_types:
            TABLE[op] = Backward(fn, inputs)
        return fn
    return deco


def lookup(op_type: str, overrides: Optional[dict] = None) -> Optional[Backward]:
    if overrides and op_type in overrides:
        return overrides[op_type]
    return TABLE.get(op_type)
