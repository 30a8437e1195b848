"""Shape freezing: run-time shape arithmetic that does not depend on the batch size becomes constants (measured by
the probe at batch 1 and 2); a Reshape whose target is computed gets the constant target its measured output
implies. Each frontier tensor / Reshape is a match -> check (same value at both batch sizes) -> rewrite decision."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from ..kinds import QUANTIZATION_OPS, RANDOM_OPS, SHAPE_SOURCES
from .rewrite import Decision, GraphIndex


def freeze_shape_arithmetic(model: onnx.ModelProto, data_input, at_one: dict, at_two: Optional[dict],
                            decisions: Optional[list] = None) -> int:
    """Run-time shape arithmetic that does not depend on the batch size becomes constants.

    Exporters compute indices, slice bounds and pads from ``Shape(x)`` at run time (torch's ``as_strided``,
    window partitions, channel shuffles). A tensor that depends on the data only through Shape/Size nodes and has
    the same value at batch 1 and batch 2 (measured by the probe) is fixed for the compiled sample shape: it becomes
    an initializer, so the backward emitters see constant indices. Batch-dependent values stay computed."""
    if at_two is None:
        return 0
    gi = GraphIndex.of(model)
    g = gi.graph
    data_dependent = {data_input} if isinstance(data_input, str) else set(data_input)  # one input name, or every input
    for node in g.node:  # topological order (checked by onnx)
        if node.op_type in SHAPE_SOURCES:
            continue
        if any(i in data_dependent for i in node.input if i):
            data_dependent.update(o for o in node.output if o)
    known = {t.name for t in g.initializer} | {i.name for i in g.input}
    outputs, consumers = gi.protected, gi.consumers
    frozen = []
    for node in g.node:
        if node.op_type in RANDOM_OPS or node.op_type in QUANTIZATION_OPS:  # DQ(int8 weight) stays: constants.py
            continue
        for o in node.output:
            if not o or o in data_dependent or o in known or o in outputs or o not in at_one or o not in at_two:
                continue
            if not any(c.op_type not in SHAPE_SOURCES and any(out in data_dependent for out in c.output)
                       for c in consumers.get(o, [])):
                continue  # only the frontier: tensors read by the data path
            a, b = np.asarray(at_one[o]), np.asarray(at_two[o])
            same = a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
            if same:
                frozen.append((o, a))
            if decisions is not None:
                decisions.append(Decision("freeze_shape_arithmetic", o, same, "" if same else "its value depends on the batch size"))
    n_reshapes = _constant_reshape_shapes(g, known, at_one, at_two, decisions)
    if not frozen:
        if n_reshapes:
            _drop_dead_nodes(gi)
        return n_reshapes
    for name, value in frozen:
        g.initializer.append(numpy_helper.from_array(value, name))
    names = {n for n, _ in frozen}
    for node in g.node:  # the producers' frozen outputs are now initializers: detach them
        for k, o in enumerate(node.output):
            if o in names:
                node.output[k] = f"{o}/xc_unused"
    _drop_dead_nodes(gi)
    return len(frozen) + n_reshapes


def _constant_reshape_shapes(g, known: set, at_one: dict, at_two: dict, decisions: Optional[list] = None) -> int:
    """A Reshape whose target shape is computed at run time (Shape -> Gather -> Concat, as the legacy exporter
    writes a flatten) gets the constant target its measured output shape implies, -1 at the batch dimension.
    The CUDA EP places such shape subgraphs on the CPU; with constants the explainer stays on the GPU."""
    n = 0
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] in known:
            continue
        y = node.output[0]
        if y not in at_one or y not in at_two:
            continue
        s1, s2 = np.shape(at_one[y]), np.shape(at_two[y])
        if len(s1) != len(s2):
            continue
        varying = [k for k, (a, b) in enumerate(zip(s1, s2)) if a != b]
        if len(varying) > 1 or 0 in s1:
            if decisions is not None:
                decisions.append(Decision("constant_reshape_shape", node.name or y, False,
                                          "more than one dimension varies with the batch" if len(varying) > 1
                                          else "an empty dimension"))
            continue
        target = np.array([-1 if k in varying else d for k, d in enumerate(s1)], np.int64)
        name = f"{node.name or y}/xc_const_shape"
        g.initializer.append(numpy_helper.from_array(target, name))
        known.add(name)
        node.input[1] = name
        for a in list(node.attribute):
            if a.name == "allowzero":
                node.attribute.remove(a)
        n += 1
        if decisions is not None:
            decisions.append(Decision("constant_reshape_shape", node.name or y, True))
    return n


def _drop_dead_nodes(gi: GraphIndex) -> None:
    needed = set(gi.protected)
    for node in reversed(gi.nodes):
        if any(o in needed for o in node.output if o):
            needed.update(i for i in node.input if i)
        else:
            gi.remove(node)
    gi.commit()
