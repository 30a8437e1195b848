"""Canonicalization: small, named graph passes that run before any method sees the graph.

Each pass takes a ModelProto, changes it in place, and returns a short count of what it did.
They preserve the model's function (up to float rounding) and the names of graph inputs/outputs."""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..protobuf_limit import too_large
from ..sessions import session

RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _consumers(graph):
    cons = defaultdict(list)
    for node in graph.node:
        for i in node.input:
            cons[i].append(node)
    return cons


def _subgraph_reads(graph) -> set:
    """Names that nodes inside subgraphs (If/Loop/Scan bodies, at any depth) read, outer scope included."""
    names = set()
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []):
                names.update(i for n in sub.node for i in n.input)
                names |= _subgraph_reads(sub)
    return names


def _replace_nodes(graph, nodes):
    del graph.node[:]
    graph.node.extend(nodes)


def _rename_input(graph, old, new):
    for node in graph.node:
        for k, i in enumerate(node.input):
            if i == old:
                node.input[k] = new


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


def drop_identity(model: onnx.ModelProto) -> int:
    """Identity and (inference) Dropout are removed; consumers read the input directly."""
    g = model.graph
    outputs = {o.name for o in g.output} | _subgraph_reads(g)
    keep, n = [], 0
    for node in g.node:
        if node.op_type in ("Identity", "Dropout") and node.input[0] and node.output[0] not in outputs:
            if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
                keep.append(node)
                continue
            _rename_input(g, node.output[0], node.input[0])
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
        if node.domain not in ("", "ai.onnx"):
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
        sub = helper.make_graph(foldable, "fold", [], [onnx.ValueInfoProto(name=o) for o in needed],
                                initializer=[t for t in g.initializer])
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
        del g.initializer[:]
        g.initializer.extend(keep)
        # old-style models also declare initializers as graph inputs: drop those declarations too
        inputs = [i for i in g.input if i.name not in dropped]
        del g.input[:]
        g.input.extend(inputs)
    return n


def _init(g, name):
    for t in g.initializer:
        if t.name == name:
            return t
    return None


def _bn_affine(g, node):
    vals = [_init(g, i) for i in node.input[1:5]]
    if any(v is None for v in vals):
        return None
    scale, bias, mean, var = (numpy_helper.to_array(v).astype(np.float64) for v in vals)
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    k = scale / np.sqrt(var + eps)
    return k, bias - mean * k


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """BatchNormalization folded into the Conv/Gemm before it when that is exact (the linear layer's
    output feeds only the BatchNorm); otherwise replaced by a per-channel affine Mul + Add."""
    g = model.graph
    cons = _consumers(g)
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    drop, n_done = set(), 0
    new_nodes = []
    for node in g.node:
        if node.op_type != "BatchNormalization" or len([o for o in node.output if o]) > 1:
            continue
        aff = _bn_affine(g, node)
        if aff is None:
            continue
        k, c = aff
        prev = producer.get(node.input[0])
        if (prev is not None and prev.op_type in ("Conv", "ConvTranspose", "Gemm") and len(cons[node.input[0]]) == 1
                and node.input[0] not in outputs and _init(g, prev.input[1]) is not None):
            ok = _merge_into_linear(g, prev, k, c)
            if ok:
                prev.output[0] = node.output[0]
                drop.add(id(node))
                n_done += 1
                continue
        # keep a correct per-channel affine: y = x * k + c, broadcast over spatial dims; needs the input's rank
        rank = _rank(model, node.input[0])
        if rank is None:
            continue  # rank unknown: keep the BatchNormalization node as it is
        drop.add(id(node))
        new_nodes.append((node, k, c, rank))
        n_done += 1
    nodes = []
    for node in g.node:
        hit = [t for t in new_nodes if t[0] is node]
        if hit:
            _, k, c, rank = hit[0]
            shape = [-1] + [1] * max(rank - 2, 0)
            kn, cn = f"{node.name or node.output[0]}/bn_scale", f"{node.name or node.output[0]}/bn_shift"
            g.initializer.append(numpy_helper.from_array(k.reshape(shape).astype(np.float32), kn))
            g.initializer.append(numpy_helper.from_array(c.reshape(shape).astype(np.float32), cn))
            mid = f"{node.output[0]}/scaled"
            nodes.append(helper.make_node("Mul", [node.input[0], kn], [mid], name=f"{node.name}/scale"))
            nodes.append(helper.make_node("Add", [mid, cn], [node.output[0]], name=f"{node.name}/shift"))
        elif id(node) not in drop:
            nodes.append(node)
    _replace_nodes(g, nodes)
    remove_unused_initializers(model)
    return n_done


