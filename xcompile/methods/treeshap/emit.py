"""TreeSHAP as ai.onnx operators on a Builder (docs/tabular.md): per row, per path and per unique feature the one
fraction o (does x fall in the path's interval), then the SHAP weights of every element by Gauss-Legendre quadrature
of prod_j (z_j (1 - t) + o_j t) over [0, 1] (paths.quadrature), scattered onto the features. Arithmetic in float64;
the comparisons in float32, as onnxruntime's TreeEnsemble routes float32 rows."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ...backward.builder import Builder
from ...graph import TARGET
from .paths import PathTable, one_fractions, quadrature


def emit_treeshap(b: Builder, x: str, tab: PathTable, background: np.ndarray | None = None) -> dict:
    """Append TreeSHAP of the rows `x` (float32 [N, F]) to `b`. Returns tensor names: ``relevance`` (float32 [N, F]),
    ``explained_class`` (int64 [N]), ``raw`` (float64 [N, C], raw scores), ``score`` (float64 [N], the explained raw
    score) and ``expected`` (float64 [N], its expected value).

    ``background`` (float32 [B, F]): interventional TreeSHAP (Lundberg et al. 2020, "Interventional Tree SHAP"): for
    one background row r the game v(S) = f(x_S, r_S̄) is, per path, v prod_{j in S} o_j(x) prod_{j not in S} o_j(r), so
    its Shapley values are the path-dependent formula with the zero fractions z_j replaced by r's one fractions; the
    explanation is their mean over the B rows (a factor with o = z = 0 contributes 0, masked instead of 0 / 0)."""
    P, D = tab.feature.shape
    K = P * D
    c64 = (lambda v, hint="const": b.const(v, np.float64, hint))  # noqa: E731
    with b.scope("one_fractions"):
        xg = b.op("Gather", [x, b.i64(tab.feature.ravel())], "x_on_path", axis=1)               # [N, K]
        lo, hi = b.f32(tab.lo.ravel()), b.f32(tab.hi.ravel())
        lower = b.op("Or", [b.op("Greater", [xg, lo]), b.op("And", [b.op("Equal", [xg, lo]),
                                                                    b.const(tab.lo_closed.ravel(), bool)])], "above_lo")
        upper = b.op("Or", [b.op("Less", [xg, hi]), b.op("And", [b.op("Equal", [xg, hi]),
                                                                 b.const(tab.hi_closed.ravel(), bool)])], "below_hi")
        inside = b.cast(b.op("And", [lower, upper]), TensorProto.DOUBLE, "inside")
        missing = b.op("IsNaN", [xg], "missing")
        o = b.where(missing, c64(tab.nan_one.ravel(), "nan_one"), inside, "one_fraction")  # [N, K]
        o3 = b.op("Reshape", [o, b.i64([-1, P, D])], "per_path")
    with b.scope("raw_scores"):
        reached = b.reduce("ReduceProd", o3, [2], keepdims=0, hint="leaf_reached")          # [N, P]
        raw = b.add(b.op("MatMul", [reached, c64(tab.value, "leaf_values")], "leaf_sum"), c64(_base(tab), "base"), "raw")                                            # [N, C]
    with b.scope("target"):
        pred = b.arg_extreme(raw, largest=True, hint="predicted")
        cls = b.where(b.op("Less", [TARGET, b.i64(0)], "use_predicted"), pred, TARGET, "class")
    with b.scope("shapley"):
        t, w = quadrature(D)
        Q = len(t)
        # the zero fractions [1, K] (path-dependent) or the background rows' one fractions [B, K] (interventional)
        zero = tab.zero.reshape(1, K) if background is None else one_fractions(tab, background).reshape(-1, K)
        R = zero.shape[0]
        o_col = b.op("Reshape", [o, b.i64([-1, 1, K, 1])], "o_column")                             # [N, 1, K, 1]
        f = b.add(b.mul(o_col, c64(t, "t")), c64(zero.reshape(R, K, 1) * (1 - t), "z_times_1_minus_t"), "factor")
        f5 = b.op("Reshape", [f, b.i64([-1, R, P, D, Q])], "factor_per_path")                     # [N, R, P, D, Q]
        prod = b.reduce("ReduceProd", f5, [3], keepdims=1, hint="product")                         # [N, R, P, 1, Q]
        if background is None:  # every factor > 0 (t in (0, 1), zero fractions > 0): a division leaves one out
            others = b.div(prod, f5, "without_element")
        else:  # a factor o = r = 0 is 0; its own phi is 0 (o - r = 0), so 0 / 0 is masked to 0
            nil = b.op("Equal", [f5, c64(0.0)], "zero_factor")
            others = b.where(nil, c64(0.0), b.div(prod, b.where(nil, c64(1.0), f5, "safe_factor")), "without_element")
        weight = b.op("MatMul", [others, c64(w.reshape(-1, 1), "quadrature_weights")], "shapley_weight")  # [.., 1]
        weight = b.op("Reshape", [weight, b.i64([-1, R, P, D])], "shapley_weight")
        v = b.op("Gather", [c64(tab.value.T, "leaf_values_by_class"), cls], "leaf_value", axis=0)  # [N, P]
        v = b.op("Reshape", [v, b.i64([-1, 1, P, 1])], "leaf_value")
        o4 = b.op("Reshape", [o, b.i64([-1, 1, P, D])], "o_per_path")
        diff = b.sub(o4, c64(zero.reshape(R, P, D), "zero_fraction"), "one_minus_zero")          # [N, R, P, D]
        phi = b.mul(b.mul(weight, diff), v, "phi")
        phi = b.reduce("ReduceMean", phi, [1], keepdims=0, hint="mean_over_background")           # [N, P, D]
        phi = b.op("Reshape", [phi, b.i64([-1, K])], "phi_flat")
    with b.scope("per_feature"):
        idx = b.add(b.mul(b.cast(missing, TensorProto.INT64, "row_i64"), b.i64(0), "zero_i64"),
                    b.i64(tab.feature.ravel()), "feature_index")                               # [N, K]
        zeros = b.mul(b.cast(b.op("IsNaN", [x], "x_nan"), TensorProto.DOUBLE, "x_nan_f"), c64(0.0), "zeros")  # [N, F]
        rel = b.op("ScatterElements", [zeros, idx, phi], "relevance64", axis=1, reduction="add")
        relevance = b.cast(rel, TensorProto.FLOAT, "relevance")
    with b.scope("explained"):
        col = b.op("Unsqueeze", [cls, b.i64([1])], "class_column") if b.opset >= 13 else \
            b.op("Unsqueeze", [cls], "class_column", axes=[1])
        score = b.op("GatherElements", [raw, col], "score", axis=1)
        score = b.op("Reshape", [score, b.i64([-1])], "score")
        expected = b.op("Gather", [c64(expected_value(tab, background), "expected_value"), cls], "expected", axis=0)
    return dict(relevance=relevance, explained_class=cls, raw=raw, score=score, expected=expected, phi=rel)


def expected_value(tab: PathTable, background: np.ndarray | None) -> np.ndarray:
    """[C]: under the covers (path-dependent), or the mean raw score over the background rows (interventional)."""
    if background is None:
        return tab.expected
    reached = one_fractions(tab, background).prod(axis=2)
    return (reached @ tab.value).mean(axis=0) + _base(tab)


def _base(tab: PathTable) -> np.ndarray:
    return tab.expected - tab.value.T @ tab.zero.prod(axis=1)


def conservation(b: Builder, out: dict) -> str:
    """float32 [N]: (sum of relevance + expected value) / raw score; NaN where |raw score| < 1e-12."""
    with b.scope("conservation"):
        total = b.add(b.reduce("ReduceSum", out["phi"], [1], keepdims=0, hint="total"), out["expected"], "with_expected")
        zero = b.const(0.0, np.float64)
        tiny = b.op("Less", [b.op("Abs", [out["score"]]), b.const(1e-12, np.float64)], "tiny")
        ratio = b.div(b.where(tiny, zero, total), b.where(tiny, zero, out["score"]), "ratio")
        return b.cast(ratio, TensorProto.FLOAT, "conservation")
