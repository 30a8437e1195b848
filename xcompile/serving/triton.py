"""Triton Inference Server model repository export.

``export_triton(explainer, repo)`` writes::

    repo/NAME/config.pbtxt        # onnxruntime backend, every input/output, dynamic batching, instance group
    repo/NAME/1/model.onnx        # the explainer, unchanged

Names, dtypes and dims are read from the ONNX file itself (never assumed), so an explainer compiled with
``keep_outputs=true`` keeps the original model's output names and positions in the config too.

Batching: xcompile explainers have a symbolic batch dimension on every input and output, so the config
sets ``max_batch_size`` and lists dims WITHOUT the batch dimension. A tensor that is only ``[N]`` (the
``target`` input) is declared ``dims: [1]`` with ``reshape: { shape: [] }``, Triton's documented way for a
rank-1 batched tensor: clients send ``target`` as ``[N, 1]`` (or ``[N]`` to servers that accept it).
A model whose first dimension is fixed is exported with ``max_batch_size: 0`` and full dims.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx

from ..errors import XCompileError
from ..files import atomic_write, check_output, safe_name, write_text

MAX_BATCH = 2**31 - 1
MAX_INSTANCES = 1024
from ..graph import RELEVANCE, TARGET

# ONNX TensorProto element type -> Triton DataType enum name (model_config.proto)
TRITON_DTYPES = {
    onnx.TensorProto.BOOL: "TYPE_BOOL",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16",
    onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.STRING: "TYPE_STRING",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
}


def _dims(vi: onnx.ValueInfoProto) -> list:
    """[int | None] per dimension (None = symbolic / unknown)."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def tensor_specs(model: onnx.ModelProto, where: str = "explainer"):
    """([(name, onnx elem type, dims)] for inputs, the same for outputs); initializers are not inputs."""
    inits = {t.name for t in model.graph.initializer}

    def spec(vi):
        if not vi.type.HasField("tensor_type"):
            raise XCompileError(f"{where}: {vi.name!r} is not a tensor; Triton's onnxruntime backend serves tensors only")
        et = vi.type.tensor_type.elem_type
        if et not in TRITON_DTYPES:
            raise XCompileError(f"{where}: {vi.name!r} has ONNX element type {onnx.TensorProto.DataType.Name(et)}, which Triton cannot serve")
        return vi.name, et, _dims(vi)

    ins = [spec(i) for i in model.graph.input if i.name not in inits]
    outs = [spec(o) for o in model.graph.output]
    return ins, outs


def _batchable(specs) -> bool:
    return all(len(d) >= 1 and d[0] is None for _, _, d in specs)


def _tensor_block(name, elem, dims, batched: bool, indent="  ") -> str:
    dims = dims[1:] if batched else dims
    reshape = ""
    if not dims:  # [N] (batched) or a scalar: Triton needs at least one dim
        dims, reshape = [1], f"\n{indent}  reshape: {{ shape: [ ] }}"
    dim_txt = ", ".join(str(d) if d is not None else "-1" for d in dims)
    return (f"{indent}{{\n{indent}  name: \"{name}\"\n{indent}  data_type: {TRITON_DTYPES[elem]}\n"
            f"{indent}  dims: [ {dim_txt} ]{reshape}\n{indent}}}")


def config_pbtxt(model: onnx.ModelProto, name: str, max_batch: int = 64, gpu: bool = False,
                 instances: int = 1, queue_delay_us: int = 100, where: str = "explainer") -> str:
    """The text of config.pbtxt (Triton ModelConfig in protobuf text format) for an explainer."""
    ins, outs = tensor_specs(model, where)
    batched = max_batch > 0 and _batchable(ins + outs)
    lines = [f"name: \"{name}\"", "backend: \"onnxruntime\"", f"max_batch_size: {max_batch if batched else 0}"]
    lines.append("input [\n" + ",\n".join(_tensor_block(*s, batched) for s in ins) + "\n]")
    lines.append("output [\n" + ",\n".join(_tensor_block(*s, batched) for s in outs) + "\n]")
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}")
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def export_triton(explainer_path, repo, name: str | None = None, max_batch: int = 64, gpu: bool = False,
                  instances: int = 1, queue_delay_us: int = 100) -> Path:
    """Write ``repo/NAME/1/model.onnx`` and ``repo/NAME/config.pbtxt``; return the model folder.

    ``name`` defaults to the explainer's file stem. ``max_batch`` = Triton's max_batch_size (0 disables
    batching). ``gpu`` puts the instance group on KIND_GPU (the onnxruntime backend then runs the CUDA EP).
    """
    src = Path(os.fspath(explainer_path))
    if not src.is_file():
        raise XCompileError(f"{src}: no such explainer file")
    name = safe_name(name or src.stem)
    # Triton parses max_batch_size and count as int32 and the queue delay as uint64 microseconds
    if not 0 <= max_batch <= MAX_BATCH:
        raise XCompileError(f"--max-batch {max_batch}: must be in 0..{MAX_BATCH} (0 disables batching)")
    if not 1 <= instances <= MAX_INSTANCES:
        raise XCompileError(f"--instances {instances}: must be in 1..{MAX_INSTANCES}")
    if not 0 <= queue_delay_us <= 60_000_000:
        raise XCompileError(f"queue_delay_us {queue_delay_us}: must be in 0..60000000 (one minute)")
    try:
        header = onnx.load(str(src), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise XCompileError(f"{src}: not a readable ONNX file ({str(e).strip().splitlines()[0]})") from None
    names_in = [i.name for i in header.graph.input]
    names_out = [o.name for o in header.graph.output]
    if TARGET not in names_in or RELEVANCE not in names_out:
        raise XCompileError(f"{src}: not an xcompile explainer (needs a 'target' input and a 'relevance' output)")
    text = config_pbtxt(header, name, max_batch, gpu, instances, queue_delay_us, where=str(src))

    check_output(repo, what="--repo", folder=True)
    final = Path(os.fspath(repo)).absolute() / name
    if final.exists() and (not final.is_dir() or _same_tree(src, final)):
        raise XCompileError(f"--repo {repo}: {final} is not a model folder this command can replace (or holds the input)")
    # the whole model folder is written beside its place, then renamed: a full disk or a kill leaves the old
    # folder or the new one, never a model folder without its config or version
    from .server import staged_folder
    with staged_folder(final, "--repo") as folder:
        dst = folder / "1" / "model.onnx"
        if _has_external_data(header):  # re-save with the sidecar next to model.onnx
            from ..write.writer import save
            save(onnx.load(str(src)), dst, inputs=[src])
        else:
            atomic_write(dst, lambda t: shutil.copyfile(src, t), "--repo")
        write_text(folder / "config.pbtxt", text, "--repo")
    return final


def _same_tree(src: Path, folder: Path) -> bool:
    """``src`` lies inside ``folder`` (replacing the folder would delete the input)."""
    try:
        return folder.resolve() in src.resolve().parents
    except OSError:
        return True