def _rank(model, name):
    """Rank of tensor `name` from the declared shapes, else from shape inference; None when unknown."""
    def lookup(g):
        return next((len(vi.type.tensor_type.shape.dim) for vi in list(g.value_info) + list(g.input) + list(g.output)
                     if vi.name == name and vi.type.tensor_type.HasField("shape")), None)
    r = lookup(model.graph)
    if r is None:
        try:
            # a model over 2 GiB got its value_info in the loader; inferring again would copy its weights
            r = None if too_large(model) else lookup(onnx.shape_inference.infer_shapes(model).graph)
        except Exception:  # noqa: BLE001
            r = None
    return r


def _merge_into_linear(g, lin, k, c) -> bool:
    w_t = _init(g, lin.input[1])
    w = numpy_helper.to_array(w_t).astype(np.float64)
    attrs = {a.name: helper.get_attribute_value(a) for a in lin.attribute}
    if lin.op_type == "Conv":
        w2 = w * k.reshape([-1] + [1] * (w.ndim - 1))
    elif lin.op_type == "ConvTranspose":
        grp = attrs.get("group", 1)
        cin, cpg = w.shape[0], w.shape[1]
        w2 = w.reshape(grp, cin // grp, cpg, *w.shape[2:]) * k.reshape(grp, 1, cpg, *([1] * (w.ndim - 2)))
        w2 = w2.reshape(w.shape)
    else:  # Gemm: output features are the columns of op(B)
        beta = attrs.get("beta", 1.0)
        if beta == 0:  # the bias input is cancelled: a folded bias could not be expressed (keep Mul+Add)
            return False
        w2 = w * (k[None, :] if not attrs.get("transB", 0) else k[:, None])
        if len(lin.input) > 2 and lin.input[2]:
            b_t = _init(g, lin.input[2])
            if b_t is None:
                return False
            b = numpy_helper.to_array(b_t).astype(np.float64) * beta
            b2 = (np.broadcast_to(b, k.shape) * k + c) / beta
            _set_init_new(g, lin, 2, b2)
        else:
            _add_bias(g, lin, c / beta)
        _set_init_new(g, lin, 1, w2)
        return True
    if len(lin.input) > 2 and lin.input[2]:
        b_t = _init(g, lin.input[2])
        if b_t is None:
            return False
        b2 = numpy_helper.to_array(b_t).astype(np.float64) * k + c
        _set_init_new(g, lin, 2, b2)
    else:
        _add_bias(g, lin, c)
    _set_init_new(g, lin, 1, w2)
    return True


def _set_init_new(g, node, slot, arr):
    """Write a folded parameter under a new name (the old one may be shared by other nodes)."""
    name, taken, j = f"{node.input[slot]}/bn_folded", {t.name for t in g.initializer}, 1
    while name in taken:
        name, j = f"{node.input[slot]}/bn_folded_{j}", j + 1
    g.initializer.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
    node.input[slot] = name


def _add_bias(g, node, c):
    name = f"{node.name or node.output[0]}/bias_bn_folded"
    g.initializer.append(numpy_helper.from_array(np.asarray(c, np.float32), name))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name


def expose_maxpool_indices(model: onnx.ModelProto) -> int:
    """MaxPool gets its Indices output so the backward pass can reuse the forward switches."""
    n = 0
    for node in model.graph.node:
        if node.op_type == "MaxPool" and (len(node.output) < 2 or not node.output[1]):
            if len(node.output) < 2:
                node.output.append(f"{node.output[0]}/indices")
            else:
                node.output[1] = f"{node.output[0]}/indices"
            n += 1
    return n


def find_explained_scores(model: onnx.ModelProto, score_output: str, keep_softmax: bool = False) -> str:
    """The tensor whose entries are explained: the score output, or the logits before a trailing
    Softmax/LogSoftmax (possibly behind Identity/Flatten/Reshape/Squeeze) unless keep_softmax. Behind a shape op the
    logits are taken only where they are [N, classes] already (rank 2), else the score output stays explained."""
    if keep_softmax:
        return score_output
    producer = {o: n for n in model.graph.node for o in n.output}
    t, reshaped = score_output, False
    while t in producer and producer[t].op_type in ("Identity", "Flatten", "Reshape", "Squeeze"):
        reshaped |= producer[t].op_type != "Identity"
        t = producer[t].input[0]
    node = producer.get(t)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        if not reshaped or _rank(model, node.input[0]) == 2:
            return node.input[0]
    return score_output


PASSES = [constants_to_initializers, drop_identity, fold_constants, fold_batchnorm, expose_maxpool_indices]


SHAPE_SOURCES = {"Shape", "Size"}


def freeze_shape_arithmetic(model: onnx.ModelProto, data_input: str, at_one: dict, at_two: Optional[dict]) -> int:
    """Run-time shape arithmetic that does not depend on the batch size becomes constants.

    Exporters compute indices, slice bounds and pads from ``Shape(x)`` at run time (torch's ``as_strided``,
    window partitions, channel shuffles). A tensor that depends on the data only through Shape/Size nodes and has
    the same value at batch 1 and batch 2 (measured by the probe) is fixed for the compiled sample shape: it becomes
    an initializer, so the backward emitters see constant indices. Batch-dependent values stay computed."""
    if at_two is None:
        return 0
    g = model.graph
    data_dependent = {data_input}
    for node in g.node:  # topological order (checked by onnx)
        if node.op_type in SHAPE_SOURCES:
            continue
        if any(i in data_dependent for i in node.input if i):
            data_dependent.update(o for o in node.output if o)
    known = {t.name for t in g.initializer} | {i.name for i in g.input}
    outputs = {o.name for o in g.output} | _subgraph_reads(g)
    consumers = _consumers(g)
    frozen = []
    for node in g.node:
        if node.op_type in RANDOM_OPS:
            continue
        for o in node.output:
            if not o or o in data_dependent or o in known or o in outputs or o not in at_one or o not in at_two:
                continue
            if not any(c.op_type not in SHAPE_SOURCES and any(out in data_dependent for out in c.output)
                       for c in consumers.get(o, [])):
                continue  # only the frontier: tensors read by the data path
            a, b = np.asarray(at_one[o]), np.asarray(at_two[o])
            if a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b):
                frozen.append((o, a))
    n_reshapes = _constant_reshape_shapes(g, known, at_one, at_two)
    if not frozen:
        if n_reshapes:
            _drop_dead_nodes(g)
        return n_reshapes
    for name, value in frozen:
        g.initializer.append(numpy_helper.from_array(value, name))
    names = {n for n, _ in frozen}
    for node in g.node:  # the producers' frozen outputs are now initializers: detach them
        for k, o in enumerate(node.output):
            if o in names:
                node.output[k] = f"{o}/xc_unused"
    _drop_dead_nodes(g)
    return len(frozen) + n_reshapes


def _constant_reshape_shapes(g, known: set, at_one: dict, at_two: dict) -> int:
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
    return n


def _drop_dead_nodes(g) -> None:
    needed = {o.name for o in g.output} | _subgraph_reads(g)
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
    _replace_nodes(g, list(reversed(keep)))


def canonicalize(model: onnx.ModelProto, passes=None) -> dict:
    """Run the passes in order; returns {pass name: count}."""
    report = {}
    for p in passes or PASSES:
        report[p.__name__] = p(model)
    return report
