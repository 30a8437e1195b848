"""MLServer custom runtime: serve a compiled explainer over the Open Inference Protocol (KServe V2).

model-settings.json::

    {"name": "digits", "implementation": "xcompile.serving.mlserver_runtime.XCompileRuntime",
     "parameters": {"uri": "/abs/path/explainer.onnx", "extra": {"threads": 1, "device": "cpu"}}}

Request inputs: every input of the explainer by its ONNX name (the data input, e.g. ``input``, FP32
``[N, ...]``; a text model's ``input_ids`` INT64 ``[N, L]`` and its other inputs such as ``attention_mask``, in
their declared datatypes) and optionally ``target`` (INT64 ``[N]`` or ``[N, 1]``; -1 or absent = the predicted class). Response outputs:
every explainer output (``scores``, ``relevance``, extras), or only those the request asks for.

A bad request (wrong shape/dtype, unknown input, target out of range) is answered with HTTP 400 and the
one-line ``XCompileError`` message; the model stays loaded and the server keeps serving.

This module imports ``mlserver`` (whose protobuf modules clash with ``tritonclient.grpc``'s): import it
only inside the MLServer process. Launch helpers that do not import mlserver are in ``server.py``.
"""
from __future__ import annotations

import asyncio

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from ..errors import XCompileError
from ..runtime.explainer import TARGET, Explainer
from .limits import DEFAULT_MAX_ROWS

# onnxruntime input types -> the Open Inference Protocol datatypes accepted for them
_V2 = {"tensor(float)": ("FP32",), "tensor(float16)": ("FP16", "FP32"), "tensor(double)": ("FP64", "FP32"),
       "tensor(int64)": ("INT64", "INT32"), "tensor(int32)": ("INT32", "INT64"), "tensor(bool)": ("BOOL",),
       "tensor(int8)": ("INT8",), "tensor(uint8)": ("UINT8",)}


