"""Backward of the differentiable ai.onnx.ml preprocessing ops that skl2onnx / onnxmltools pipelines write
(docs/tabular.md), emitted in ai.onnx: the forward keeps the ml ops verbatim, the backward never uses that domain.
``LinearClassifier`` / ``LinearRegressor`` are explained through an ai.onnx ``Gemm`` view of their raw scores
(canonicalize/outputs.py ``linear_model_view``); Binarizer / OneHotEncoder / LabelEncoder carry no relevance
(kinds.NON_DIFFERENTIABLE)."""
from __future__ import annotations

import numpy as np

from ...graph import attr
from ..table import ALL, backward
from .common import require


def _floats(ctx, name):
    v = attr(ctx.node, name)
    return None if v is None else np.asarray(v, np.float32)


@backward("Scaler")
def scaler(ctx, gy):
    """y = (x - offset) * scale (per feature, or one value for all)."""
    scale = _floats(ctx, "scale")
    return [gy[0] if scale is None else ctx.b.mul(gy[0], ctx.b.f32(scale), "scale")]


@backward("Imputer")
def imputer(ctx, gy):
    """y = x where x is not the missing value (NaN by default), else the imputed constant: no gradient there."""
    b = ctx.b
    missing = attr(ctx.node, "replaced_value_float", float("nan"))
    x = ctx.x(0)
    hole = b.op("IsNaN", [x], "missing") if np.isnan(missing) else b.op("Equal", [x, b.f32(missing)], "missing")
    return [b.where(hole, b.f32(0.0), gy[0], "kept")]


def _selector(n_in: int, indices: np.ndarray) -> np.ndarray:
    m = np.zeros((n_in, len(indices)), np.float32)
    m[indices, np.arange(len(indices))] = 1.0
    return m


@backward("ArrayFeatureExtractor")
def array_feature_extractor(ctx, gy):
    """Y = X[..., indices] (constant indices): the gradient routed back by a 0/1 matrix, Y's gradient @ S^T."""
    b = ctx.b
    idx = ctx.const(1)
    shape = ctx.in_shape(0)
    require(idx is not None and len(shape) == 2, ctx, "ArrayFeatureExtractor indices computed at run time or input rank != 2")
    sel = _selector(shape[1], np.asarray(idx, np.int64).ravel())
    g = ctx.reshape_to(gy[0], (None, sel.shape[1]))
    return [b.op("MatMul", [g, b.f32(sel.T)], "routed"), None]


@backward("FeatureVectorizer", inputs=ALL)
def feature_vectorizer(ctx, gy):
    """Y = the inputs' columns side by side (``inputdimensions`` each): the gradient sliced back per input."""
    b = ctx.b
    dims = attr(ctx.node, "inputdimensions")
    out, start = [], 0
    for k, d in enumerate(dims):
        if ctx.needs(k):
            piece = b.op("Slice", [gy[0], b.i64([start]), b.i64([start + d]), b.i64([1])], f"input{k}")
            out.append(ctx.reshape_to(piece, ctx.in_shape(k)))
        else:
            out.append(None)
        start += d
    return out


@backward("Normalizer")
def normalizer(ctx, gy):
    """Row normalisation y = x / n(x), n = sum|x| (L1), sqrt(sum x^2) (L2), max x (MAX):
    dx = (g - (g . y) dn/dx) / n with dn/dx = sign(x) (L1), y (L2), one-hot of the max (MAX)."""
    b = ctx.b
    norm = attr(ctx.node, "norm", "MAX")
    x, y = ctx.x(0), ctx.y(0)
    require(norm in ("L1", "L2", "MAX"), ctx, f"Normalizer norm {norm!r}")
    gdoty = b.reduce("ReduceSum", b.mul(gy[0], y), [1], keepdims=1, hint="g_dot_y")
    if norm == "L1":
        n, dn = b.reduce("ReduceSum", b.op("Abs", [x]), [1], keepdims=1, hint="n"), b.op("Sign", [x], "dn")
    elif norm == "L2":
        n, dn = b.op("Sqrt", [b.reduce("ReduceSum", b.mul(x, x), [1], keepdims=1)], "n"), y
    else:
        n = b.reduce("ReduceMax", x, [1], keepdims=1, hint="n")
        dn = b.cast(b.op("Equal", [x, n]), 1, "dn")
    n = b.where(b.op("Equal", [n, b.f32(0.0)]), b.f32(1.0), n, "n_safe")
    return [b.div(b.sub(gy[0], b.mul(gdoty, dn)), n, "dx")]
