"""treeshap (docs/tabular.md) against shap's TreeExplainer (path-dependent, covers counted from the same rows, raw
output), on scikit-learn (skl2onnx), LightGBM and XGBoost (onnxmltools) ensembles; the refusals; old / ml-only opsets."""
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from xcompile.compiler import compile as xc
from xcompile.errors import XCompileError

shap = pytest.importorskip("shap")
lgb = pytest.importorskip("lightgbm")
xgb = pytest.importorskip("xgboost")
skl2onnx = pytest.importorskip("skl2onnx")
onnxmltools = pytest.importorskip("onnxmltools")
from onnxmltools.convert.common.data_types import FloatTensorType  # noqa: E402
from sklearn import ensemble  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_iris  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def datasets():
    X, y = load_breast_cancer(return_X_y=True)
    Xi, yi = load_iris(return_X_y=True)
    return {"binary": (X.astype(np.float32), y), "multi": (Xi.astype(np.float32), yi)}


def convert(m, X, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "skl":
            return skl2onnx.to_onnx(m, X[:1], target_opset={"": 17, "ai.onnx.ml": 3})
        fn = onnxmltools.convert_lightgbm if kind == "lgb" else onnxmltools.convert_xgboost
        return fn(m, initial_types=[("X", FloatTensorType([None, X.shape[1]]))])


def shap_reference(m, data, rows):
    """shap per class [C, rows, F]; binary models with one raw score s: class 1 = +shap, class 0 = -shap."""
    ex = shap.TreeExplainer(m, data=data.astype(np.float64), feature_perturbation="tree_path_dependent")
    sv = np.asarray(ex.shap_values(rows.astype(np.float64)))
    if sv.ndim == 3:
        return np.moveaxis(sv, -1, 0), np.atleast_1d(ex.expected_value)
    return np.stack([-sv, sv]), None


CASES = [
    ("RandomForest", lambda: ensemble.RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0), "multi", "skl"),
    ("ExtraTrees", lambda: ensemble.ExtraTreesClassifier(n_estimators=3, max_depth=4, random_state=0), "binary", "skl"),
    ("GradientBoosting-binary", lambda: ensemble.GradientBoostingClassifier(n_estimators=4, max_depth=3, random_state=0), "binary", "skl"),
    ("HistGradientBoosting", lambda: ensemble.HistGradientBoostingClassifier(max_iter=4, max_depth=3), "binary", "skl"),
    ("LightGBM-binary", lambda: lgb.LGBMClassifier(n_estimators=5, max_depth=4, verbose=-1), "binary", "lgb"),
    ("LightGBM-multiclass", lambda: lgb.LGBMClassifier(n_estimators=4, max_depth=3, verbose=-1), "multi", "lgb"),
    ("XGBoost-binary", lambda: xgb.XGBClassifier(n_estimators=5, max_depth=3), "binary", "xgb"),
    ("XGBoost-multiclass", lambda: xgb.XGBClassifier(n_estimators=4, max_depth=3), "multi", "xgb"),
]


