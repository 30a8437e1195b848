"""Constants in one place: Constant nodes become initializers; nodes that depend on no graph input are evaluated
once (by onnxruntime) and become initializers; initializers nothing reads are dropped."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..kinds import QUANTIZATION_OPS, RANDOM_OPS
from ..sessions import session
from .rewrite import consumers as _consumers
from .rewrite import replace_nodes as _replace_nodes
from .rewrite import subgraph_reads as _subgraph_reads


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Constant nodes become initializers (so every constant is found in one place)."""
    g = model.graph
    keep, n = [], 0
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attribute[0]
            kind = attr.name
            if kind == "value":
                arr = numpy_helper.to_array(attr.t)
            elif kind in ("value_float", "value_int"):
                arr = np.array(helper.get_attribute_value(attr), np.float32 if kind == "value_float" else np.int64)
            elif kind in ("value_floats", "value_ints"):
                arr = np.array(helper.get_attribute_value(attr), np.float32 if kind == "value_floats" else np.int64)
            else:
                keep.append(node)
                continue
            g.initializer.append(numpy_helper.from_array(arr, node.output[0]))
            n += 1
        else:
            keep.append(node)
    _replace_nodes(g, keep)
    return n


def fold_constants(model: onnx.ModelProto) -> int:
    """Nodes that depend on no graph input are evaluated once (by onnxruntime) and become initializers."""
    g = model.graph
    known = {t.name for t in g.initializer}
    graph_inputs = {i.name for i in g.input if i.name not in known}
    foldable, produced = [], set()
    for node in g.node:
        if node.op_type in RANDOM_OPS or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type in QUANTIZATION_OPS:
            # a DequantizeLinear of int8 weights stays: onnxruntime fuses DQ -> Conv -> Q into its integer kernels,
            # which a folded float weight would stop (the scores would no longer be the quantized model's own)
            continue
        if all((not i) or i in known or i in produced for i in node.input) and not any(i in graph_inputs for i in node.input):
            foldable.append(node)
            produced.update(o for o in node.output if o)
    if not foldable:
        return 0
    cons = _consumers(g)
    fold_set = {id(n) for n in foldable}
    outputs = {o.name for o in g.output} | _subgraph_reads(g)
    needed = [o for n in foldable for o in n.output if o and (o in outputs or any(id(c) not in fold_set for c in cons[o]))]
    if needed:
        read = {i for n in foldable for i in n.input}  # only the initializers the folded nodes read: not every weight
        sub = helper.make_graph(foldable, "fold", [], [onnx.ValueInfoProto(name=o) for o in needed],
                                initializer=[t for t in g.initializer if t.name in read])
        m = helper.make_model(sub, opset_imports=model.opset_import, ir_version=model.ir_version)
        try:
            vals = session(m).run(needed, {})
        except Exception:  # noqa: BLE001 - leave the graph as it is; folding is an optimisation
            return 0
        for name, v in zip(needed, vals):
            g.initializer.append(numpy_helper.from_array(np.asarray(v), name))
    _replace_nodes(g, [n for n in g.node if id(n) not in fold_set])
    remove_unused_initializers(model)
    return len(foldable)


def remove_unused_initializers(model: onnx.ModelProto) -> int:
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output} | _subgraph_reads(g)
    keep = [t for t in g.initializer if t.name in used]
    n = len(g.initializer) - len(keep)
    if n:
        dropped = {t.name for t in g.initializer} - {t.name for t in keep}
        # deleted in place: rebuilding the list would copy every kept weight (protobuf copies on extend)
        for k in reversed([k for k, t in enumerate(g.initializer) if t.name in dropped]):
            del g.initializer[k]
        # old-style models also declare initializers as graph inputs: drop those declarations too
        inputs = [i for i in g.input if i.name not in dropped]
        del g.input[:]
        g.input.extend(inputs)
    return n
