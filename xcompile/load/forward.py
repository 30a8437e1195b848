"""Read a model into the forward graph every method walks, in one straight line:
read -> check -> find the data input and score output -> canonicalize -> probe shapes -> freeze shape
arithmetic -> ForwardGraph. Also the options that shape how a model is read (`COMMON`)."""
from __future__ import annotations

import numpy as np
import onnx

from ..canonicalize.controlflow import check_if_shapes, inline_control_flow
from ..canonicalize.inputs import drop_unread_inputs
from ..canonicalize.outputs import linear_model_view, single_logit_view
from ..canonicalize.passes import (
    canonicalize,
    find_explained_scores,
    freeze_shape_arithmetic,
    remove_unused_initializers,
)
from ..canonicalize.shared_embedding import share_embedding_uses
from ..errors import XCompileError
from ..graph import ForwardGraph, TokenInput
from ..options import MEMORY_ENV, Param, as_bool, as_int, memory_cap_bytes, non_negative_int
from ..protobuf_limit import payload_bytes
from ..write.precision import parse_precision
from .contrib import refuse_unknown, unfused_view
from .loader import (
    default_opset,
    embedding_gather,
    embedding_output,
    find_data_input,
    find_score_output,
    graph_inputs,
    id_readers,
    input_dims,
    make_batch_symbolic,
    prepare,
    read_model,
)
from .probe import feed_plan, numpy_dtype, probe, special_ids
from .quantized import dequantized_table, float_view

KEEP_PROBE_BYTES = 256 << 20  # weights up to this size: the probe's session is kept for the self-check

# options every method accepts (they shape how the model is read, not how it is explained)
COMMON = {
    "input": Param(None, "name of the data input"),
    "output": Param(None, "name of the score output"),
    "keep_softmax": Param(False, "explain the softmax output instead of the logits (true/false)", as_bool),
    "keep_outputs": Param(False, "keep every original output, in place, and add relevance after them (true/false)", as_bool),
    "precision": Param(None, "float32 (default) or float16: a float16 explainer of a float32 model (for GPUs; "
                       "relevance stays float32)", parse_precision),
    "input_shape": Param(None, "sample shape without the batch, e.g. 3x224x224 (positive sizes, one row within the "
                         "memory cap)", lambda v: sample_shape(v)),
    "baseline_token": Param(None, "token id of the baseline / occluding token for token-id inputs (typically the pad id)",
                            non_negative_int),
    # the self-check before writing (xcompile/verify, docs/selfcheck.md)
    "verify": Param(True, "check the explainer on probe inputs before writing it (true/false)", as_bool),
    "probe": Param(None, "a .npy file of rows of the explained input for the self-check (default: drawn)"),
}


def sample_shape(v) -> tuple:
    """``3x224x224`` (or a list) -> (3, 224, 224); each size positive and one float64 row within the memory cap
    (the probe allocates it): 1x100000x100000 is refused here, not by a 74.5 GiB allocation."""
    dims = tuple(as_int(d) for d in (v.split("x") if isinstance(v, str) else [v] if isinstance(v, int) else v))
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"{v!r}: sizes must be positive integers")
    n = 1
    for d in dims:
        n *= d
    if n * 8 * 4 > memory_cap_bytes():  # the probe's rows (batch 1 and 2) and their float64 copy
        raise ValueError(f"{v!r}: {n} values per row is over the memory cap (${MEMORY_ENV})")
    return dims


def split_params(params: dict) -> tuple[dict, dict]:
    common = {k: p.default for k, p in COMMON.items()}
    rest = {}
    for k, v in params.items():
        if k in COMMON:
            try:
                common[k] = COMMON[k].parse(v)
            except (TypeError, ValueError):
                raise XCompileError(f"option {k}={v!r}: {COMMON[k].help}") from None
        else:
            rest[k] = v
    return common, rest