class XCompileRuntime(MLModel):
    """One onnxruntime session per loaded model, created once in ``load()``, shared by every request."""

    async def load(self) -> bool:
        uri = await get_model_uri(self._settings)
        extra = (self._settings.parameters.extra if self._settings.parameters else None) or {}
        threads = extra.get("threads")
        self.explainer = Explainer(uri, device=extra.get("device", "cpu"), threads=int(threads) if threads else None)
        self.explainer.where = f"model {self.name!r}"  # error messages name the model, not a server path
        self.data_name = self.explainer.data_input.name
        # every model input and the V2 datatypes it is accepted in (a float data input: FP32, as the explainer casts)
        self.datatypes = {i.name: _V2.get(i.type, ("FP32",)) for i in self.explainer.inputs}
        if not self.explainer.token_input:
            self.datatypes[self.data_name] = ("FP32",)
        self.max_rows = int(extra.get("max_rows") or DEFAULT_MAX_ROWS)
        return True

    def _check_declared(self, inp, seen: set) -> None:
        """Before decoding: the input is known and given once, its datatype and shape are what the explainer
        takes, and its batch is within ``max_rows`` (HTTP 413)."""
        if inp.name in seen:
            raise InferenceError(f"input {inp.name!r} is given twice")
        seen.add(inp.name)
        if inp.name != TARGET and inp.name not in self.datatypes:
            raise InferenceError(f"unknown input {inp.name!r}; this explainer takes {self._takes()}")
        shape = list(inp.shape or [])
        if not shape or any(not isinstance(d, int) or d < 0 for d in shape):
            raise InferenceError(f"input {inp.name!r}: declared shape {shape} (expected non-negative integers, batch first)")
        if shape[0] > self.max_rows:
            raise MLServerError(f"input {inp.name!r}: batch of {shape[0]} rows is over the limit of {self.max_rows} "
                                f"(xcompile serve --max-rows)", status_code=413)
        if shape[0] == 0:
            raise InferenceError(f"input {inp.name!r} has 0 rows (an empty batch); give at least one row")
        allowed = ("INT64", "INT32") if inp.name == TARGET else self.datatypes[inp.name]
        if inp.datatype not in allowed:
            raise InferenceError(f"input {inp.name!r}: datatype {inp.datatype}; expected {' or '.join(allowed)}")

    def _takes(self) -> str:
        return ", ".join(repr(n) for n in self.datatypes) + f" and optionally {TARGET!r}"

    def _decode(self, payload: InferenceRequest):
        arrays: dict = {}
        target = None
        seen: set = set()
        _check_id(payload.id)
        for inp in payload.inputs:
            self._check_declared(inp, seen)
            if inp.name == TARGET:
                _check_integral(inp)
        for inp in payload.inputs:
            try:
                arr = NumpyCodec.decode_input(inp)
            except Exception as e:  # noqa: BLE001 - data/shape mismatch in the request body
                raise InferenceError(f"input {inp.name!r}: cannot decode {inp.datatype} data as shape {list(inp.shape)} ({str(e).strip().splitlines()[0]})") from None
            if inp.name == TARGET:
                target = arr
            else:
                arrays[inp.name] = arr
        for arg in self.explainer.inputs:
            sample = arg.shape[1:]
            if arg.name not in arrays:
                want = ", ".join(str(d) if isinstance(d, int) else "?" for d in sample)
                raise InferenceError(f"missing input {arg.name!r} ({self.datatypes[arg.name][0]} [N, {want}])")
            if arrays[arg.name].ndim != len(sample) + 1:
                # the Explainer accepts one unbatched sample; over the wire the batch dim is required
                want = ", ".join(str(d) if isinstance(d, int) else "?" for d in sample)
                raise InferenceError(f"input {arg.name!r} has shape {list(arrays[arg.name].shape)}; expected [N, {want}]")
        if target is not None and target.ndim == 2 and target.shape[1] == 1:
            target = target[:, 0]  # Triton-style [N, 1]
        x = arrays if len(arrays) > 1 or self.explainer.token_input else arrays[self.data_name]
        return x, target

    def _run(self, x, target):
        try:
            return self.explainer.explain(x, target)
        except XCompileError as e:
            raise InferenceError(str(e)) from None

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x, target = self._decode(payload)
        res = await asyncio.to_thread(self._run, x, target)
        named = {self.explainer.score_output: res.scores, "relevance": res.relevance, **res.extras}
        wanted = [o.name for o in payload.outputs] if payload.outputs else list(self.explainer.outputs)
        unknown = [n for n in wanted if n not in named]
        if unknown:
            raise InferenceError(f"unknown output {unknown[0]!r}; this explainer gives {', '.join(self.explainer.outputs)}")
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[_encode(n, named[n]) for n in wanted])


def _encode(name: str, value) -> object:
    """An output with its own shape ([N] stays [N]: NumpyCodec would declare a 1-D array as [N, 1])."""
    arr = np.ascontiguousarray(value)
    out = NumpyCodec.encode_output(name, arr)
    out.shape = list(arr.shape)
    return out


MAX_ID = 128
_ID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+=@")


def _check_id(rid) -> None:
    """The request ``id`` is echoed in the response and its ``Ce-Id`` header: short, printable ASCII only."""
    if rid is None:
        return
    if not isinstance(rid, str) or len(rid) > MAX_ID or not set(rid) <= _ID_OK:
        raise InferenceError(f"request id: at most {MAX_ID} characters of letters, digits and -_.:/+=@")


def _check_integral(inp) -> None:
    """An INT64 / INT32 target given as JSON numbers must be whole numbers ([1.5, 0] is refused, not truncated)."""
    data = inp.data.root if hasattr(inp.data, "root") else inp.data
    stack = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()) or isinstance(v, (str, bytes)):
            raise InferenceError(f"input {TARGET!r}: {v!r} is not a class index (whole numbers only)")
