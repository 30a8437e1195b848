"""Constants in one place: Constant nodes become initializers; nodes that depend on no graph input are evaluated
once (by onnxruntime) and become initializers; initializers nothing reads are dropped."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..kinds import QUANTIZATION_OPS, RANDOM_OPS
from ..sessions import session
from .rewrite import GraphIndex


def constants_to_initializers(model, decisions=None) -> int:
    """Constant nodes become initializers (so every constant is found in one place)."""
    gi = GraphIndex.of(model)
    n = 0
    for node in gi.nodes:
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
                continue
            gi.add_initializer(numpy_helper.from_array(arr, node.output[0]))
            gi.remove(node)
            n += 1
    gi.commit()
    return n


def fold_constants(model, decisions=None) -> int:
    """Nodes that depend on no graph input are evaluated once (by onnxruntime) and become initializers."""
    gi = GraphIndex.of(model)
    model, g = gi.model, gi.graph
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
    fold_set = {id(n) for n in foldable}
    needed = [o for n in foldable for o in n.output
              if o and (o in gi.protected or any(id(c) not in fold_set for c in gi.consumers.get(o, [])))]
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
            gi.add_initializer(numpy_helper.from_array(np.asarray(v), name))
    for n in foldable:
        gi.remove(n)
    gi.commit()
    remove_unused_initializers(gi)
    return len(foldable)


def remove_unused_initializers(model, decisions=None) -> int:
    gi = GraphIndex.of(model)
    g = gi.graph
    used = {i for i, readers in gi.consumers.items() if readers} | gi.protected
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
        gi.reindex()
    return n
