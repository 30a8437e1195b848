"""Assemble the explainer: forward graph + emitted nodes + `target`/`relevance` I/O; check it with the
full ONNX checker and serialize deterministically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper, shape_inference

from ..errors import XCompileError
from ..files import atomic_write, check_output
from ..graph import RELEVANCE, TARGET

EXPLAINED_CLASS = "explained_class"
CONSERVATION = "conservation"
from ..protobuf_limit import check_model, heavy, infer_shapes, save_external, too_large
from .lower import lower_for_cuda
from .precision import to_float16


def _with_batch(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    t = out.type.tensor_type
    if t.HasField("shape") and t.shape.dim:
        t.shape.dim[0].Clear()
        t.shape.dim[0].dim_param = "N"
    return out


def assemble(g, b, built, meta, keep_outputs: bool = False, where: str = "model") -> onnx.ModelProto:
    src = g.model.graph
    taken = {o for n in src.node for o in n.output} | {i.name for i in src.input}
    for name in (TARGET, RELEVANCE, EXPLAINED_CLASS, CONSERVATION):  # xcompile's own outputs: never shadowed
        if name in taken:
            raise XCompileError(f"{where}: the model already has a tensor named {name!r}; rename it before compiling")
    data_vi = next(i for i in src.input if i.name == g.graph_input)
    score_vi = next(o for o in src.output if o.name == g.score_output)
    rel_shape = [d.dim_param or d.dim_value for d in data_vi.type.tensor_type.shape.dim]
    rel_shape[0] = "N"
    tail = [helper.make_node("Identity", [built.relevance], [RELEVANCE], name="xc/relevance")]
    if data_vi.type.tensor_type.elem_type != TensorProto.FLOAT and g.token is None:
        tail = [helper.make_node("Cast", [built.relevance], [RELEVANCE], name="xc/relevance", to=TensorProto.FLOAT)]
    outputs = [_with_batch(o) for o in src.output] if keep_outputs else [_with_batch(score_vi)]
    outputs.append(helper.make_tensor_value_info(RELEVANCE, TensorProto.FLOAT, rel_shape))
    extra = [(t, vi) for t, vi in built.extra_outputs if not (vi.name == CONSERVATION and vi.name in taken)]
    cls = getattr(b, "explained_class", None)
    if cls is not None and EXPLAINED_CLASS not in taken and EXPLAINED_CLASS not in {vi.name for _, vi in extra}:
        # the class each row's relevance explains (the target, or the argmax of the explained scores): what
        # Explanation.predicted reports, so that it never disagrees with the explanation (e.g. on softmax ties)
        # after a token model's embedding_relevance (the relevance outputs first)
        at = 1 if extra and extra[0][1].name == "embedding_relevance" else 0
        extra.insert(at, (cls, helper.make_tensor_value_info(EXPLAINED_CLASS, TensorProto.INT64, ["N"])))
    outputs += [vi for _, vi in extra]
    extra_nodes = [helper.make_node("Identity", [t], [vi.name], name=f"xc/out/{vi.name}") for t, vi in extra]
    inits = {t.name for t in src.initializer}
    inputs = [_with_batch(i) for i in src.input if i.name not in inits]  # every input kept, batch symbolic
    inputs.append(helper.make_tensor_value_info(TARGET, TensorProto.INT64, ["N"]))
    emitted = b.nodes + tail + extra_nodes
    view_nodes, view_consts = dequantized_view_part(g, emitted)
    initializers = list(src.initializer) + view_consts + b.initializers
    nodes, _ = lower_for_cuda(list(src.node) + view_nodes + emitted, initializers)
    # the forward's own opset imports (onnxruntime's com.microsoft quantized ops, the ai.onnx.ml ops of scikit-learn
    # pipelines) stay imported; the emitted part uses ai.onnx only
    used = {n.domain for n in src.node}
    opsets = [o for o in g.model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    if too_large(g.model):
        # over 2 GiB: the forward's proto becomes the explainer (g is the compiler's own, read by load_forward):
        # a new graph would copy every weight
        model = _reuse(g.model, nodes, inputs, outputs, initializers[len(src.initializer):], opsets,
                       meta.xcompile_version)
        return _finish(model, meta, where, b.guarded)
    graph = helper.make_graph(nodes, src.name or "xcompile", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=g.model.ir_version,
                              producer_name="xcompile", producer_version=meta.xcompile_version)
    return _finish(model, meta, where, b.guarded)


def _reuse(model: onnx.ModelProto, nodes, inputs, outputs, new_initializers, opsets, version: str) -> onnx.ModelProto:
    """``model`` turned into what ``helper.make_model(helper.make_graph(...))`` would build, in place: its
    initializers stay where they are and ``new_initializers`` are appended (same order as the copying path)."""
    nodes, inputs, outputs, opsets = ([_detached(x) for x in xs] for xs in (nodes, inputs, outputs, opsets))
    new_initializers = [_detached(t) for t in new_initializers]
    graph = model.graph
    name = graph.name or "xcompile"
    for f, _ in graph.ListFields():
        if f.name != "initializer":
            graph.ClearField(f.name)
    graph.name = name
    graph.node.extend(nodes)
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    graph.initializer.extend(new_initializers)
    ir_version = model.ir_version
    for f, _ in model.ListFields():
        if f.name != "graph":
            model.ClearField(f.name)
    model.ir_version = ir_version
    model.opset_import.extend(opsets)
    model.producer_name, model.producer_version = "xcompile", version
    return model


def _detached(msg):
    """A copy of a (small) message, independent of the repeated field it may sit in."""
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _finish(model: onnx.ModelProto, meta, where: str, guarded=()) -> onnx.ModelProto:
    """`meta`: the metadata.ExplainerMeta record, written into the file; `guarded`: Builder.guarded."""
    if meta.params.get("precision") == "float16":
        model = to_float16(model, where, guarded)
    meta.write(model)
    return check(model, where)


def dequantized_view_part(g, emitted: list) -> tuple[list, list]:
    """The nodes and constants of a quantized model's dequantized view (load/quantized.py) that the emitted
    backward reads (DequantizeLinear of a forward tensor, a float op recomputed for its straight-through mask,
    dequantized weights), in dependency order; placed between the forward and the backward. The emitted nodes that
    read an aliased forward tensor (QDQ models' explained scores) are made to read its recomputed copy, in place."""
    virtual, consts = g.virtual, g.virtual_consts
    if not virtual and not consts:
        return [], []
    alias = g.virtual_alias
    for n in emitted if alias else ():
        n.input[:] = [alias.get(i, i) for i in n.input]
    nodes, seen, used_consts = [], set(), {}

    def need(name):
        node = virtual.get(name)
        if name in consts and node is None:  # (a large dequantized weight is made by a DequantizeLinear node)
            used_consts.setdefault(name, consts[name])
        if node is None or id(node) in seen:
            return
        seen.add(id(node))
        for i in node.input:
            need(i)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)  # the view's float op keeps the quantized node's name there (LRP rule selectors)
        copy.name = f"xc/dequantized/{node.name or node.output[0]}/recomputed"
        nodes.append(copy)

    for n in emitted:
        for i in n.input:
            need(i)
    return nodes, [used_consts[k] for k in sorted(used_consts)]


