"""scikit-learn pipelines as skl2onnx writes them with default options (int64 label first, ZipMap, ai.onnx.ml Scaler /
Imputer / ArrayFeatureExtractor / LinearClassifier): the probabilities output chosen, relevance per input feature
against analytic gradients of the raw decision function (docs/tabular.md)."""
import warnings

import numpy as np
import onnxruntime as ort
import pytest

from xcompile.compiler import compile as xc

skl2onnx = pytest.importorskip("skl2onnx")
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_iris  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def to_onnx(m, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skl2onnx.to_onnx(m, X[:1])


def run(model, method, x, target, **kw):
    e = xc(model, method, **kw)
    s = ort.InferenceSession(e.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, {"X": x, "target": np.asarray(target, np.int64)}))), e


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return X.astype(np.float32), y


def test_logistic_pipeline_multiclass_gradient_family(iris):
    X, y = iris
    m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    o = to_onnx(m, X)
    assert o.graph.output[0].name == "output_label"  # label first: never explained
    sc, lr = m[0], m[1]
    x = X[::30]
    W = lr.coef_ / sc.scale_  # d raw_c / d x = coef_c / scale
    for method in ("gradient", "input_x_gradient", "integrated_gradients", "deeplift", "occlusion"):
        out, e = run(o, method, x, np.full(len(x), -1), **({"baseline": 0} if method == "integrated_gradients" else {}))
        assert e.graph.output[0].name == "output_probability"
        # ai.onnx.ml only in the forward (and in the forward copies that IG, DeepLIFT, occlusion evaluate)
        fwd = {n.name for n in o.graph.node if n.domain == "ai.onnx.ml" and n.op_type != "ZipMap"}
        ml = {n.name for n in e.graph.node if n.domain == "ai.onnx.ml"}
        assert {m.split("/")[-1] for m in ml} == fwd
        if method in ("gradient", "input_x_gradient"):
            assert ml == fwd
        cls = out["explained_class"]
        np.testing.assert_array_equal(cls, m.predict(x))
        np.testing.assert_allclose(out["output_probability"], m.predict_proba(x), atol=1e-5)
        g = W[cls]
        ref = {"gradient": g, "input_x_gradient": g * x}.get(method, g * x)  # linear in x: IG/DeepLIFT (baseline 0),
        if method == "occlusion":                                           # occlusion (fill 0) = x * grad
            ref = g * x
        err = np.abs(out["relevance"] - ref).max() / np.abs(ref).max()
        assert err < 1e-4, (method, err)


def test_logistic_pipeline_binary_lrp_epsilon():
    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)[:, :6]
    m = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    x = X[::100]
    for t, sign in ((1, 1.0), (0, -1.0)):
        out, _ = run(to_onnx(m, X), "lrp", x, np.full(len(x), t), rules="epsilon")
        # LRP-epsilon on one linear layer over the standardized features z, seeded with the explained score +-raw:
        # R_i = +-z_i w_i raw / (raw + eps sign(raw)); the Scaler passes relevance feature by feature
        z = (x - m[0].mean_) / m[0].scale_
        raw = z @ m[1].coef_[0] + m[1].intercept_[0]
        ref = sign * z * m[1].coef_[0] * (raw / (raw + 1e-6 * np.sign(raw)))[:, None]
        err = np.abs(out["relevance"] - ref).max() / np.abs(ref).max()
        assert err < 1e-4, (t, err)
        assert list(out["explained_class"]) == [t] * len(x)


def test_mlp_pipeline_against_numpy_gradient(iris):
    X, y = iris
    m = make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=300, random_state=0)).fit(X, y)
    x = X[::25]
    out, _ = run(to_onnx(m, X), "gradient", x, np.full(len(x), -1))
    sc, mlp = m[0], m[1]
    z = (x - sc.mean_) / sc.scale_
    h = z @ mlp.coefs_[0] + mlp.intercepts_[0]
    cls = out["explained_class"]
    np.testing.assert_array_equal(cls, m.predict(x))
    # logits' gradient (the trailing Softmax skipped): W2[:, c] through the ReLU and W1, then 1 / scale
    ref = ((mlp.coefs_[1][:, cls].T * (h > 0)) @ mlp.coefs_[0].T) / sc.scale_
    assert np.abs(out["relevance"] - ref).max() / np.abs(ref).max() < 1e-4


def test_column_transformer_with_imputation(iris):
    X, y = iris
    Xn = X.copy()
    Xn[::7, 1] = np.nan
    ct = ColumnTransformer([("a", make_pipeline(SimpleImputer(), StandardScaler()), [0, 1]), ("b", StandardScaler(), [2, 3])])
    m = make_pipeline(ct, LogisticRegression(max_iter=500)).fit(Xn, y)
    x = Xn[::21]
    out, _ = run(to_onnx(m, Xn), "gradient", x, np.full(len(x), 2))
    scale = np.concatenate([ct.named_transformers_["a"][1].scale_, ct.named_transformers_["b"].scale_])
    ref = np.tile(m[1].coef_[2] / scale, (len(x), 1))
    ref[np.isnan(x)] = 0.0  # an imputed value does not depend on the input
    assert np.isnan(x).any()
    np.testing.assert_allclose(out["relevance"], ref, rtol=1e-4, atol=1e-6)


