"""The one way xcompile opens onnxruntime sessions on the machine that compiles: probing shapes, folding
constants, measuring pooling divisors and resize maps, fitting patterns, evaluating. Models of any size
(``protobuf_limit.inference_session``: a large one as a weightless skeleton + its weights in place, run
unoptimized); quiet logs; CPU unless told."""
from __future__ import annotations

from typing import Optional, Sequence

import onnxruntime as ort

from .protobuf_limit import inference_session

LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def session_options(threads: Optional[int] = None, optimization: Optional[str] = None,
                    quiet: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    if quiet:
        so.log_severity_level = 4  # FATAL only: our one-line message says what failed (no coloured ORT log)
    if optimization is not None:
        so.graph_optimization_level = LEVELS[optimization]
    if threads:
        so.intra_op_num_threads = threads
    return so


def session(model, *, threads: Optional[int] = None, optimization: Optional[str] = None, quiet: bool = True,
            providers: Optional[Sequence[str]] = None) -> ort.InferenceSession:
    """An InferenceSession for a path or a ModelProto (any size; over 2 GiB: ``optimization`` is "disable")."""
    return inference_session(model, session_options(threads, optimization, quiet),
                             tuple(providers or ("CPUExecutionProvider",)), in_place=True)