def load_forward(model, common: dict, where: str = "model") -> ForwardGraph:
    """Read, validate, canonicalize and measure the forward graph."""
    m = prepare(read_model(model), where, copy=isinstance(model, onnx.ModelProto))  # the caller's proto stays as it is
    score = find_score_output(m, common["output"], where)
    decisions: list = []
    drop_unread_inputs(m, decisions)  # converter leftovers (Keras' export): they would need dummy feeds
    if common["input_shape"]:  # declared before canonicalizing: passes that need static sizes (recurrent unrolling) see it
        _declare_inputs(m, input_samples(m, find_data_input(m, common["input"], where), tuple(common["input_shape"]), where))
    canonicalize(m, decisions=decisions)
    explained = find_explained_scores(m, score, common["keep_softmax"])
    if not common["keep_softmax"]:  # an ai.onnx.ml linear model: its raw scores, through an ai.onnx Gemm view
        explained = linear_model_view(m, explained) or explained
    data = find_data_input(m, common["input"], where)
    dtype = numpy_dtype(data, where)
    refuse_unknown(m, data.name, where)  # contrib ops without an expansion (load/contrib.py): one line
    emb = None
    if np.dtype(dtype).kind in "iu":
        emb = embedding_gather(m, data.name)
        if emb is None:
            raise XCompileError(f"{where}: input {data.name!r} is {np.dtype(dtype).name} but no Gather reads it from an "
                                f"embedding table [vocab, D] ({id_readers(m, data.name)}): an integer input is explained "
                                "only as token ids; choose another with --set input=NAME")
    elif np.dtype(dtype).kind != "f":
        raise XCompileError(f"{where}: input {data.name!r} is {np.dtype(dtype).name}: the explained input must be float "
                            "or integer token ids; choose another with --set input=NAME")
    if common.get("baseline_token") is not None:
        if emb is None:
            raise XCompileError(f"{where}: option baseline_token applies to token-id inputs; {data.name!r} is a float input")
        if common["baseline_token"] >= emb[2]:
            raise XCompileError(f"{where}: option baseline_token={common['baseline_token']}: not an id of the embedding "
                                f"table {emb[1]!r} (ids 0..{emb[2] - 1})")
    dims = input_dims(data)
    sample = common["input_shape"] or tuple(dims[1:])
    if not dims or any(not isinstance(d, int) or d <= 0 for d in sample):
        hint = "L (the sequence length)" if emb is not None else "CxHxW"
        raise XCompileError(f"{where}: input {data.name!r} has shape {dims}; give the sample shape with --set input_shape={hint}")
    samples = input_samples(m, data, tuple(sample), where)
    _declare_inputs(m, samples)
    names = list(samples)
    make_batch_symbolic(m, names, score)
    gather_fed = {n for n in names if embedding_gather(m, n) is not None}
    plan = feed_plan({n: (samples[n], numpy_dtype(vi, where)) for n, vi in ((v.name, v) for v in graph_inputs(m))},
                     data.name, emb[2] if emb else None, gather_fed,
                     special_ids(m, data.name, emb[2]) if emb else ())
    kept: dict = {}
    # the probe's session serves the self-check's forward rows (float inputs) where holding it costs little: it keeps
    # a copy of the weights and onnxruntime's arena of the probe's run until the compile ends
    keep = common.get("verify") is True and emb is None and payload_bytes(m) < KEEP_PROBE_BYTES
    shapes, dtypes, at_one, fixed, at_two = probe(m, plan, where=where, keep=kept if keep else None)
    if freeze_shape_arithmetic(m, names, at_one, at_two, decisions):
        remove_unused_initializers(m)
    for _ in range(4):  # If / Loop / Scan inlined once trip counts and conditions are known (nested ones: again)
        known = {**shapes, **{n: (None,) + tuple(samples[n]) for n in names}}
        n_inlined, pairs = inline_control_flow(m, at_one, at_two, known, decisions)
        if not n_inlined:
            break
        canonicalize(m, decisions=decisions)
        shapes, dtypes, at_one, fixed, at_two = probe(m, plan, where=where)
        check_if_shapes(pairs, shapes, where)
        if freeze_shape_arithmetic(m, names, at_one, at_two, decisions):
            remove_unused_initializers(m)
    for n in names:
        shapes[n] = (None,) + tuple(samples[n])
    _declare_measured_shapes(m, shapes)
    token = None
    if emb is not None:
        gather = next(n for n in m.graph.node if n.output and n.output[0] == emb[0].output[0])
        if len(samples[data.name]) == 1 and gather.op_type == "Gather":  # encoder-decoder: the decoder's look-up of
            # the same ids read from E (a fused or dequantized look-up is never an encoder-decoder's shared table)
            share_embedding_uses(m, data.name, gather, samples[data.name][0], shapes, dtypes, where,
                                 plan[data.name][4])
            gather = next(n for n in m.graph.node if n.output and n.output[0] == emb[0].output[0])
            emb = (gather, *emb[1:])
        token = TokenInput(data.name, embedding_output(gather), emb[1], emb[2], common.get("baseline_token"))
    view = single_logit_view(m, explained, shapes.get(explained, ()))
    if view is not None:  # one logit per row: explained through [-z, z] (canonicalize/outputs.py)
        for t, shape in ((view, (None, 2)), (f"{view}/logit", (None, 1)), (f"{view}/negated", (None, 1))):
            shapes[t], dtypes[t] = shape, dtypes.get(explained)
        explained = view
    g = ForwardGraph(m, token.embedding if token else data.name, score, explained, shapes, dtypes, fixed,
                     default_opset(m), token=token)
    g.single_logit = view is not None
    g.canonicalization = decisions
    g.feed_plan = plan  # how every input is fed (load/probe.py): the self-check's probe rows
    if token is None and "session" in kept and view is None:  # float input: the probe's session computes the
        # self-check's forward rows (not after a single-logit view: its [-z, z] tensor is not in the probed graph)
        g.derived["verify_session"] = kept["session"]
    float_view(g, where)  # quantized ops: the backward walks their dequantized view (load/quantized.py)
    unfused_view(g, where)  # onnxruntime's fused contrib ops: the backward walks their expansion (load/contrib.py)
    if token is not None and (g.const(token.table) is None or g.const(token.table).dtype.kind != "f"):
        token.table = dequantized_table(g, emb[0], token.table)  # a quantized word embedding: its float values
    if len(g.shape(explained)) != 2:
        raise XCompileError(f"{where}: the explained output {explained!r} has shape {list(g.shape(explained))}; expected [N, classes], "
                            "or [N] / [N, 1] for one logit; choose the score output with --set output=NAME")
    return g


