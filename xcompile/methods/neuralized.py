"""Neuralized scikit-learn models (SPEC §3.4, seed 003 "Beyond DNN classifiers").

`compile_neuralized(model)` takes an skl2onnx graph of

* ``KMeans`` / ``MiniBatchKMeans`` (pure ai.onnx: ReduceSumSquare, Gemm, Add, ArgMin, Sqrt),
* ``OneClassSVM(kernel="rbf")`` (``ai.onnx.ml.SVMRegressor`` + Sign),
* binary ``SVC(kernel="rbf")`` (``ai.onnx.ml.SVMClassifier``),

optionally preceded by the affine preprocessing a ``Pipeline`` puts in front (``StandardScaler`` =
``ai.onnx.ml.Scaler``, or Sub/Div/Mul/Add with constant per-feature operands, Cast-to-float, Identity),
reads centroids / support vectors / dual coefficients / gamma / rho from the nodes and emits a NEW
model made of default-domain (ai.onnx, opset 17) operators only, so that it runs on the CUDA EP.
All arithmetic inside the emitted graph runs in float64 (the parameters are the float32 values stored
in the skl2onnx graph); the outputs are float32 (labels int64).

Outputs (in this order; see docs/neuralized.md):

k-means   ``label`` int64 [N] (= predict), ``scores`` float32 [N, K] (= transform: Euclidean distances,
          the skl2onnx output, unchanged), ``relevance`` float32 [N, D], ``explained_score`` float32 [N]
          (f_c of the explained cluster; sum of relevance), ``explained_target`` int64 [N] (c).
OCSVM     ``label`` int64 [N] (= predict, +1 inlier / -1 outlier), ``scores`` float32 [N, 1]
          (= decision_function, skl2onnx output), ``relevance``, ``explained_score`` [N] (= o(x)),
          ``score_samples`` float32 [N] (= score_samples).
SVC       ``label`` int64 [N] (= predict), ``decision_function`` float32 [N] (replaces skl2onnx's
          probability / ZipMap output, which needs ai.onnx.ml), ``relevance``, ``explained_score`` [N]
          (= ±(o_-(x) - o_+(x)), see below), ``explained_target`` int64 [N] (class index 0/1 explained).

The heads are reusable inside a larger graph (deep features + k-means head, ...):
:func:`emit_kmeans_head`, :func:`emit_ocsvm_head`, :func:`emit_svc_head` append nodes to a
``xcompile.backward.builder.Builder`` given the name of a float32 [N, D] feature tensor and return a
:class:`NeuralizedHead` with the tensor names of the explained score and of the relevance on the features.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from xcompile.backward.builder import Builder
from xcompile.errors import XCompileError
from xcompile.methods.base import Method, register

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
    """NEON k-means head (SPEC §3.4) on the float32 [N, D] tensor ``features``.

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


# ============================================================================ graph recognition
def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _nname(node, idx) -> str:
    return node.name or f"#{idx}"


def _unsupported(node, idx, why: str = "") -> XCompileError:
    dom = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
    extra = f", {why}" if why else ""
    return XCompileError(f"node '{_nname(node, idx)}' ({dom}{node.op_type}{extra}) is not supported by "
                         f"--method neuralized; {SUPPORTED}")


class _Recognized:
    def __init__(self):
        self.kind = None
        self.params = {}
        self.scale = None   # affine preprocessing x_s = x * A + B
        self.shift = None


def _const_value(name, inits, consts):
    if name in inits:
        return numpy_helper.to_array(inits[name])
    if name in consts:
        return consts[name]
    return None


def _check_allowed(rest, model_idx, allowed):
    for i2, n2 in rest:
        if i2 != model_idx and n2.op_type not in allowed:
            raise _unsupported(n2, i2)


