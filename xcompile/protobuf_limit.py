"""Models over protobuf's 2 GiB message limit (vit_h_14, regnet_y_128gf: ~2.5 GB of float32 weights).

Such a ModelProto cannot be serialized to bytes; onnxruntime and the ONNX checker then need it on disk with
its tensors in an external data file. ``onnx.save(..., save_as_external_data=True)`` empties the tensors of
the proto it is given, so every helper here restores them: the caller's model stays usable."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import onnx
from onnx.external_data_helper import load_external_data_for_model

# below protobuf's 2 GiB hard limit, with room for the graph itself (nodes, value_info, metadata)
SERIALIZE_LIMIT = 1_800_000_000


def payload_bytes(model: onnx.ModelProto) -> int:
    """Cheap size estimate (ByteSize() walks the whole proto): the weights dominate."""
    n = 0
    for t in model.graph.initializer:
        n += len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data) + len(t.double_data))
    return n


def too_large(model: onnx.ModelProto) -> bool:
    return payload_bytes(model) >= SERIALIZE_LIMIT


def save_external(model: onnx.ModelProto, path: str | os.PathLike, location: str | None = None) -> None:
    """Write ``path`` + one external data file ``location`` (default ``<name>.data``) and leave ``model`` intact."""
    path = Path(path)
    location = location or path.name + ".data"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=1024)
    load_external_data_for_model(model, str(path.parent))  # onnx.save emptied the tensors: read them back


@contextmanager
def on_disk(model: onnx.ModelProto):
    """A temporary ``model.onnx`` (+ external data) holding ``model``; removed on exit."""
    with tempfile.TemporaryDirectory(prefix="xcompile-") as d:
        p = os.path.join(d, "model.onnx")
        save_external(model, p)
        yield p


def inference_session(model, so=None, providers=("CPUExecutionProvider",)):
    """``onnxruntime.InferenceSession`` for a path or an in-memory model of any size."""
    import onnxruntime as ort

    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(os.fspath(model), so, providers=list(providers))
    if not too_large(model):
        return ort.InferenceSession(model.SerializeToString(), so, providers=list(providers))
    with on_disk(model) as p:  # the session has read the weights when it returns: the files may go
        return ort.InferenceSession(p, so, providers=list(providers))


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model`` for a model of any size (raises onnx.checker.ValidationError)."""
    if not too_large(model):
        onnx.checker.check_model(model)
        return
    with on_disk(model) as p:
        onnx.checker.check_model(p)


def infer_shapes(model: onnx.ModelProto, **kw) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` for a model of any size: a large one is inferred on disk and gets the
    inferred value_info (its weights stay the caller's)."""
    if not too_large(model):
        return onnx.shape_inference.infer_shapes(model, **kw)
    with on_disk(model) as p:
        onnx.shape_inference.infer_shapes_path(p, p + ".inferred", **kw)
        inferred = onnx.load(p + ".inferred", load_external_data=False)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return model