def _declare_inputs(m: onnx.ModelProto, samples: dict) -> None:
    """Every input declared [N, *sample]: the compiled shapes."""
    for vi in graph_inputs(m):
        del vi.type.tensor_type.shape.dim[:]
        vi.type.tensor_type.shape.dim.add().dim_param = "N"
        for d in samples[vi.name]:
            vi.type.tensor_type.shape.dim.add().dim_value = d


def input_samples(m: onnx.ModelProto, data: onnx.ValueInfoProto, sample: tuple, where: str) -> dict:
    """{input: sample shape} for every graph input. A dimension of another input that is not a fixed number takes
    the explained input's size where both name the same symbol (e.g. "sequence"), else where the ranks agree
    (an attention mask [N, L] beside ids [N, L]); the batch dimension is always the first."""
    data_dims = input_dims(data)
    out = {}
    for vi in graph_inputs(m):
        if vi.name == data.name:
            out[vi.name] = tuple(sample)
            continue
        dims = input_dims(vi)
        if not dims:
            raise XCompileError(f"{where}: input {vi.name!r} is a scalar (or has no declared shape); every input needs a batch dimension")
        s = []
        for k, d in enumerate(dims[1:], start=1):
            if isinstance(d, int) and d > 0:
                s.append(d)
            elif isinstance(d, str) and d in data_dims[1:]:
                s.append(sample[data_dims.index(d, 1) - 1])
            elif len(dims) == len(sample) + 1:
                s.append(sample[k - 1])
            else:
                raise XCompileError(f"{where}: input {vi.name!r} has shape {dims}: dimension {k} is neither fixed nor "
                                    f"shared with the explained input {data.name!r}; export it with a fixed size")
        out[vi.name] = tuple(s)
    return out


def _declare_measured_shapes(m: onnx.ModelProto, shapes: dict) -> None:
    """The probe's measured shapes replace what the file declares: a stale or wrong declaration (exporters do
    write them) must not make the emitted graph fail shape inference. Intermediate value_info is re-inferred."""
    del m.graph.value_info[:]
    for vi in m.graph.output:
        shape = shapes.get(vi.name)
        if shape is None or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for k, d in enumerate(shape):
            if k == 0 or not isinstance(d, int):
                dims.add().dim_param = "N" if k == 0 else f"d{k}"
            else:
                dims.add().dim_value = d


def reserved_names(model: onnx.ModelProto) -> set:
    g = model.graph
    return {t.name for t in g.initializer} | {i.name for i in g.input} | {o for n in g.node for o in n.output} | {n.name for n in g.node}


def jsonable(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, list, tuple))