def _recognize(model: onnx.ModelProto) -> tuple[_Recognized, onnx.ValueInfoProto]:
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    data_inputs = [i for i in g.input if i.name not in inits]
    if len(data_inputs) != 1:
        raise XCompileError(f"neuralized: expected exactly one data input, found {len(data_inputs)} "
                            f"({', '.join(i.name for i in data_inputs)})")
    x_in = data_inputs[0]
    tt = x_in.type.tensor_type
    if tt.elem_type != _F:
        raise XCompileError(f"neuralized: input '{x_in.name}' must be float32 (got "
                            f"{TensorProto.DataType.Name(tt.elem_type)}); convert with a float32 initial type")
    dims = tt.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise XCompileError(f"neuralized: input '{x_in.name}' must have shape [N, D] with fixed D")
    D = dims[1].dim_value
    nodes = list(g.node)
    consts = {}
    for n in nodes:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            a = _attrs(n)
            if "value" in a:
                consts[n.output[0]] = numpy_helper.to_array(a["value"])

    consumers = {}
    for idx, n in enumerate(nodes):
        for i in n.input:
            consumers.setdefault(i, []).append((idx, n))

    rec = _Recognized()
    A = np.ones(D, np.float64)
    B = np.zeros(D, np.float64)
    used = set(i for i, n in enumerate(nodes) if n.op_type == "Constant")
    t = x_in.name
    # ---- affine preprocessing chain
    while True:
        cons = consumers.get(t, [])
        if len(cons) != 1:
            break
        idx, n = cons[0]
        if n.domain == "ai.onnx.ml" and n.op_type == "Scaler":
            a = _attrs(n)
            off = np.broadcast_to(np.asarray(a.get("offset", [0.0]), np.float64), (D,))
            sc = np.broadcast_to(np.asarray(a.get("scale", [1.0]), np.float64), (D,))
            A, B = A * sc, (B - off) * sc
        elif n.domain in ("", "ai.onnx") and n.op_type in ("Sub", "Div", "Mul", "Add") and len(n.input) == 2:
            other = n.input[1] if n.input[0] == t else n.input[0]
            v = _const_value(other, inits, consts)
            if v is None or v.size not in (1, D) or (n.op_type in ("Sub", "Div") and n.input[0] != t):
                break
            v = np.broadcast_to(v.astype(np.float64).reshape(-1), (D,))
            if n.op_type == "Sub":
                B = B - v
            elif n.op_type == "Add":
                B = B + v
            elif n.op_type == "Mul":
                A, B = A * v, B * v
            else:
                A, B = A / v, B / v
        elif n.domain in ("", "ai.onnx") and (n.op_type == "Identity" or
                                              (n.op_type == "Cast" and _attrs(n).get("to") == _F)):
            pass
        else:
            break
        used.add(idx)
        t = n.output[0]
    if not (np.allclose(A, 1.0) and np.allclose(B, 0.0)):
        rec.scale, rec.shift = A, B
    feat = t

    # ---- the model node(s)
    rest = [(i, n) for i, n in enumerate(nodes) if i not in used]
    ml = [(i, n) for i, n in rest if n.domain == "ai.onnx.ml"]
    svm_c = [(i, n) for i, n in ml if n.op_type == "SVMClassifier"]
    svm_r = [(i, n) for i, n in ml if n.op_type == "SVMRegressor"]
    if svm_c or svm_r:
        kind_nodes = svm_c or svm_r
        idx, n = kind_nodes[0]
        allowed = {"Cast", "Sign", "Identity", "ZipMap", "Mul", "Neg", "Less", "Reshape"}
        if n.input[0] != feat:
            raise _unsupported(n, idx, "input is not the (preprocessed) data input")
        a = _attrs(n)
        kernel = a.get("kernel_type", b"LINEAR")
        kernel = kernel.decode() if isinstance(kernel, bytes) else str(kernel)
        if kernel != "RBF":
            raise _unsupported(n, idx, f"kernel_type={kernel}")
        gamma = float(np.float32(a["kernel_params"][0]))
        sv = np.asarray(a["support_vectors"], np.float64)
        coef = np.asarray(a["coefficients"], np.float64)
        rho = np.asarray(a["rho"], np.float64)
        if sv.size % D:
            raise _unsupported(n, idx, "support_vectors do not match the input width")
        sv = sv.reshape(-1, D)
        if gamma <= 0:
            raise _unsupported(n, idx, f"gamma={gamma}")
        if svm_c:
            labels = a.get("classlabels_ints")
            if not labels or len(labels) != 2:
                nl = len(labels) if labels else len(a.get("classlabels_strings", []))
                why = "string class labels" if not labels and nl == 2 else f"{nl} classes (multi-class)"
                raise _unsupported(n, idx, why)
            vpc = list(a["vectors_per_class"])
            if coef.size != sv.shape[0] or rho.size != 1:
                raise _unsupported(n, idx, "unexpected coefficient layout")
            # skl2onnx stores -dual_coef_ and -intercept_ for binary SVC: decision = -(Σ c_j k_j + ρ)
            dual = -coef
            n0 = vpc[0]
            neg_sv, neg_a = sv[:n0], -dual[:n0]
            pos_sv, pos_a = sv[n0:], dual[n0:]
            if np.any(neg_a < 0) or np.any(pos_a < 0):
                raise _unsupported(n, idx, "dual coefficient signs do not match vectors_per_class")
            kn, kp = neg_a > 0, pos_a > 0
            if not kn.any() or not kp.any():
                raise _unsupported(n, idx, "a class without support vectors")
            _check_allowed(rest, idx, allowed)
            rec.kind = "svc"
            rec.params = dict(sv_neg=neg_sv[kn], a_neg=neg_a[kn], sv_pos=pos_sv[kp], a_pos=pos_a[kp],
                              gamma=gamma, intercept=float(-rho[0]), classlabels=tuple(int(v) for v in labels))
        else:
            signs = [n2 for _, n2 in rest if n2.op_type == "Sign"]
            if not signs or np.any(coef <= 0) or rho.size != 1 or coef.size != sv.shape[0]:
                raise _unsupported(n, idx, "an SVR (regression), not a OneClassSVM")
            _check_allowed(rest, idx, allowed)
            rec.kind = "ocsvm"
            rec.params = dict(support_vectors=sv, alphas=coef, gamma=gamma, rho=float(rho[0]))
        return rec, x_in
    for i, n in ml:
        raise _unsupported(n, i)
    # k-means: ReduceSumSquare / Mul / Gemm / Add / ArgMin / Sqrt
    allowed = {"ReduceSumSquare", "Mul", "Gemm", "Add", "ArgMin", "Sqrt", "Identity", "Cast"}
    for i, n in rest:
        if n.op_type not in allowed:
            raise _unsupported(n, i)
    gemms = [(i, n) for i, n in rest if n.op_type == "Gemm" and n.input[0] == feat]
    if not gemms or not any(n.op_type == "ArgMin" for _, n in rest):
        what = rest[0] if rest else None
        if what is None:
            raise XCompileError(f"neuralized: the graph contains no model node; {SUPPORTED}")
        raise _unsupported(what[1], what[0], "no KMeans pattern (Gemm with centroids + ArgMin) found")
    gi, gn = gemms[0]
    Bv = _const_value(gn.input[1], inits, consts)
    ga = _attrs(gn)
    if Bv is None or Bv.ndim != 2 or abs(float(ga.get("alpha", 1.0)) + 2.0) > 1e-6:
        raise _unsupported(gn, gi, "not the skl2onnx KMeans distance Gemm")
    Mc = Bv if ga.get("transB", 0) else Bv.T
    if Mc.shape[1] != D or Mc.shape[0] < 2:
        raise _unsupported(gn, gi, f"centroid matrix of shape {list(Mc.shape)}")
    rec.kind = "kmeans"
    rec.params = dict(centroids=Mc.astype(np.float64))
    return rec, x_in


