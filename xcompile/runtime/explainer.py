"""Run a compiled explainer: one onnxruntime session per Explainer, reused for every call."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import XCompileError, clean, warn_once
from ..graph import RELEVANCE, TARGET
from ..guards import threads as guard_threads
from ..metadata import ExplainerMeta
from ..protobuf_limit import inference_session


@dataclass
class Explanation:
    scores: np.ndarray
    relevance: np.ndarray
    extras: dict = field(default_factory=dict)

    @property
    def predicted(self):
        """The class each row's relevance explains: the explainer's ``explained_class`` output (the target, or the
        argmax of the explained scores, e.g. the logits before a Softmax), else the argmax of ``scores``."""
        for name in ("explained_class", "explained_target"):  # neuralized explainers: the explained cluster
            if self.extras.get(name) is not None:
                return self.extras[name]
        scores = np.asarray(self.scores)
        if scores.ndim < 2:  # a one-output model whose first output is its label (neuralized OC-SVM / SVC)
            return scores.astype(np.int64) if scores.dtype.kind in "iub" else np.zeros(len(scores), np.int64)
        return scores.argmax(axis=1)


# onnxruntime graph-optimization levels by name. Kernels differ between levels (fused Conv+Add, other GEMM
# orders), so a unit whose pre-activation lies within float32 rounding of a kink (ReLU at 0, a MaxPool tie) can
# take the other branch at another level: "basic" (or "disable") gives results that do not depend on fusions.
OPTIMIZATION_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def session_options(threads: int | None = None, cuda_only: bool = False,
                    optimization: str = "all") -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 4  # FATAL only: errors reach the user as our one-line message
    if optimization not in OPTIMIZATION_LEVELS:
        raise XCompileError(f"optimization {optimization!r}: expected one of {', '.join(OPTIMIZATION_LEVELS)}")
    so.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    if threads:
        so.intra_op_num_threads = threads
    if cuda_only:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return so


def providers_for(device: str):
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise XCompileError("device 'cuda': this onnxruntime has no CUDAExecutionProvider (install the 'gpu' extra: onnxruntime-gpu instead of onnxruntime)")
        return ["CUDAExecutionProvider"]
    raise XCompileError(f"unknown device {device!r} (cpu or cuda)")


_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(int8)": np.int8,
          "tensor(uint8)": np.uint8}


def _check_providers(providers):
    """None, or a list of onnxruntime execution provider names this onnxruntime has."""
    if providers is None:
        return None
    names = [p[0] if isinstance(p, tuple) and p else p for p in (providers if isinstance(providers, (list, tuple)) else [providers])]
    have = ort.get_available_providers()
    bad = [p for p in names if not isinstance(p, str) or p not in have]
    if bad or not names:
        raise XCompileError(f"providers={clean(providers)!r}: this onnxruntime has {', '.join(have)}")
    return list(providers)


def _check_rows(n: int) -> None:
    if n == 0:
        raise XCompileError("input has 0 rows (an empty batch); give at least one row")


def _check_batch_size(batch_size):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise XCompileError(f"batch_size={batch_size!r}: a positive integer (or None: the whole batch at once)")
    return int(batch_size)


class Explainer:
    """``Explainer(path_or_model).explain(x, target=None)`` -> Explanation(scores, relevance, extras).

    ``optimization`` is onnxruntime's graph-optimization level ("all" default, "extended", "basic", "disable"):
    explanations of inputs with a unit within float32 rounding of a kink can differ between levels; "basic"
    is the reproducible setting (the same kernels on every CPU).

    Attributes others build on: ``input_names`` (every model input, in order, without ``target``), ``inputs`` (their
    onnxruntime NodeArgs: name, type, shape), ``data_input`` (the explained one), ``token_input`` (it is token ids
    [N, L]; then ``vocab``, ``baseline_token``), ``outputs``, ``meta`` (the compiler's record: metadata.ExplainerMeta)."""

    def __init__(self, model, providers=None, device: str = "cpu", threads: int | None = None,
                 optimization: str = "all"):
        if isinstance(model, (bytes, bytearray, memoryview)):  # serialized, as compile() accepts
            try:
                model = onnx.load_from_string(bytes(model))
            except Exception as e:  # noqa: BLE001 - protobuf DecodeError
                raise XCompileError(f"explainer bytes: not a serialized ONNX model ({type(e).__name__})") from None
        if isinstance(model, onnx.ModelProto):
            data, self.where = model, "explainer"
        elif not isinstance(model, (str, os.PathLike)):
            raise XCompileError(f"Explainer({type(model).__name__}): expected a path, bytes or an onnx.ModelProto")
        else:
            path = Path(os.fspath(model))
            if not path.is_file():
                raise XCompileError(f"{path}: no such explainer file")
            data, self.where = str(path), str(path)
        threads = None if threads is None or (type(threads) is int and threads == 0) else guard_threads(threads)  # 0: default
        cuda_only = providers is None and device == "cuda"
        providers = _check_providers(providers) or providers_for(device)
        so = session_options(threads, cuda_only, optimization)
        try:
            self.session = inference_session(data, so, providers)
        except Exception as e:  # noqa: BLE001
            raise XCompileError(f"{self.where}: onnxruntime cannot load it: {str(e).strip().splitlines()[0]}") from None
        ins = self.session.get_inputs()
        names = [i.name for i in ins]
        if TARGET not in names or RELEVANCE not in [o.name for o in self.session.get_outputs()]:
            raise XCompileError(f"{self.where}: not an xcompile explainer (needs a 'target' input and a 'relevance' output)")
        self.meta = ExplainerMeta.of_session(self.session)
        self.inputs = [i for i in ins if i.name != TARGET]  # every model input, in order (NodeArgs)
        self.input_names = [i.name for i in self.inputs]
        named = self.meta.data_input
        self.data_input = next((i for i in self.inputs if i.name == named), self.inputs[0])  # the explained input
        self.token_input = bool(self.meta.token_input)  # explained input = token ids [N, L]
        self.vocab = int(self.meta.vocab) if self.token_input and self.meta.vocab is not None else None
        bt = self.meta.baseline_token
        self.baseline_token = int(bt) if bt is not None else None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.score_output = self.outputs[0]
        self.sample_shape = tuple(self.data_input.shape[1:])
        score_shape = self.session.get_outputs()[0].shape
        self.n_classes = score_shape[1] if len(score_shape) > 1 and isinstance(score_shape[1], int) else None

    def _check_inputs(self, given: dict) -> dict:
        """{name: array} for every input: names, dtypes (ids stay integer), shapes, equal row counts and the token id
        range [0, vocab), each checked with one line."""
        unknown = [k for k in given if k not in self.input_names]
        missing = [k for k in self.input_names if k not in given]
        if unknown or missing:
            raise XCompileError(f"inputs {sorted(map(str, given))}: {self.where} takes {self.input_names}"
                                + (f" (missing {missing})" if missing else "") + (f" (unknown {unknown})" if unknown else ""))
        out = {}
        for arg in self.inputs:
            if arg.name == self.data_input.name and not self.token_input:
                out[arg.name] = self._check_input(given[arg.name])
            else:
                out[arg.name] = self._check_other(arg, given[arg.name])
        rows = {k: v.shape[0] for k, v in out.items()}
        if len(set(rows.values())) > 1:
            raise XCompileError(f"inputs have different numbers of rows {rows}; give one row per example in each")
        _check_rows(next(iter(rows.values())))
        if self.token_input and self.vocab is not None:
            ids = out[self.data_input.name]
            bad = (ids < 0) | (ids >= self.vocab)
            if bad.any():
                raise XCompileError(f"input {self.data_input.name!r}: token id {int(ids[bad][0])} is out of range "
                                    f"(the embedding has ids 0..{self.vocab - 1})")
        return out

    def _check_other(self, arg, x) -> np.ndarray:
        """A model input other than a float explained one: its declared dtype and shape."""
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise XCompileError(f"input {arg.name!r} is not a rectangular array ({' '.join(str(e).split())[:120]})") from None
        want = _NUMPY.get(arg.type)
        if want is None:
            raise XCompileError(f"input {arg.name!r}: {self.where} declares it as {arg.type}, which this runtime does not feed")
        kind = np.dtype(want).kind
        ok = x.dtype.kind == kind or (kind in "iu" and x.dtype.kind in "iub") or (kind == "f" and x.dtype.kind in "fiub") \
            or (kind == "b" and x.dtype.kind in "iub")
        if not ok:
            raise XCompileError(f"input {arg.name!r} has dtype {x.dtype}; {self.where} expects {np.dtype(want).name}")
        if kind in "iu" and x.dtype.kind in "iu" and x.size and (x.min() < np.iinfo(want).min or x.max() > np.iinfo(want).max):
            raise XCompileError(f"input {arg.name!r}: values out of the range of {np.dtype(want).name}")
        sample = tuple(arg.shape[1:])
        if x.ndim == len(sample):
            x = x[None]
        fixed = [d if isinstance(d, int) else None for d in sample]
        if x.ndim != len(fixed) + 1 or any(f is not None and f != s for f, s in zip(fixed, x.shape[1:])):
            want_shape = ", ".join(str(d) if d is not None else "?" for d in fixed)
            pad = (f"; the sequence length is fixed when compiling: pad (or cut) the inputs to {fixed[-1]} tokens"
                   if self.token_input and len(fixed) == 1 else "")
            raise XCompileError(f"input {arg.name!r} has shape {list(x.shape)}; {self.where} expects [N, {want_shape}]{pad}")
        return np.ascontiguousarray(x.astype(want, copy=False))

    def _check_input(self, x, shape_only: bool = False) -> np.ndarray:
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:  # ragged nested lists, objects numpy cannot stack
            raise XCompileError(f"input is not a rectangular array of numbers ({' '.join(str(e).split())[:120]})") from None
        want = np.float16 if self.data_input.type == "tensor(float16)" else np.float32  # float16 models, io kept
        if x.dtype.kind != "f":
            raise XCompileError(f"input has dtype {x.dtype}; {self.where} expects {np.dtype(want).name} "
                                f"{self.data_input.name!r}")
        x = x.astype(want, copy=False)
        if x.ndim == len(self.sample_shape):
            x = x[None]
        fixed = [d if isinstance(d, int) else None for d in self.sample_shape]
        if x.ndim != len(fixed) + 1 or any(f is not None and f != s for f, s in zip(fixed, x.shape[1:])):
            want = "x".join(str(d) if d is not None else "?" for d in fixed)
            raise XCompileError(f"input has shape {list(x.shape)}; {self.where} expects [N, {want.replace('x', ', ')}] for {self.data_input.name!r}")
        if not shape_only:
            _check_rows(x.shape[0])
            if not np.isfinite(x).all():
                warn_once("input", f"input has {int(x.size - np.isfinite(x).sum())} non-finite value(s) (NaN/Inf): "
                                   "their scores and relevance are not meaningful")
        return np.ascontiguousarray(x)

    def _check_target(self, target, n: int) -> np.ndarray:
        if target is None:
            return np.full(n, -1, np.int64)
        try:
            t = np.asarray(target)
        except (ValueError, TypeError):
            raise XCompileError("target must be integer class indices (one per row, or one for all)") from None
        if t.dtype == object and all(isinstance(v, int) for v in t.reshape(-1).tolist()):
            bad = next(v for v in t.reshape(-1).tolist() if not -2**63 <= v < 2**63)
            raise XCompileError(f"target {bad} is out of range (-1 or a class index)")
        if t.dtype.kind not in "iu":
            raise XCompileError(f"target must be integer class indices, got dtype {t.dtype}")
        if t.dtype.kind == "u" and t.size and int(t.max()) > np.iinfo(np.int64).max:
            raise XCompileError(f"target {int(t.max())} is out of range (-1 or a class index)")
        t = np.broadcast_to(t.astype(np.int64), (n,)).copy() if t.ndim == 0 else t.astype(np.int64)
        if t.shape != (n,):
            raise XCompileError(f"target has shape {list(t.shape)}; expected [{n}] (one class per input row)")
        if self.n_classes is not None and ((t < -1) | (t >= self.n_classes)).any():
            bad = int(t[(t < -1) | (t >= self.n_classes)][0])
            raise XCompileError(f"target {bad} is out of range (-1 or 0..{self.n_classes - 1})")
        return t

    def explain(self, x, target=None, batch_size: int | None = None, progress=None) -> Explanation:
        """``x``: numpy array, or a torch / cupy / any DLPack tensor (CPU or GPU): those are bound in place with
        IOBinding (no host copy on the GPU) and the results come back as tensors of the same kind and device.
        A model with several inputs takes a dict {input name: array} with every one of ``input_names`` (numpy or
        CPU tensors); token ids stay integer and must lie in [0, vocab). A token model's
        ``extras["embedding_relevance"]`` is the relevance [N, L, D] at the embedding.
        ``batch_size`` splits a large batch into several onnxruntime calls (bounded memory); ``progress(rows_done)``
        is called after each of them (numpy inputs)."""
        if isinstance(x, dict):
            feeds = self._check_inputs(x)
        elif len(self.inputs) > 1:
            raise XCompileError(f"{self.where} has several inputs {self.input_names}: pass a dict {{name: array}} with all of them")
        elif not isinstance(x, np.ndarray) and hasattr(x, "__dlpack__") and not self.token_input:
            return self._explain_bound(x, target, batch_size)
        elif self.token_input:
            feeds = self._check_inputs({self.data_input.name: x})
        else:
            feeds = {self.data_input.name: self._check_input(x)}
        n = next(iter(feeds.values())).shape[0]
        t = self._check_target(target, n)
        step = _check_batch_size(batch_size) or max(1, n)
        parts = []
        for i in range(0, n, step):
            try:
                parts.append(self.session.run(None, {**{k: v[i:i + step] for k, v in feeds.items()}, TARGET: t[i:i + step]}))
            except Exception as e:  # noqa: BLE001 - onnxruntime's own errors: one line, not a traceback
                if not type(e).__module__.startswith("onnxruntime"):
                    raise
                raise XCompileError(f"{self.where}: onnxruntime fails on rows {i}..{min(i + step, n) - 1}: "
                                    f"{str(e).splitlines()[0]}{self._special_hint()}") from None
            if progress is not None:  # progress(rows done so far), e.g. a progress bar
                progress(min(i + step, n))
        outs = [np.concatenate([p[k] for p in parts]) for k in range(len(self.outputs))]
        named = dict(zip(self.outputs, outs))
        extras = {k: v for k, v in named.items() if k not in (self.score_output, RELEVANCE)}
        return Explanation(named[self.score_output], named[RELEVANCE], extras)

    __call__ = explain

    def _special_hint(self) -> str:
        """Where the model compares the ids with special tokens (load/probe.py `special_ids`: BART's / T5's EOS)."""
        ids = self.meta.special_tokens
        return (f" (the model reads token id(s) {ids} at run time, e.g. the EOS its classification head reads: "
                "every row needs them, as its tokenizer writes them)") if ids else ""

    # ------------------------------------------------------------------ tensors that stay where they are
    def _explain_bound(self, x, target, batch_size) -> Explanation:
        try:
            import torch
        except ImportError:  # no torch: a CPU DLPack tensor still works through numpy
            return self.explain(np.from_dlpack(x), target, batch_size)
        kind = "torch" if isinstance(x, torch.Tensor) else type(x).__module__.split(".")[0]
        xt = x if kind == "torch" else torch.from_dlpack(x)
        if xt.dtype != torch.float32:
            if not xt.is_floating_point():
                raise XCompileError(f"input has dtype {xt.dtype}; {self.where} expects float32 {self.data_input.name!r}")
            xt = xt.float()
        if xt.dim() == len(self.sample_shape):
            xt = xt[None]
        try:  # shape check only, with the tensor's own shape in the message
            self._check_input(np.empty((0, *xt.shape[1:]), np.float32), shape_only=True)
        except XCompileError as e:
            raise XCompileError(str(e).replace(f"[0, {', '.join(map(str, xt.shape[1:]))}]", str(list(xt.shape)), 1)) from None
        _check_rows(xt.shape[0])
        if not bool(torch.isfinite(xt).all()):
            warn_once("input", "input has non-finite values (NaN/Inf): their scores and relevance are not meaningful")
        home = xt.device
        on_gpu = "CUDAExecutionProvider" in self.session.get_providers()
        if home.type == "cuda" and not on_gpu:
            xt = xt.cpu()
        xt = xt.contiguous()
        t = self._check_target(target.cpu().numpy() if hasattr(target, "cpu") else target, xt.shape[0])
        step = _check_batch_size(batch_size) or max(1, xt.shape[0])
        parts = [self._run_bound(xt[i:i + step], t[i:i + step], torch) for i in range(0, xt.shape[0], step)]
        outs = {k: torch.cat([p[k] for p in parts]).to(home) for k in self.outputs}
        if kind == "cupy":  # give cupy callers cupy arrays back (zero-copy); other DLPack producers get torch
            import cupy
            outs = {k: cupy.from_dlpack(v) for k, v in outs.items()}
        extras = {k: v for k, v in outs.items() if k not in (self.score_output, RELEVANCE)}
        return Explanation(outs[self.score_output], outs[RELEVANCE], extras)

    def _run_bound(self, xt, t: np.ndarray, torch) -> dict:
        """One onnxruntime call with IOBinding: the input and every output live in torch memory on xt's device."""
        dev = xt.device
        ort_dev = ("cuda", dev.index or 0) if dev.type == "cuda" else ("cpu", 0)
        binding = self.session.io_binding()
        binding.bind_input(self.data_input.name, ort_dev[0], ort_dev[1], np.float32, tuple(xt.shape), xt.data_ptr())
        binding.bind_cpu_input(TARGET, t)
        outs = {}
        for o in self.session.get_outputs():
            shape = [xt.shape[0]] + list(o.shape[1:])
            kinds = {"tensor(float)": (torch.float32, np.float32), "tensor(int64)": (torch.int64, np.int64)}
            if all(isinstance(d, int) for d in shape) and o.type in kinds:  # explained_class is int64
                buf = torch.empty(shape, dtype=kinds[o.type][0], device=dev)
                binding.bind_output(o.name, ort_dev[0], ort_dev[1], kinds[o.type][1], shape, buf.data_ptr())
                outs[o.name] = buf
            else:  # a shape the graph only knows at run time: onnxruntime allocates, we copy once
                binding.bind_output(o.name, ort_dev[0], ort_dev[1])
                outs[o.name] = None
        if dev.type == "cuda":  # onnxruntime runs on its own stream: the caller's pending work must be done
            torch.cuda.current_stream(dev).synchronize()
        self.session.run_with_iobinding(binding)
        if any(v is None for v in outs.values()):
            for o, val in zip(self.session.get_outputs(), binding.get_outputs()):
                if outs[o.name] is None:
                    outs[o.name] = torch.from_numpy(val.numpy()).to(dev)
        return outs
