"""Models over protobuf's 2 GiB message limit (vit_h_14, regnet_y_128gf: ~2.5 GB of float32 weights).

Such a ModelProto cannot be serialized to bytes. onnxruntime and the ONNX checker get a weightless *skeleton*
instead: the graph with every large initializer replaced by an external-data reference (``split``), written to
a temporary folder beside a sparse placeholder file of the right size (no weight byte is written: the
placeholder has no blocks on disk). onnxruntime receives the weights themselves as numpy arrays through
``SessionOptions.add_initializer``, which it uses in place; ``add_external_initializers`` would copy them
(measured with onnxruntime 1.32, docs/benchmarks.md "Huge models"), and so would MLAS's pre-packing of
MatMul / Conv weights, which compile-time sessions turn off. The checker and shape inference never read
tensor values they need not: they run on the skeleton's path. The caller's model is never modified.

The explainer file itself is written once (``save_external``): the header with external references, then
each tensor's bytes streamed into ``<name>.data``."""
from __future__ import annotations

import contextlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

# below protobuf's 2 GiB hard limit, with room for the graph itself (nodes, value_info, metadata)
SERIALIZE_LIMIT = 1_800_000_000
# tensors of at least this many bytes leave the skeleton (small ones, such as shape constants that shape
# inference reads, stay inline)
SKELETON_MIN_BYTES = 1 << 16
# the final file: the threshold onnx.save(size_threshold=1024) used before
FILE_MIN_BYTES = 1024
PLACEHOLDER = "weights.placeholder"
# models whose weights pass this are checked and shape-inferred on their skeleton even below the limit: each
# whole-model serialisation in and out of onnx's C++ costs ~1 s for ResNet-50's 100 MB (docs/benchmarks.md)
SKELETON_CHECK_BYTES = 16 << 20


def tensor_bytes(t: onnx.TensorProto) -> int:
    """The bytes a tensor's values take, from its dims and type (reading ``raw_data`` would copy it); 0 when its
    data is external already."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return 0
    n = 1
    for d in t.dims:
        n *= d
    try:
        size = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:  # noqa: BLE001 - an unknown or undefined type: count it as 8 bytes an element
        size = 8
    return n * size


def payload_bytes(model: onnx.ModelProto) -> int:
    """Cheap size estimate (ByteSize() walks the whole proto): the weights dominate."""
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def too_large(model: onnx.ModelProto) -> bool:
    return payload_bytes(model) >= SERIALIZE_LIMIT


def heavy(model: onnx.ModelProto) -> bool:
    """Weights worth keeping out of onnx's checker and shape inference (``skeleton=True``)."""
    return payload_bytes(model) >= SKELETON_CHECK_BYTES


_VALUE_FIELDS = {"raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data",
                 "external_data", "data_location"}


def _outlined(t: onnx.TensorProto, min_bytes: int) -> bool:
    return t.data_type != onnx.TensorProto.STRING and tensor_bytes(t) >= min_bytes


