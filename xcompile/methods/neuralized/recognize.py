"""Recognize an skl2onnx graph: KMeans / MiniBatchKMeans, OneClassSVM(rbf), binary SVC(rbf), optionally behind the
affine preprocessing of a Pipeline (StandardScaler = ai.onnx.ml.Scaler, or Sub/Div/Mul/Add with constants, Cast,
Identity). Reads the parameters out of the nodes; raises one line naming the node it cannot read."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ...errors import XCompileError
from ...graph import attrs as _attrs
from .heads import _F, SUPPORTED


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
