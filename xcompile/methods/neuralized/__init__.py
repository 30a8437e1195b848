"""Neuralized scikit-learn models (NEON: Kauffmann et al., "From clustering to cluster explanations via neural
networks", 2020, and "Towards explaining anomalies", 2020; docs/neuralized.md).

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
import numpy as np
import onnx
from onnx import helper

from ...backward.builder import Builder
from ...errors import XCompileError
from ...graph import RELEVANCE, TARGET
from ...write.writer import check
from ..base import Method, register
from .heads import (  # noqa: F401
    _D,
    _F,
    _I64,
    IR_VERSION,
    OPSET,
    PREFIX,
    SUPPORTED,
    NeuralizedHead,
    _c,
    emit_kmeans_head,
    emit_ocsvm_head,
    emit_svc_head,
)
from .recognize import _recognize

__all__ = ["compile_neuralized", "emit_kmeans_head", "emit_ocsvm_head", "emit_svc_head", "NeuralizedHead",
           "Neuralized"]


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

    reserved = {xname, TARGET, RELEVANCE, "explained_score", "explained_target", "score_samples",
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
        head = emit_kmeans_head(b, feat, M, target=TARGET, default_target=target, beta=beta, epsilon=epsilon)
        outputs = [(head.label, label_name, _I64, ["N"]), (head.extra["distances"], score_name, _F, ["N", K]),
                   (head.relevance, RELEVANCE, _F, ["N", D]), (head.score, "explained_score", _F, ["N"]),
                   (head.target, "explained_target", _I64, ["N"])]
    elif rec.kind == "ocsvm":
        if target is not None or beta is not None:
            raise XCompileError("neuralized: options target/beta do not apply to a OneClassSVM")
        head = emit_ocsvm_head(b, feat, epsilon=epsilon, **rec.params)
        outputs = [(head.label, label_name, _I64, ["N"]), (head.extra["decision"], score_name, _F, ["N", 1]),
                   (head.relevance, RELEVANCE, _F, ["N", D]), (head.score, "explained_score", _F, ["N"]),
                   (head.extra["score_samples"], "score_samples", _F, ["N"])]
    else:
        if beta is not None:
            raise XCompileError("neuralized: option beta does not apply to an SVC")
        if target is not None and target not in (0, 1):
            raise XCompileError(f"neuralized: option target={target} must be a class index 0 or 1 for a binary SVC")
        tgt = TARGET
        if target is not None:
            with b.scope("svc"):
                tgt = b.where(b.op("Less", [TARGET, _c(b, 0, dtype=np.int64)], "target_is_default"),
                              b.add(b.mul(TARGET, _c(b, 0, dtype=np.int64), "zero_i64"),
                                    _c(b, target, dtype=np.int64), "default_target"), TARGET, "target_resolved")
        head = emit_svc_head(b, feat, target=tgt, epsilon=epsilon, **rec.params)
        outputs = [(head.label, label_name, _I64, ["N"]), (head.extra["decision"], "decision_function", _F, ["N"]),
                   (head.relevance, RELEVANCE, _F, ["N", D]), (head.score, "explained_score", _F, ["N"]),
                   (head.target, "explained_target", _I64, ["N"])]

    nodes = list(b.nodes)
    outs_vi = []
    for src, name, et, shape in outputs:
        nodes.append(helper.make_node("Identity", [src], [name], name=f"{PREFIX}/output/{name}"))
        outs_vi.append(helper.make_tensor_value_info(name, et, shape))
    inputs = [helper.make_tensor_value_info(xname, _F, ["N", D]),
              helper.make_tensor_value_info(TARGET, _I64, ["N"])]
    graph = helper.make_graph(nodes, f"xcompile_neuralized_{rec.kind}", inputs, outs_vi, initializer=b.initializers)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="xcompile",
                          ir_version=IR_VERSION)
    m.doc_string = (f"xcompile neuralized {rec.kind} explainer (docs/neuralized.md); epsilon={epsilon:g}"
                    + ("" if rec.kind != "kmeans" else
                       f"; beta={'1/mean f over the batch' if beta is None else repr(float(beta))}"))
    return check(m, "neuralized")


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
        from ...load.loader import read_model
        return compile_neuralized(read_model(model), **params)