@pytest.mark.parametrize("name,make,data,kind", CASES, ids=[c[0] for c in CASES])
def test_treeshap_matches_shap(datasets, name, make, data, kind):
    X, y = datasets[data]
    m = make().fit(X, y)
    D = X[:: max(1, len(X) // 100)][:100]  # shap keeps at most 100 background rows (it samples larger sets)
    e = xc(convert(m, X, kind), "treeshap", data=D)
    s = ort.InferenceSession(e.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = X[1::17][:12]
    ref, expected = shap_reference(m, D, rows)
    for c in range(ref.shape[0]):
        out = s.run(None, {"X": rows, "target": np.full(len(rows), c, np.int64)})
        err = np.abs(out[1] - ref[c]).max() / np.abs(ref[c]).max()
        assert err <= TOL, (name, c, err)
        assert list(out[2]) == [c] * len(rows)
        cons = out[3][np.isfinite(out[3])]
        assert np.abs(cons - 1).max() < 1e-5, (name, c)
    meta = {p.key: p.value for p in e.metadata_props}
    assert {n.domain for n in e.graph.node if n.name.startswith("xc/")} == {""}  # the emitted part: ai.onnx only
    if expected is not None:
        np.testing.assert_allclose(eval(meta["xcompile.expected_value"]), expected, rtol=1e-6, atol=1e-9)
    out = s.run(None, {"X": rows, "target": np.full(len(rows), -1, np.int64)})
    assert (out[2] == np.asarray(out[0]).argmax(1)).all()  # -1: the predicted class


def test_treeshap_regressor_and_opset9_lightgbm(datasets, tmp_path):
    X, y = datasets["binary"]
    m = ensemble.GradientBoostingRegressor(n_estimators=4, max_depth=3, random_state=0).fit(X, X[:, 0] * 2 + y)
    D = X[::6][:100]
    e = xc(convert(m, X, "skl"), "treeshap", data=D)
    s = ort.InferenceSession(e.SerializeToString())
    ref, _ = shap_reference(m, D, X[:8])
    out = s.run(None, {"X": X[:8], "target": np.full(8, -1, np.int64)})
    assert np.abs(out[1] - ref[1]).max() / np.abs(ref[1]).max() <= TOL
    # onnxmltools writes LightGBM at ai.onnx opset 9: converted by onnx.version_converter
    lm = lgb.LGBMClassifier(n_estimators=3, max_depth=3, verbose=-1).fit(X, y)
    o = convert(lm, X, "lgb")
    assert {i.domain: i.version for i in o.opset_import}[""] == 9
    e = xc(o, "treeshap", data=D)
    out = ort.InferenceSession(e.SerializeToString()).run(None, {"X": X[:8], "target": np.ones(8, np.int64)})
    ref, _ = shap_reference(lm, D, X[:8])
    assert np.abs(out[1] - ref[1]).max() / np.abs(ref[1]).max() <= TOL
    np.testing.assert_allclose(out[0], lm.predict_proba(X[:8]), atol=1e-5)  # the ZipMap's tensor, the file's forward


def test_ml_only_opset_file_and_occlusion(datasets):
    X, y = datasets["binary"]
    m = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(X, y)
    o = convert(m, X, "xgb")
    assert {i.domain for i in o.opset_import} == {"ai.onnx.ml"}  # onnxmltools' XGBoost file: no default domain
    e = xc(o, "occlusion")
    out = ort.InferenceSession(e.SerializeToString()).run(None, {"X": X[:4], "target": np.full(4, -1, np.int64)})
    assert out[1].shape == (4, 30) and np.abs(out[1]).max() > 0
    np.testing.assert_allclose(out[0], m.predict_proba(X[:4]), atol=1e-5)


def test_refusals(datasets, tmp_path):
    X, y = datasets["binary"]
    o = convert(lgb.LGBMClassifier(n_estimators=2, max_depth=2, verbose=-1).fit(X, y), X, "lgb")
    for method in ("gradient", "integrated_gradients", "lrp", "deeplift"):
        with pytest.raises(XCompileError, match="treeshap.*occlusion") as e:
            xc(o, method)
        assert "\n" not in str(e.value)
    from xcompile.commands.inspect_model import inspect_model
    onnx.save(o, str(tmp_path / "lgb.onnx"))
    with pytest.raises(XCompileError, match="treeshap.*occlusion"):  # inspect runs the same check
        inspect_model(tmp_path / "lgb.onnx", "gradient", None, {}, print)
    with pytest.raises(XCompileError, match="--set data=X.npy"):
        xc(o, "treeshap")  # no covers in the file (onnxmltools writes hit rates 1.0)
    with pytest.raises(XCompileError, match=r"\[M, 30\]"):
        xc(o, "treeshap", data=X[:, :5])
    np.save(tmp_path / "d.npy", X[:50])
    assert xc(o, "treeshap", data=str(tmp_path / "d.npy")) is not None
    with pytest.raises(XCompileError, match="label"):
        xc(o, "occlusion", output="label")


def _exp_value(tree, x, S, cover, node=0):
    """Lundberg et al. 2020, Algorithm 1 (EXPVALUE): E[f(x) | x_S] with the node covers."""
    left, right = tree.children_left[node], tree.children_right[node]
    if left < 0:
        return tree.value[node, 0, 0]
    f = tree.feature[node]
    if f in S:
        return _exp_value(tree, x, S, cover, left if x[f] <= tree.threshold[node] else right)
    return (cover[left] * _exp_value(tree, x, S, cover, left) + cover[right] * _exp_value(tree, x, S, cover, right)) / cover[node]


def _covers(tree, data):
    cover = np.zeros(tree.node_count)
    for x in data:
        n = 0
        while True:
            cover[n] += 1
            if tree.children_left[n] < 0:
                break
            n = tree.children_left[n] if x[tree.feature[n]] <= tree.threshold[n] else tree.children_right[n]
    cover[cover == 0] = 1e-6
    return cover


def test_treeshap_gradient_boosting_multiclass_vs_definition(datasets):
    """shap's TreeExplainer refuses multiclass GradientBoosting: the oracle is the Shapley formula itself over the 4
    iris features with Algorithm 1's conditional expectations (same covers)."""
    from itertools import combinations
    from math import factorial
    X, y = datasets["multi"]
    m = ensemble.GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(X, y)
    D = X[::3]
    e = xc(convert(m, X, "skl"), "treeshap", data=D)
    s = ort.InferenceSession(e.SerializeToString())
    F = X.shape[1]
    for c in range(3):
        trees = [est.tree_ for est in m.estimators_[:, c]]
        covers = [_covers(t, D) for t in trees]
        rows = X[::37]
        out = s.run(None, {"X": rows, "target": np.full(len(rows), c, np.int64)})
        for x, r in zip(rows.astype(np.float64), out[1]):
            def v(S):
                return m.learning_rate * sum(_exp_value(t, x, S, cv) for t, cv in zip(trees, covers))
            phi = np.zeros(F)
            for i in range(F):
                rest = [j for j in range(F) if j != i]
                for k in range(F):
                    for S in combinations(rest, k):
                        w = factorial(k) * factorial(F - k - 1) / factorial(F)
                        phi[i] += w * (v(set(S) | {i}) - v(set(S)))
            assert np.abs(r - phi).max() / np.abs(phi).max() <= TOL, (c, r, phi)


def test_covers_stored_in_the_file_are_used(datasets):
    """Real hit rates in the file (here sklearn's weighted_n_node_samples written into nodes_hitrates): no data= needed,
    and the result equals shap's TreeExplainer without data (which reads the same covers from the sklearn trees)."""
    from onnx import helper
    X, y = datasets["multi"]
    m = ensemble.RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X, y)
    o = convert(m, X, "skl")
    node = next(n for n in o.graph.node if n.op_type == "TreeEnsembleClassifier")
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    hit = [float(m.estimators_[t].tree_.weighted_n_node_samples[i]) for t, i in zip(a["nodes_treeids"], a["nodes_nodeids"])]
    for x in node.attribute:
        if x.name == "nodes_hitrates":
            del x.floats[:]
            x.floats.extend(hit)
    e = xc(o, "treeshap")
    s = ort.InferenceSession(e.SerializeToString())
    ex = shap.TreeExplainer(m, feature_perturbation="tree_path_dependent")
    sv = np.moveaxis(np.asarray(ex.shap_values(X[::30].astype(np.float64))), -1, 0)
    for c in range(3):
        out = s.run(None, {"X": X[::30], "target": np.full(5, c, np.int64)})
        assert np.abs(out[1] - sv[c]).max() / np.abs(sv[c]).max() <= TOL


def _interventional_by_definition(predict, B, x, F):
    """The Shapley values of v(S) = mean over background rows r of predict(x_S, r_rest), from the formula."""
    from itertools import combinations
    from math import factorial

    def v(S):
        Z = B.copy()
        Z[:, list(S)] = x[list(S)]
        return predict(Z).mean()
    phi = np.zeros(F)
    for i in range(F):
        rest = [j for j in range(F) if j != i]
        for k in range(F):
            for S in combinations(rest, k):
                phi[i] += factorial(k) * factorial(F - k - 1) / factorial(F) * (v(set(S) | {i}) - v(set(S)))
    return phi


@pytest.mark.parametrize("name,make,data,kind", [CASES[0], CASES[4], CASES[7]], ids=[CASES[i][0] for i in (0, 4, 7)])
def test_interventional_treeshap(datasets, name, make, data, kind):
    """--set background=: against shap's interventional TreeExplainer (raw output); for the random forest against the
    Shapley formula over its predict_proba (4 iris features), where shap 0.51 deviates by up to 2.4e-2 of max."""
    X, y = datasets[data]
    m = make().fit(X, y)
    B = X[::11][:25]
    e = xc(convert(m, X, kind), "treeshap", background=B)
    s = ort.InferenceSession(e.SerializeToString())
    rows = X[3::29][:6]
    if name == "RandomForest":
        ref = np.stack([[_interventional_by_definition(lambda Z: m.predict_proba(Z)[:, c], B, x, X.shape[1])
                         for x in rows] for c in range(3)])
    else:
        ex = shap.TreeExplainer(m, data=B.astype(np.float64), feature_perturbation="interventional", model_output="raw")
        sv = np.asarray(ex.shap_values(rows.astype(np.float64)))
        ref = np.moveaxis(sv, -1, 0) if sv.ndim == 3 else np.stack([-sv, sv])
    for c in range(ref.shape[0]):
        out = s.run(None, {"X": rows, "target": np.full(len(rows), c, np.int64)})
        assert np.abs(out[1] - ref[c]).max() / np.abs(ref[c]).max() <= TOL, (name, c)
        cons = out[3][np.isfinite(out[3])]
        assert np.abs(cons - 1).max() < 1e-5


@pytest.mark.parametrize("kind", ["xgb", "lgb", "skl"])
def test_treeshap_missing_values(datasets, kind):
    """Rows with NaN (15% of the cells, in training too): routed as the file says (missing_value_tracks_true), as
    XGBoost / LightGBM / HistGradientBoosting route them; against shap, which follows each library's default child."""
    X, y = datasets["binary"]
    Xn = X.copy()
    Xn[np.random.default_rng(0).random(X.shape) < 0.15] = np.nan
    m = {"xgb": lambda: xgb.XGBClassifier(n_estimators=5, max_depth=3),
         "lgb": lambda: lgb.LGBMClassifier(n_estimators=5, max_depth=3, verbose=-1),
         "skl": lambda: ensemble.HistGradientBoostingClassifier(max_iter=5, max_depth=3)}[kind]().fit(Xn, y)
    D = Xn[::6][:100]
    s = ort.InferenceSession(xc(convert(m, Xn, kind), "treeshap", data=D).SerializeToString())
    rows = Xn[1::40][:12]
    assert np.isnan(rows).any()
    ref, _ = shap_reference(m, D, rows)
    out = s.run(None, {"X": rows, "target": np.ones(12, np.int64)})
    assert np.abs(out[1] - ref[1]).max() / np.abs(ref[1]).max() <= TOL
    np.testing.assert_allclose(out[0], m.predict_proba(rows), atol=1e-5)


def test_treeshap_behind_per_feature_preprocessing(datasets):
    """SimpleImputer + StandardScaler + RandomForest (skl2onnx: Imputer, Scaler, TreeEnsembleClassifier): a per-feature
    map does not change a feature's SHAP value; data= rows go through the file's own preprocessing. Oracle: shap on the
    forest with the preprocessed rows."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    X, y = datasets["multi"]
    m = make_pipeline(SimpleImputer(), StandardScaler(),
                      ensemble.RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0)).fit(X, y)
    D, rows = X[::2][:60], X[::31]
    s = ort.InferenceSession(xc(convert(m, X, "skl"), "treeshap", data=D).SerializeToString())
    pre = (lambda Z: m[1].transform(m[0].transform(Z)).astype(np.float32))
    ref, _ = shap_reference(m[-1], pre(D), pre(rows))
    for c in range(3):
        out = s.run(None, {"X": rows, "target": np.full(len(rows), c, np.int64)})
        assert np.abs(out[1] - ref[c]).max() / np.abs(ref[c]).max() <= TOL