def test_svc_pipeline_points_to_neuralized():
    from sklearn.svm import SVC

    from xcompile.errors import XCompileError
    X, y = load_breast_cancer(return_X_y=True)
    X = X.astype(np.float32)[:, :5]
    o = to_onnx(make_pipeline(StandardScaler(), SVC()).fit(X, y), X)
    with pytest.raises(XCompileError, match="SVMClassifier.*--method neuralized"):
        xc(o, "gradient")
    assert xc(o, "neuralized") is not None


def test_mlp_pipeline_deeplift_and_lrp(iris):
    """DeepLIFT (rescale, baseline x' = 0 in input units) against a numpy reference of the standardized MLP; LRP-epsilon
    conserves the logit up to the biases' share."""
    X, y = iris
    m = make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=300, random_state=0)).fit(X, y)
    sc, mlp = m[0], m[1]
    x = X[::25]
    out, _ = run(to_onnx(m, X), "deeplift", x, np.full(len(x), 1))
    W1, b1, W2 = mlp.coefs_[0], mlp.intercepts_[0], mlp.coefs_[1]
    z, z0 = (x - sc.mean_) / sc.scale_, (0 - sc.mean_) / sc.scale_
    h, h0 = z @ W1 + b1, z0 @ W1 + b1
    dh = h - h0
    mult = np.where(np.abs(dh) > 1e-9, (np.maximum(h, 0) - np.maximum(h0, 0)) / np.where(dh == 0, 1, dh), h > 0)
    ref = ((W2[:, 1] * mult) @ W1.T) * (z - z0)
    assert np.abs(out["relevance"] - ref).max() / np.abs(ref).max() < 1e-4
    out, _ = run(to_onnx(m, X), "lrp", x, np.full(len(x), -1), rules="epsilon")
    assert np.isfinite(out["relevance"]).all() and np.isfinite(out["conservation"]).all()


def _ml_graph(norm):
    """X [N, 4] -> ArrayFeatureExtractor([2, 0]) and Normalizer(norm) and Binarizer -> FeatureVectorizer -> Scaler ->
    LinearRegressor: every differentiable ai.onnx.ml preprocessing op on one path, a non-differentiable one beside."""
    from onnx import TensorProto, helper
    ml = "ai.onnx.ml"
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("ArrayFeatureExtractor", ["X", "idx"], ["a"], domain=ml),
        helper.make_node("Normalizer", ["X"], ["n"], domain=ml, norm=norm),
        helper.make_node("Binarizer", ["X"], ["bin"], domain=ml, threshold=0.5),
        helper.make_node("FeatureVectorizer", ["a", "n", "bin"], ["f"], domain=ml, inputdimensions=[2, 4, 4]),
        helper.make_node("Scaler", ["f"], ["s"], domain=ml, offset=rng.normal(size=10).tolist(),
                         scale=rng.uniform(0.5, 2, 10).tolist()),
        helper.make_node("LinearRegressor", ["s"], ["y"], domain=ml, coefficients=rng.normal(size=10).tolist(),
                         intercepts=[0.3]),
    ]
    g = helper.make_graph(nodes, "ml", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                          [helper.make_tensor("idx", TensorProto.INT64, [2], [2, 0])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ml, 1)], ir_version=8)


@pytest.mark.parametrize("norm", ["L1", "L2", "MAX"])
def test_ml_preprocessing_ops_against_finite_differences(norm):
    m = _ml_graph(norm)
    x = np.random.default_rng(1).uniform(0.6, 2.0, (3, 4)).astype(np.float32)  # away from the Binarizer's threshold
    x[1, 3] = 2.5  # a unique MAX per row
    out, e = run(m, "gradient", x, np.full(3, -1))
    assert list(out["explained_class"]) == [1, 1, 1]  # one output: the logit view, target -1 = the output itself
    f = ort.InferenceSession(m.SerializeToString())
    xd = x.astype(np.float64)
    fd = np.zeros_like(xd)
    for i in range(4):
        h = np.zeros(4)
        h[i] = 1e-3
        up = f.run(None, {"X": (xd + h).astype(np.float32)})[0][:, 0].astype(np.float64)
        down = f.run(None, {"X": (xd - h).astype(np.float32)})[0][:, 0].astype(np.float64)
        fd[:, i] = (up - down) / 2e-3
    assert np.abs(out["relevance"] - fd).max() / np.abs(fd).max() < 2e-3
    assert {n.domain for n in e.graph.node if n.name.startswith("xc/")} == {""}
