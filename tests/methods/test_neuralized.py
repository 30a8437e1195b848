"""Neuralized scikit-learn models (issue 5; docs/neuralized.md).

Forward outputs are compared with scikit-learn; relevance with an independent numpy reference written
straight from the formulas of docs/neuralized.md (loops over clusters / support vectors, sklearn's own float64
parameters, no code shared with xcompile). Relative errors are norm-wise per batch:
max|a - b| / max|b| (element-wise relative error is meaningless for values that cross zero, e.g. a
decision function near the boundary or a pixel with no relevance).
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

from skl2onnx import to_onnx  # noqa: E402
from sklearn.cluster import KMeans, MiniBatchKMeans  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC, SVR, OneClassSVM  # noqa: E402

from xcompile.errors import XCompileError  # noqa: E402
from xcompile.methods.neuralized import compile_neuralized  # noqa: E402

warnings.filterwarnings("ignore", category=UserWarning)
TOL = 1e-5


# ----------------------------------------------------------------------------- helpers
def rel(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def run(m: onnx.ModelProto, X, target=None):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    t = np.full(len(X), -1, np.int64) if target is None else np.asarray(target, np.int64)
    name = sess.get_inputs()[0].name
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {name: X, "target": t})))


def blobs(seed, n, d, k):
    rng = np.random.RandomState(seed)
    centers = rng.randn(k, d) * 3
    X = centers[rng.randint(k, size=n)] + rng.randn(n, d)
    return X.astype(np.float32), rng


def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


# ----------------------------------------------------------------------------- references (docs/neuralized.md)
def ref_kmeans(X, mu, c, beta, eps=1e-9):
    """NEON k-means. X [N,D] (the model's feature space), mu [K,D], c [N] explained cluster."""
    X = X.astype(np.float64)
    N, D = X.shape
    K = mu.shape[0]
    f_out = np.zeros(N)
    R_out = np.zeros((N, D))
    for n in range(N):
        x, cc = X[n], c[n]
        ks = [k for k in range(K) if k != cc]
        w = {k: 2 * (mu[cc] - mu[k]) for k in ks}
        bb = {k: mu[k] @ mu[k] - mu[cc] @ mu[cc] for k in ks}
        h = np.array([w[k] @ x + bb[k] for k in ks])
        f = h.min()
        e = np.exp(-beta * (h - h.min()))
        Rk = e / e.sum() * f
        R = np.zeros(D)
        for j, k in enumerate(ks):
            m = (mu[cc] + mu[k]) / 2
            R += (x - m) * w[k] / stab(h[j], eps) * Rk[j]
        f_out[n], R_out[n] = f, R
    return f_out, R_out


def kmeans_assigned_f(X, mu):
    d = ((X.astype(np.float64)[:, None, :] - mu[None]) ** 2).sum(-1)
    d.sort(1)
    return d[:, 1] - d[:, 0]


def ref_rbf_pool(X, U, alpha, gamma, eps=1e-9):
    """One-class SVM: o(x) = -(1/γ) log Σ ᾱ_j exp(-γ‖x-u_j‖²), p = softmax(-γd + log ᾱ), R_j = p_j o,
    R_i = Σ_j (x_i-u_ij)² / (d_j + ε) R_j."""
    X = X.astype(np.float64)
    ab = alpha / alpha.sum()
    o_out, R_out = np.zeros(len(X)), np.zeros(X.shape)
    for n, x in enumerate(X):
        sq = (x[None, :] - U) ** 2            # [J, D]
        d = sq.sum(1)
        z = -gamma * d + np.log(ab)
        zmax = z.max()
        o = -(np.log(np.exp(z - zmax).sum()) + zmax) / gamma
        p = np.exp(z - zmax) / np.exp(z - zmax).sum()
        Rj = p * o
        o_out[n] = o
        R_out[n] = (sq / (d + eps)[:, None] * Rj[:, None]).sum(0)
    return o_out, R_out


def ml_nodes(m):
    return [n for n in m.graph.node if n.domain not in ("", "ai.onnx")]


def check_model_hygiene(m):
    assert not ml_nodes(m)
    assert all(op.domain in ("", "ai.onnx") for op in m.opset_import)
    onnx.checker.check_model(m, full_check=True)
    assert all(n.name.startswith("xc/neuralized/") for n in m.graph.node)
    assert [i.name for i in m.graph.input][1] == "target"
    assert "relevance" in [o.name for o in m.graph.output]


# ----------------------------------------------------------------------------- k-means
@pytest.mark.parametrize("seed,k,d,cls", [(0, 3, 4, KMeans), (1, 7, 16, KMeans), (2, 10, 32, KMeans),
                                          (3, 5, 8, MiniBatchKMeans)])
def test_kmeans_forward_relevance_conservation(seed, k, d, cls):
    X, rng = blobs(seed, 300, d, k)
    km = cls(n_clusters=k, n_init=1, random_state=seed).fit(X)
    Xt = (X[:60] + rng.randn(60, d).astype(np.float32) * 0.5).astype(np.float32)
    mu = km.cluster_centers_.astype(np.float64)
    m = compile_neuralized(to_onnx(km, X[:1]))
    check_model_hygiene(m)
    out = run(m, Xt)
    assert [o.name for o in m.graph.output][:3] == ["label", "scores", "relevance"]
    np.testing.assert_array_equal(out["label"], km.predict(Xt))
    assert rel(out["scores"], km.transform(Xt)) < TOL
    c = km.predict(Xt)
    np.testing.assert_array_equal(out["explained_target"], c)
    beta = 1.0 / kmeans_assigned_f(Xt, mu).mean()        # default: 1/mean f over the batch
    f_ref, R_ref = ref_kmeans(Xt, mu, c, beta)
    assert rel(out["explained_score"], f_ref) < TOL
    assert rel(out["relevance"], R_ref) < TOL
    assert rel(out["relevance"].sum(1), out["explained_score"]) < TOL     # Σ_i R_i = f_c
    assert (out["explained_score"] >= 0).all()

    # a chosen cluster per row (target input), fixed beta
    tgt = rng.randint(k, size=len(Xt))
    tgt[::3] = -1
    m2 = compile_neuralized(to_onnx(km, X[:1]), beta=0.7)
    out2 = run(m2, Xt, tgt)
    c2 = np.where(tgt < 0, c, tgt)
    f2, R2 = ref_kmeans(Xt, mu, c2, 0.7)
    np.testing.assert_array_equal(out2["explained_target"], c2)
    assert rel(out2["explained_score"], f2) < TOL
    assert rel(out2["relevance"], R2) < TOL
    assert rel(out2["relevance"].sum(1), out2["explained_score"]) < TOL


def test_kmeans_beta_from_data_and_default_target_option():
    X, rng = blobs(5, 200, 6, 4)
    km = KMeans(4, n_init=1, random_state=0).fit(X)
    mu = km.cluster_centers_.astype(np.float64)
    m = compile_neuralized(to_onnx(km, X[:1]), data=X, target=2)
    out = run(m, X[:20])
    beta = 1.0 / kmeans_assigned_f(X, mu).mean()
    c = np.full(20, 2)
    f_ref, R_ref = ref_kmeans(X[:20], mu, c, beta)
    np.testing.assert_array_equal(out["explained_target"], c)
    assert rel(out["relevance"], R_ref) < TOL
    assert rel(out["explained_score"], f_ref) < TOL
    # a single row gives the same result as in a batch when beta is fixed by data
    one = run(m, X[3:4])
    assert rel(one["relevance"], out["relevance"][3:4]) < TOL


# ----------------------------------------------------------------------------- one-class SVM
@pytest.mark.parametrize("seed,d,gamma,nu", [(0, 4, 0.3, 0.2), (1, 16, "scale", 0.1), (2, 32, 0.02, 0.5)])
def test_ocsvm_forward_relevance_conservation(seed, d, gamma, nu):
    rng = np.random.RandomState(seed)
    X = rng.randn(300, d).astype(np.float32)
    oc = OneClassSVM(gamma=gamma, nu=nu).fit(X)
    Xt = (rng.randn(80, d) * 1.3).astype(np.float32)
    m = compile_neuralized(to_onnx(oc, X[:1]))
    check_model_hygiene(m)
    out = run(m, Xt)
    np.testing.assert_array_equal(out["label"], oc.predict(Xt))
    assert rel(out["scores"][:, 0], oc.decision_function(Xt)) < TOL
    assert rel(out["score_samples"], oc.score_samples(Xt)) < TOL
    U, alpha = oc.support_vectors_, oc.dual_coef_.ravel()
    o_ref, R_ref = ref_rbf_pool(Xt, U, alpha, oc._gamma)
    # the o(x) of docs/neuralized.md and sklearn's score_samples: score_samples = Σα · exp(-γ o(x))
    assert rel(alpha.sum() * np.exp(-oc._gamma * o_ref), oc.score_samples(Xt)) < TOL
    assert rel(out["explained_score"], o_ref) < TOL
    assert rel(out["relevance"], R_ref) < TOL
    assert rel(out["relevance"].sum(1), out["explained_score"]) < TOL   # Σ_i R_i = o(x)


# ----------------------------------------------------------------------------- SVC
@pytest.mark.parametrize("seed,d", [(0, 4), (1, 12)])
def test_svc_forward_relevance_conservation(seed, d):
    rng = np.random.RandomState(seed)
    X = rng.randn(300, d).astype(np.float32)
    y = np.where(X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.5, 7, 3)
    svc = SVC(gamma=0.2, C=2.0).fit(X, y)
    Xt = rng.randn(60, d).astype(np.float32)
    m = compile_neuralized(to_onnx(svc, X[:1]))
    check_model_hygiene(m)
    out = run(m, Xt)
    np.testing.assert_array_equal(out["output_label"], svc.predict(Xt))
    assert rel(out["decision_function"], svc.decision_function(Xt)) < TOL
    dual = svc.dual_coef_.ravel()
    n0 = svc.n_support_[0]
    U = svc.support_vectors_
    o_neg, R_neg = ref_rbf_pool(Xt, U[:n0], -dual[:n0], svc._gamma)
    o_pos, R_pos = ref_rbf_pool(Xt, U[n0:], dual[n0:], svc._gamma)
    side = np.where(svc.decision_function(Xt) > 0, 1.0, -1.0)
    np.testing.assert_array_equal(out["explained_target"], (side > 0).astype(np.int64))
    assert rel(out["explained_score"], side * (o_neg - o_pos)) < TOL
    assert rel(out["relevance"], side[:, None] * (R_neg - R_pos)) < TOL
    assert rel(out["relevance"].sum(1), out["explained_score"]) < TOL
    # target selects the class side
    out1 = run(m, Xt, np.ones(len(Xt)))
    assert rel(out1["relevance"], R_neg - R_pos) < TOL


# ----------------------------------------------------------------------------- pipelines with a scaler
def test_pipelines_with_standard_scaler():
    rng = np.random.RandomState(7)
    X = (rng.randn(300, 6) * [1, 5, 0.1, 2, 3, 10] + [0, 3, -2, 1, 0, 50]).astype(np.float32)
    Xt = X[:40] + rng.randn(40, 6).astype(np.float32) * 0.3
    # k-means
    pipe = make_pipeline(StandardScaler(), KMeans(5, n_init=1, random_state=0)).fit(X)
    m = compile_neuralized(to_onnx(pipe, X[:1]), beta=0.5)
    check_model_hygiene(m)
    out = run(m, Xt)
    sc, km = pipe[0], pipe[-1]
    Z = sc.transform(Xt.astype(np.float64))
    np.testing.assert_array_equal(out["label"], pipe.predict(Xt))
    assert rel(out["scores"], pipe.transform(Xt)) < TOL
    f_ref, R_ref = ref_kmeans(Z, km.cluster_centers_.astype(np.float64), km.predict(Z.astype(np.float32)), 0.5)
    assert out["relevance"].shape == Xt.shape                 # raw feature space, by position
    assert rel(out["relevance"], R_ref) < TOL
    assert rel(out["relevance"].sum(1), out["explained_score"]) < TOL
    # one-class SVM
    pipe = make_pipeline(StandardScaler(), OneClassSVM(nu=0.2)).fit(X)
    m = compile_neuralized(to_onnx(pipe, X[:1]))
    check_model_hygiene(m)
    out = run(m, Xt)
    oc = pipe[-1]
    np.testing.assert_array_equal(out["label"], pipe.predict(Xt))
    assert rel(out["scores"][:, 0], pipe.decision_function(Xt)) < TOL
    assert rel(out["score_samples"], pipe.score_samples(Xt)) < TOL
    o_ref, R_ref = ref_rbf_pool(pipe[0].transform(Xt.astype(np.float64)), oc.support_vectors_,
                                oc.dual_coef_.ravel(), oc._gamma)
    assert rel(out["relevance"], R_ref) < TOL
    assert rel(out["relevance"].sum(1), out["explained_score"]) < TOL
    # SVC
    y = (X[:, 0] > 0).astype(int)
    pipe = make_pipeline(StandardScaler(), SVC()).fit(X, y)
    m = compile_neuralized(to_onnx(pipe, X[:1]))
    out = run(m, Xt)
    np.testing.assert_array_equal(out["output_label"], pipe.predict(Xt))
    assert rel(out["decision_function"], pipe.decision_function(Xt)) < TOL


# ----------------------------------------------------------------------------- hygiene / errors
def test_deterministic_bytes():
    X, _ = blobs(0, 100, 5, 3)
    km = KMeans(3, n_init=1, random_state=0).fit(X)
    a = compile_neuralized(to_onnx(km, X[:1])).SerializeToString()
    b = compile_neuralized(to_onnx(km, X[:1])).SerializeToString()
    assert a == b


@pytest.mark.parametrize("make", [
    lambda X, yb, ym: SVC(kernel="poly").fit(X, yb),
    lambda X, yb, ym: RandomForestClassifier(n_estimators=2, max_depth=2, random_state=0).fit(X, yb),
    lambda X, yb, ym: SVC().fit(X, ym),                   # multi-class
    lambda X, yb, ym: SVR().fit(X, X[:, 0]),              # regression, not one-class
    lambda X, yb, ym: OneClassSVM(kernel="linear").fit(X),
], ids=["poly-svc", "random-forest", "multiclass-svc", "svr", "linear-ocsvm"])
def test_unsupported_models_raise_one_line(make):
    rng = np.random.RandomState(0)
    X = rng.randn(60, 4).astype(np.float32)
    ym = rng.randint(0, 3, size=60)
    mdl = make(X, ym % 2, ym)
    with pytest.raises(XCompileError) as ei:
        compile_neuralized(to_onnx(mdl, X[:1]))
    msg = str(ei.value)
    assert "\n" not in msg
    assert "supported:" in msg and "KMeans" in msg and "OneClassSVM" in msg
    assert "node '" in msg


def test_bad_options():
    X, _ = blobs(0, 100, 5, 3)
    onx = to_onnx(KMeans(3, n_init=1, random_state=0).fit(X), X[:1])
    for kw in ({"bogus": 1}, {"beta": "abc"}, {"beta": -1}, {"target": 9}, {"data": np.zeros((4, 3))}):
        with pytest.raises(XCompileError) as ei:
            compile_neuralized(onx, **kw)
        assert "\n" not in str(ei.value)
