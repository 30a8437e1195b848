"""The neuralized heads (NEON: Kauffmann et al. 2020, "From clustering to cluster explanations via neural
networks"; Kauffmann et al. 2020, "Towards explaining anomalies: a deep Taylor decomposition of one-class models"):
k-means, one-class SVM and binary RBF SVC as min/softmin pools of linear/quadratic units, each appending its
forward and relevance nodes to a Builder. Reusable inside a larger graph (deep features + k-means head, ...)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from onnx import TensorProto

from ...backward.builder import Builder

OPSET = 17
IR_VERSION = 8
PREFIX = "xc/neuralized"
SUPPORTED = ("supported: KMeans/MiniBatchKMeans, OneClassSVM(kernel='rbf'), binary SVC(kernel='rbf'), "
             "each optionally after StandardScaler (Scaler/Sub/Div/Mul/Add)")
_BIG = 1e300          # masks the explained cluster out of min / softmin (finite: no inf arithmetic)
_D = TensorProto.DOUBLE
_F = TensorProto.FLOAT
_I64 = TensorProto.INT64


@dataclass
class NeuralizedHead:
    """Tensor names produced by an ``emit_*_head`` function (all batch-first)."""
    score: str                   # float32 [N]: the explained score (f_c, o(x), ±(o_- - o_+)); Σ relevance
    relevance: str               # float32 [N, D]: relevance on the feature tensor
    label: str                   # int64 [N]: the model's prediction (cluster / ±1 / class label)
    target: Optional[str] = None  # int64 [N]: what was explained (cluster index / class index)
    extra: dict = field(default_factory=dict)  # other float32 outputs (distances, decision, ...)


# ============================================================================ small helpers
def _c(b: Builder, value, hint="const", dtype=np.float64) -> str:
    return b.const(value, dtype, hint)


def _to_double(b: Builder, x: str) -> str:
    return b.cast(x, _D, "x_f64")


def _sqdist_expanded(b: Builder, xd: str, xsq: str, U: np.ndarray, hint: str) -> str:
    """‖x - u_j‖² = ‖x‖² - 2 x·u_j + ‖u_j‖², clamped at 0 (float64)."""
    xu = b.op("Gemm", [xd, _c(b, U, "support_vectors"), _c(b, (U * U).sum(1), "support_sqnorm")],
              "x_dot_u", transB=1, alpha=-2.0, beta=1.0)
    return b.op("Max", [b.add(xu, xsq, "sqdist_raw"), _c(b, 0.0)], hint)


def _quadratic_backward(b: Builder, xd: str, s: str, U: np.ndarray, hint: str) -> str:
    """R_i = Σ_j (x_i - u_ij)² s_j = x_i² Σ_j s_j - 2 x_i (sU)_i + (sU²)_i (float64)."""
    S = b.reduce("ReduceSum", s, [1], keepdims=1, hint="s_sum")
    sU = b.op("MatMul", [s, _c(b, U, "support_vectors")], "s_U")
    sU2 = b.op("MatMul", [s, _c(b, U * U, "support_vectors_sq")], "s_U2")
    t1 = b.mul(b.mul(xd, xd, "x_sq"), S, "term_xx")
    t2 = b.mul(b.mul(xd, sU, "x_sU"), _c(b, -2.0), "term_xu")
    return b.op("Sum", [t1, t2, sU2], hint)


# ============================================================================ heads
def emit_kmeans_head(b: Builder, features: str, centroids: np.ndarray, *, target: Optional[str] = None,
                     default_target: Optional[int] = None, beta: Optional[float] = None,
                     epsilon: float = 1e-9) -> NeuralizedHead:
    """NEON k-means head (Kauffmann et al. 2020) on the float32 [N, D] tensor ``features``.

    c = target[n] where target >= 0, else ``default_target`` if given, else the assigned cluster.
    h_k = w_kᵀx + b_k = ‖x-μ_k‖² - ‖x-μ_c‖² (k ≠ c), f_c = min_k h_k,
    R_k = softmin_β(h)_k f_c, R_i = Σ_k (x_i - m_ik) w_ik / (h_k + ε sign h_k) R_k with m_k = (μ_c+μ_k)/2.
    ``beta=None``: β = 1 / max(mean over the batch of the assigned cluster's f, 1e-12) (in-graph).
    """
    M = np.asarray(centroids, np.float64)
    K, D = M.shape
    with b.scope("kmeans"):
        xd = _to_double(b, features)
        # g_k = ‖μ_k‖² - 2 x·μ_k  (= ‖x-μ_k‖² - ‖x‖², no cancellation of ‖x‖² in h)
        g = b.op("Gemm", [xd, _c(b, M, "centroids"), _c(b, (M * M).sum(1), "centroid_sqnorm")],
                 "g", transB=1, alpha=-2.0, beta=1.0)
        label = b.arg_extreme(g, largest=False, hint="label")
        xsq = b.reduce("ReduceSumSquare", xd, [1], keepdims=1, hint="x_sqnorm")
        dist = b.op("Sqrt", [b.op("Max", [b.add(g, xsq, "sqdist_raw"), _c(b, 0.0)], "sqdist")], "dist")
        dist32 = b.cast(dist, _F, "distances")
        # explained cluster c
        if default_target is not None:
            dflt = b.add(b.mul(label, _c(b, 0, dtype=np.int64), "zero_i64"),
                         _c(b, int(default_target), dtype=np.int64), "default_target")
        else:
            dflt = label
        c = dflt if target is None else b.where(b.op("Less", [target, _c(b, 0, dtype=np.int64)], "target_is_default"),
                                                dflt, target, "c")
        c2 = b.unsqueeze(c, [1], "c_col")
        ar = _c(b, np.arange(K, dtype=np.int64)[None, :], "cluster_index", dtype=np.int64)
        is_c = b.op("Equal", [ar, c2], "is_c")
        g_c = b.op("GatherElements", [g, c2], "g_c", axis=1)
        h = b.sub(g, g_c, "h")                                   # h_k = ‖x-μ_k‖² - ‖x-μ_c‖²
        big = _c(b, _BIG)
        h_masked = b.where(is_c, big, h, "h_competitors")
        f = b.reduce("ReduceMin", h_masked, [1], keepdims=1, hint="f_c")      # [N,1]
        # β
        if beta is None:
            is_a = b.op("Equal", [ar, b.unsqueeze(label, [1], "label_col")], "is_assigned")
            f_a = b.sub(b.reduce("ReduceMin", b.where(is_a, big, g, "g_competitors"), [1], keepdims=1,
                                 hint="g_second"),
                        b.reduce("ReduceMin", g, [1], keepdims=1, hint="g_first"), "f_assigned")
            mean_f = b.reduce("ReduceMean", f_a, [0, 1], keepdims=1, hint="mean_f_batch")
            beta_t = b.div(_c(b, 1.0), b.op("Max", [mean_f, _c(b, 1e-12)], "mean_f_guarded"), "beta")
        else:
            beta_t = _c(b, float(beta), "beta")
        logits = b.where(is_c, _c(b, -_BIG), b.neg(b.mul(h, beta_t, "beta_h")), "softmin_logits")
        p = b.op("Softmax", [logits], "softmin", axis=1)
        R_k = b.mul(p, f, "R_k")
        s = b.where(is_c, _c(b, 0.0), b.div(R_k, b.stabilize(h, epsilon, "h_stab", dtype=np.float64), "R_over_h"), "s")
        # R_i = Σ_k (2x_i - μ_ci - μ_ki)(μ_ci - μ_ki) s_k = μ_ci(2x_i - μ_ci) S - 2 x_i (sM)_i + (sM²)_i
        S = b.reduce("ReduceSum", s, [1], keepdims=1, hint="s_sum")
        mu_c = b.op("Gather", [_c(b, M, "centroids"), c], "mu_c", axis=0)
        t1 = b.mul(b.mul(mu_c, b.sub(b.mul(xd, _c(b, 2.0), "two_x"), mu_c, "two_x_minus_mu_c"), "mu_c_term"),
                   S, "term_c")
        t2 = b.mul(b.mul(xd, b.op("MatMul", [s, _c(b, M, "centroids")], "s_M"), "x_sM"), _c(b, -2.0), "term_xk")
        t3 = b.op("MatMul", [s, _c(b, M * M, "centroids_sq")], "s_M2")
        R = b.op("Sum", [t1, t2, t3], "R_i")
        rel = b.cast(R, _F, "relevance")
        score = b.cast(b.squeeze(f, [1], "f_c_vec"), _F, "explained_score")
    return NeuralizedHead(score=score, relevance=rel, label=label, target=c, extra={"distances": dist32})


def _rbf_pool(b: Builder, xd: str, xsq: str, U: np.ndarray, alpha: np.ndarray, gamma: float,
              epsilon: float):
    """Distance layer + soft-min pool. Returns (o [N,1], lse [N,1], R_i [N,D]) in float64 with
    o(x) = -(1/γ) log Σ_j ᾱ_j exp(-γ d_j), p = softmax(-γ d + log ᾱ), R_j = p_j o,
    R_i = Σ_j (x_i - u_ij)² / (d_j + ε) R_j."""
    d = _sqdist_expanded(b, xd, xsq, U, "sqdist")
    z = b.add(b.mul(d, _c(b, -gamma), "minus_gamma_d"), _c(b, np.log(alpha), "log_alpha"), "logits")
    lse = b.reduce("ReduceLogSumExp", z, [1], keepdims=1, hint="lse")          # log Σ α_j k(x,u_j)
    o = b.mul(b.sub(lse, _c(b, float(np.log(alpha.sum()))), "log_mean_kernel"), _c(b, -1.0 / gamma), "o")
    p = b.op("Softmax", [z], "p", axis=1)
    R_j = b.mul(p, o, "R_j")
    s = b.div(R_j, b.add(d, _c(b, epsilon), "d_stab"), "R_over_d")
    R = _quadratic_backward(b, xd, s, U, "R_i")
    return o, lse, R


def emit_ocsvm_head(b: Builder, features: str, support_vectors: np.ndarray, alphas: np.ndarray,
                    gamma: float, rho: float, *, epsilon: float = 1e-9) -> NeuralizedHead:
    """Neuralized one-class SVM (RBF). score = o(x); extra: decision (Σα k + ρ = decision_function),
    score_samples (Σα k). Σ_i R_i = o(x) (up to ε/d)."""
    U = np.asarray(support_vectors, np.float64)
    a = np.asarray(alphas, np.float64)
    with b.scope("ocsvm"):
        xd = _to_double(b, features)
        xsq = b.reduce("ReduceSumSquare", xd, [1], keepdims=1, hint="x_sqnorm")
        o, lse, R = _rbf_pool(b, xd, xsq, U, a, gamma, epsilon)
        ss = b.op("Exp", [lse], "score_samples")
        dec = b.add(ss, _c(b, float(rho), "rho"), "decision")
        label = b.where(b.op("Greater", [b.squeeze(dec, [1], "decision_vec"), _c(b, 0.0)], "is_inlier"),
                        _c(b, 1, dtype=np.int64), _c(b, -1, dtype=np.int64), "label")
        extra = {"decision": b.cast(dec, _F, "decision_f32"),
                 "score_samples": b.cast(b.squeeze(ss, [1], "score_samples_vec"), _F, "score_samples_f32")}
        rel = b.cast(R, _F, "relevance")
        score = b.cast(b.squeeze(o, [1], "o_vec"), _F, "explained_score")
    return NeuralizedHead(score=score, relevance=rel, label=label, extra=extra)


def emit_svc_head(b: Builder, features: str, sv_neg: np.ndarray, a_neg: np.ndarray, sv_pos: np.ndarray,
                  a_pos: np.ndarray, gamma: float, intercept: float, classlabels=(0, 1), *,
                  target: Optional[str] = None, epsilon: float = 1e-9) -> NeuralizedHead:
    """Binary RBF SVC: decision f(x) = Σ_pos a k - Σ_neg a k + intercept (sklearn's decision_function,
    > 0 -> classlabels[1]). Explained (an approximation, see docs): e(x) = o_neg(x) - o_pos(x), the
    difference of the two classes' soft-min distances; relevance = R^neg - R^pos (each by the one-class
    rule). Side: class index t = target (>= 0) or the predicted index; explained = e for t = 1, -e for t = 0.
    """
    with b.scope("svc"):
        xd = _to_double(b, features)
        xsq = b.reduce("ReduceSumSquare", xd, [1], keepdims=1, hint="x_sqnorm")
        with b.scope("class0"):
            o_n, lse_n, R_n = _rbf_pool(b, xd, xsq, np.asarray(sv_neg, np.float64),
                                        np.asarray(a_neg, np.float64), gamma, epsilon)
        with b.scope("class1"):
            o_p, lse_p, R_p = _rbf_pool(b, xd, xsq, np.asarray(sv_pos, np.float64),
                                        np.asarray(a_pos, np.float64), gamma, epsilon)
        dec = b.add(b.sub(b.op("Exp", [lse_p], "k_pos"), b.op("Exp", [lse_n], "k_neg"), "k_diff"),
                    _c(b, float(intercept), "intercept"), "decision")
        dec_v = b.squeeze(dec, [1], "decision_vec")
        is_pos = b.op("Greater", [dec_v, _c(b, 0.0)], "is_class1")
        pred_idx = b.where(is_pos, _c(b, 1, dtype=np.int64), _c(b, 0, dtype=np.int64), "pred_index")
        label = b.where(is_pos, _c(b, int(classlabels[1]), dtype=np.int64),
                        _c(b, int(classlabels[0]), dtype=np.int64), "label")
        t = pred_idx if target is None else b.where(
            b.op("Less", [target, _c(b, 0, dtype=np.int64)], "target_is_default"), pred_idx, target, "t")
        side = b.where(b.op("Equal", [t, _c(b, 1, dtype=np.int64)], "explain_class1"), _c(b, 1.0), _c(b, -1.0),
                       "side")
        side_col = b.unsqueeze(side, [1], "side_col")
        e = b.mul(b.sub(o_n, o_p, "o_diff"), side_col, "explained")
        R = b.mul(b.sub(R_n, R_p, "R_diff"), side_col, "R_i")
        rel = b.cast(R, _F, "relevance")
        score = b.cast(b.squeeze(e, [1], "explained_vec"), _F, "explained_score")
        extra = {"decision": b.cast(dec_v, _F, "decision_f32")}
    return NeuralizedHead(score=score, relevance=rel, label=label, target=t, extra=extra)