def conservation(g, b, relevance: str, cls: str):
    """The `conservation` output of the relevance family (placed after explained_class): float32 [N], the sum of the
    relevance over all non-batch axes / the explained score (the seed), NaN where |score| < 1e-12; 1 is perfect
    conservation. Returns (tensor, ValueInfoProto) for Built.extra_outputs."""
    vi = helper.make_tensor_value_info(CONSERVATION, TensorProto.FLOAT, ["N"])
    with b.scope("conservation"):
        scores = b.cast(g.explained, TensorProto.FLOAT, "scores")
        score = b.squeeze(b.op("GatherElements", [scores, b.unsqueeze(cls, [1])], "score", axis=1), [1])
        flat = b.op("Flatten", [b.cast(relevance, TensorProto.FLOAT, "r")], "r_flat", axis=1)
        total = b.reduce("ReduceSum", flat, [1], keepdims=0, hint="total")
        tiny = b.op("Less", [b.op("Abs", [score], "abs_score"), b.f32(1e-12)], "tiny")
        zero = b.f32(0.0)  # 0 / 0 = NaN where the score is tiny, computed at run time: no NaN initializer
        num = b.where(tiny, zero, total, "total_or_0")
        return b.div(num, b.mark_divisor(b.where(tiny, zero, score, "score_or_0"), tiny), "conservation"), vi


def check(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Strict shape/type inference (what ``full_check`` adds) once, then the structural checker: the same
    guarantees as ``check_model(full_check=True)`` without running inference twice. Returns the model with
    its inferred value_info (a convenience for viewers such as Netron)."""
    try:
        if too_large(model):  # on the weightless skeleton (protobuf_limit.py): no copy of the weights
            check_model(model, full_check=True)
        else:  # (onnxruntime's default-domain contrib ops checked as contrib ops); over 16 MB on the skeleton, its
            # value_info copied back: four serialisations of the weights (infer_shapes in and out, check_model) were
            # most of ResNet-50's compile time (docs/benchmarks.md)
            skeleton = heavy(model)
            model = infer_shapes(model, check_type=True, strict_mode=True, skeleton=skeleton)
            check_model(model, skeleton=skeleton)
    except (onnx.checker.ValidationError, shape_inference.InferenceError) as e:
        raise RuntimeError(f"{where}: internal error, emitted model fails the ONNX checker: {str(e).splitlines()[0]}") from e
    return model


def save(model: onnx.ModelProto, path, inputs=()) -> None:
    """Write atomically (``files.atomic_write``): a failed or killed write never leaves a partial file, concurrent
    writes to one path each leave a complete model, and a path that is one of ``inputs`` is refused."""
    path = check_output(path, inputs)
    if too_large(model):
        # weights beside it in <name>.data: both are staged in a unique folder next to the target, then each is
        # renamed into place (the .data first, so the .onnx never points at missing weights)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.xc-{os.getpid()}-") as d:
            save_external(model, Path(d) / path.name, location=path.name + ".data")
            atomic_write(path.with_name(path.name + ".data"), lambda t: os.replace(Path(d) / (path.name + ".data"), t))
            atomic_write(path, lambda t: os.replace(Path(d) / path.name, t))
    else:
        atomic_write(path, lambda t: t.write_bytes(model.SerializeToString(deterministic=True)))