def split(model: onnx.ModelProto, location: str = PLACEHOLDER, min_bytes: int | None = None):
    """(skeleton, tensors, end): a new ModelProto with every field of ``model`` copied piecewise except the
    initializers of at least ``min_bytes`` (default ``SKELETON_MIN_BYTES``), which become external-data references
    into ``location`` at 64-byte aligned offsets; ``tensors`` = [(the caller's TensorProto, offset)] of those
    (nothing copied); ``end`` = the size of that data file."""
    min_bytes = SKELETON_MIN_BYTES if min_bytes is None else min_bytes
    skel = onnx.ModelProto()
    for f, v in model.ListFields():
        if f.name != "graph":
            _copy_field(skel, f, v)
    tensors, end = [], 0
    for f, v in model.graph.ListFields():
        if f.name != "initializer":
            _copy_field(skel.graph, f, v)
            continue
        for t in v:
            if not _outlined(t, min_bytes):
                skel.graph.initializer.append(t)
                continue
            ref = skel.graph.initializer.add()
            for tf, tv in t.ListFields():  # name, dims, type, doc_string, metadata_props: all but the values
                if tf.name not in _VALUE_FIELDS:
                    _copy_field(ref, tf, tv)
            ref.data_location = onnx.TensorProto.EXTERNAL
            n = tensor_bytes(t)
            for key, value in (("location", location), ("offset", str(end)), ("length", str(n))):
                e = ref.external_data.add()
                e.key, e.value = key, value
            tensors.append((t, end))
            end += -(-n // 64) * 64
    return skel, tensors, end


def _copy_field(dst, f, v) -> None:
    if f.is_repeated:
        getattr(dst, f.name).extend(v)
    elif f.message_type is not None:
        getattr(dst, f.name).CopyFrom(v)
    else:
        setattr(dst, f.name, v)


@contextmanager
def skeleton_on_disk(model: onnx.ModelProto):
    """A temporary folder holding ``model``'s skeleton (``model.onnx``) and a sparse placeholder of the weights'
    size: yields (path, tensors) with ``split``'s tensors. No weight is written; removed on exit."""
    skel, tensors, end = split(model)
    with tempfile.TemporaryDirectory(prefix="xcompile-") as d:
        with open(os.path.join(d, PLACEHOLDER), "wb") as f:
            f.truncate(end)  # a hole: onnxruntime and the checker want the file to exist; its bytes are never read
        p = os.path.join(d, "model.onnx")
        with open(p, "wb") as f:
            f.write(skel.SerializeToString())
        del skel
        yield p, tensors


def inference_session(model, so=None, providers=("CPUExecutionProvider",), in_place: bool = False):
    """``onnxruntime.InferenceSession`` for a path or an in-memory model of any size. A path is read by
    onnxruntime itself (external data from beside the file). A model over the limit: its skeleton, plus its large
    weights as numpy arrays (kept alive with the session), given

    - ``in_place=True`` (compile-time sessions: probe, constant folding, measured maps) with ``add_initializer``:
      onnxruntime computes on the arrays themselves, no copy. Its graph optimizers would read the skeleton's
      placeholders instead (zeros: wrong results, e.g. a Conv + BatchNormalization fusion), so these sessions run
      unoptimized, and without MLAS's pre-packed copies of MatMul / Conv weights;
    - else (the explainer's own sessions) with ``add_external_initializers``: onnxruntime 1.32 copies them into the
      graph before optimizing, so every optimization level computes what the file loaded from disk computes."""
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(os.fspath(model), so, providers=list(providers))
    if not too_large(model):
        return ort.InferenceSession(model.SerializeToString(), so, providers=list(providers))
    so = so or ort.SessionOptions()
    if in_place:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.add_session_config_entry("session.disable_prepacking", "1")
    with skeleton_on_disk(model) as (p, tensors):
        arrays = [np.ascontiguousarray(numpy_helper.to_array(t)) for t, _ in tensors]
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        if in_place:
            for (t, _), v in zip(tensors, values):
                so.add_initializer(t.name, v)
        else:
            so.add_external_initializers([t.name for t, _ in tensors], values)
        sess = ort.InferenceSession(p, so, providers=list(providers))
    sess._xcompile_weights = (arrays, values, so)
    return sess


# contrib ops onnxruntime registers in the default domain, where onnx's checker knows no such op
ORT_DEFAULT_DOMAIN_OPS = frozenset({"SimplifiedLayerNormalization"})


@contextlib.contextmanager
def ort_default_domain(model: onnx.ModelProto):
    """Within: onnxruntime's default-domain contrib ops (ORT_DEFAULT_DOMAIN_OPS, written by its transformer optimizer)
    are com.microsoft ops, a domain onnx's checker and shape inference pass over; restored after (also in
    ``restore_default_domain(result)`` for a model inference returned)."""
    nodes = [n for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type in ORT_DEFAULT_DOMAIN_OPS]
    added = None
    if nodes and not any(o.domain == "com.microsoft" for o in model.opset_import):
        added = model.opset_import.add()
        added.domain, added.version = "com.microsoft", 1
    for n in nodes:
        n.domain = "com.microsoft"
    try:
        yield bool(nodes)
    finally:
        for n in nodes:
            n.domain = ""
        if added is not None:
            model.opset_import.remove(added)
            # (the removed entry is a copy's reference only; nothing else holds it)


def restore_default_domain(model: onnx.ModelProto, opset_added: bool) -> onnx.ModelProto:
    for n in model.graph.node:
        if n.domain == "com.microsoft" and n.op_type in ORT_DEFAULT_DOMAIN_OPS:
            n.domain = ""
    if opset_added and not any(n.domain == "com.microsoft" for n in model.graph.node):
        keep = [o for o in model.opset_import if o.domain != "com.microsoft"]
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return model


def check_model(model: onnx.ModelProto, full_check: bool = False, skeleton: bool = False) -> None:
    """``onnx.checker.check_model`` for a model of any size (raises onnx.checker.ValidationError); ``skeleton``: on
    the skeleton whatever the size (no copy of the weights)."""
    with ort_default_domain(model):
        _check_model(model, full_check, skeleton)


def _check_model(model: onnx.ModelProto, full_check: bool, skeleton: bool = False) -> None:
    if not too_large(model) and not skeleton:
        onnx.checker.check_model(model, full_check=full_check)
        return
    with skeleton_on_disk(model) as (p, _):
        onnx.checker.check_model(p, full_check=full_check)


def infer_shapes(model: onnx.ModelProto, skeleton: bool = False, **kw) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` for a model of any size: a large one (any, with ``skeleton``) is
    inferred on its skeleton and gets the inferred value_info (its weights stay the caller's)."""
    had = any(o.domain == "com.microsoft" for o in model.opset_import)
    with ort_default_domain(model) as swapped:
        out = _infer_shapes(model, skeleton, **kw)
    return restore_default_domain(out, not had) if swapped else out


def _infer_shapes(model: onnx.ModelProto, skeleton: bool = False, **kw) -> onnx.ModelProto:
    if not too_large(model) and not skeleton:
        return onnx.shape_inference.infer_shapes(model, **kw)
    with skeleton_on_disk(model) as (p, _):
        onnx.shape_inference.infer_shapes_path(p, p + ".inferred", **kw)
        inferred = onnx.load(p + ".inferred", load_external_data=False)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return model


def save_external(model: onnx.ModelProto, path: str | os.PathLike, location: str | None = None) -> None:
    """Write ``path`` + one external data file ``location`` (default ``<name>.data``) holding every tensor of at
    least 1 kB, each written once; ``model`` is left as it is."""
    path = Path(path)
    location = location or path.name + ".data"
    skel, tensors, end = split(model, location, FILE_MIN_BYTES)
    with open(path.parent / location, "wb") as f:
        for t, offset in tensors:
            f.seek(offset)
            f.write(t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes())
        f.truncate(end)
    with open(path, "wb") as f:
        f.write(skel.SerializeToString(deterministic=True))