# ============================================================================ β from data
def _kmeans_beta_from_data(M: np.ndarray, Z: np.ndarray) -> float:
    d = ((Z[:, None, :] - M[None, :, :]) ** 2).sum(-1)
    d.sort(axis=1)
    f = d[:, 1] - d[:, 0]
    m = float(f.mean())
    if not np.isfinite(m) or m <= 0:
        raise XCompileError("neuralized: option 'data' gives mean f = 0, cannot derive beta; pass --set beta=...")
    return 1.0 / m


def _load_data(data, D):
    if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__"):
        try:
            data = np.load(data)
        except Exception as exc:  # noqa: BLE001
            raise XCompileError(f"neuralized: cannot read option 'data' file {data!s}: {exc}") from None
    arr = np.asarray(data, np.float64)
    if arr.ndim != 2 or arr.shape[1] != D:
        raise XCompileError(f"neuralized: option 'data' must have shape [M, {D}], got {list(arr.shape)}")
    return arr


# ============================================================================ public entry point
def compile_neuralized(model: onnx.ModelProto, *, target=None, beta=None, data=None, epsilon=1e-9,
                       **unknown) -> onnx.ModelProto:
    """Compile an skl2onnx KMeans / OneClassSVM / binary SVC graph (optionally behind a scaler) into a
    pure ai.onnx explainer. Options: ``target`` (k-means: cluster explained where the runtime ``target``
    input is -1; SVC: class index 0/1), ``beta`` (k-means softmin sharpness), ``data`` ([M, D] array or
    .npy path of raw inputs: β = 1/mean f), ``epsilon`` (stabilizer). Raises XCompileError (one line)."""
    if unknown:
        raise XCompileError(f"neuralized: unknown option(s) {', '.join(sorted(unknown))}; "
                            "known: target, beta, data, epsilon")
    try:
        epsilon = float(epsilon)
        beta = None if beta is None else float(beta)
        target = None if target is None else int(target)
    except (TypeError, ValueError) as exc:
        raise XCompileError(f"neuralized: bad option value ({exc})") from None
    if beta is not None and not (np.isfinite(beta) and beta > 0):
        raise XCompileError(f"neuralized: option beta must be > 0, got {beta}")
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise XCompileError(f"neuralized: option epsilon must be >= 0, got {epsilon}")

    rec, x_in = _recognize(model)
    xname = x_in.name
    D = x_in.type.tensor_type.shape.dim[1].dim_value
    orig_outs = list(model.graph.output)
    label_name = next((o.name for o in orig_outs if o.type.tensor_type.elem_type == _I64), "label")
    score_name = next((o.name for o in orig_outs if o.type.tensor_type.elem_type == _F), "scores")

    reserved = {xname, "target", "relevance", "explained_score", "explained_target", "score_samples",
                "decision_function", label_name, score_name}
    b = Builder(OPSET, PREFIX, reserved=reserved)
    feat = xname
    if rec.scale is not None:
        with b.scope("preprocess"):
            feat = b.add(b.mul(xname, b.f32(rec.scale.astype(np.float32)), "scaled"),
                         b.f32(rec.shift.astype(np.float32)), "shifted")
            # float32 affine; identical rounding to ai.onnx.ml.Scaler's (x - offset) * scale is not
            # guaranteed, the difference is within float32 epsilon.
    outputs = []  # (tensor, name, elem_type, shape)
    if rec.kind == "kmeans":
        M = rec.params["centroids"]
        K = M.shape[0]
        if target is not None and not 0 <= target < K:
            raise XCompileError(f"neuralized: option target={target} out of range for {K} clusters")
        if beta is None and data is not None:
            Z = _load_data(data, D)
            if rec.scale is not None:
                Z = Z * rec.scale + rec.shift
            beta = _kmeans_beta_from_data(M, Z)
        elif data is not None:
            _load_data(data, D)
        head = emit_kmeans_head(b, feat, M, target="target", default_target=target, beta=beta, epsilon=epsilon)
        outputs = [(head.label, label_name, _I64, ["N"]), (head.extra["distances"], score_name, _F, ["N", K]),
                   (head.relevance, "relevance", _F, ["N", D]), (head.score, "explained_score", _F, ["N"]),
                   (head.target, "explained_target", _I64, ["N"])]
    elif rec.kind == "ocsvm":
        if target is not None or beta is not None:
            raise XCompileError("neuralized: options target/beta do not apply to a OneClassSVM")
        head = emit_ocsvm_head(b, feat, epsilon=epsilon, **rec.params)
        outputs = [(head.label, label_name, _I64, ["N"]), (head.extra["decision"], score_name, _F, ["N", 1]),
                   (head.relevance, "relevance", _F, ["N", D]), (head.score, "explained_score", _F, ["N"]),
                   (head.extra["score_samples"], "score_samples", _F, ["N"])]
    else:
        if beta is not None:
            raise XCompileError("neuralized: option beta does not apply to an SVC")
        if target is not None and target not in (0, 1):
            raise XCompileError(f"neuralized: option target={target} must be a class index 0 or 1 for a binary SVC")
        tgt = "target"
        if target is not None:
            with b.scope("svc"):
                tgt = b.where(b.op("Less", ["target", _c(b, 0, dtype=np.int64)], "target_is_default"),
                              b.add(b.mul("target", _c(b, 0, dtype=np.int64), "zero_i64"),
                                    _c(b, target, dtype=np.int64), "default_target"), "target", "target_resolved")
        head = emit_svc_head(b, feat, target=tgt, epsilon=epsilon, **rec.params)
        outputs = [(head.label, label_name, _I64, ["N"]), (head.extra["decision"], "decision_function", _F, ["N"]),
                   (head.relevance, "relevance", _F, ["N", D]), (head.score, "explained_score", _F, ["N"]),
                   (head.target, "explained_target", _I64, ["N"])]

    nodes = list(b.nodes)
    outs_vi = []
    for src, name, et, shape in outputs:
        nodes.append(helper.make_node("Identity", [src], [name], name=f"{PREFIX}/output/{name}"))
        outs_vi.append(helper.make_tensor_value_info(name, et, shape))
    inputs = [helper.make_tensor_value_info(xname, _F, ["N", D]),
              helper.make_tensor_value_info("target", _I64, ["N"])]
    graph = helper.make_graph(nodes, f"xcompile_neuralized_{rec.kind}", inputs, outs_vi, initializer=b.initializers)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="xcompile",
                          ir_version=IR_VERSION)
    m.doc_string = (f"xcompile neuralized {rec.kind} explainer (SPEC 3.4); epsilon={epsilon:g}"
                    + ("" if rec.kind != "kmeans" else
                       f"; beta={'1/mean f over the batch' if beta is None else repr(float(beta))}"))
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as exc:  # pragma: no cover - an internal bug, reported in one line
        raise XCompileError(f"neuralized: emitted graph failed the ONNX checker: {str(exc).splitlines()[0]}") from None
    return m


@register
class Neuralized(Method):
    """Registry entry: scikit-learn models are rebuilt as a whole (no forward graph to walk)."""
    name = "neuralized"
    seed = "score"
    summary = "NEON k-means / one-class SVM / RBF SVC relevance for skl2onnx models"

    @classmethod
    def compile_model(cls, model, rules=None, where="model", **params):
        if rules is not None:
            raise XCompileError(f"{where}: --rules is not used by --method neuralized on a scikit-learn model")
        from ..load.loader import read_model
        return compile_neuralized(read_model(model), **params)
