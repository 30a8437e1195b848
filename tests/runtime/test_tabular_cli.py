"""`xcompile run` on feature rows (.csv with a header, .npy) and `xcompile demo --task tabular` (docs/tabular.md)."""
import csv
import warnings

import numpy as np
import onnx
import pytest
from clirun import cli, one_line_error

from xcompile.runtime.explainer import Explainer

skl2onnx = pytest.importorskip("skl2onnx")
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402


@pytest.fixture(scope="module")
def forest(tmp_path_factory):
    d = tmp_path_factory.mktemp("forest")
    data = load_breast_cancer()
    X = data.data.astype(np.float32)
    m = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X, data.target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx.save(skl2onnx.to_onnx(m, X[:1]), str(d / "rf.onnx"))
    np.save(d / "covers.npy", X[:100])
    rc, out, err = cli("compile", d / "rf.onnx", "--method", "treeshap", "--set", f"data={d / 'covers.npy'}",
                       "-o", d / "rf_shap.onnx")
    assert rc == 0, err
    return d, X, list(data.feature_names)


def test_run_csv_with_header_and_npy(forest, tmp_path):
    d, X, names = forest
    rows = X[200:203].copy()
    rows[1, 4] = np.nan  # an empty cell: NaN, routed as the trees route missing values
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for r in rows:
            w.writerow(["" if np.isnan(v) else repr(float(v)) for v in r])
    rc, out, err = cli("run", d / "rf_shap.onnx", "--input", tmp_path / "rows.csv", "--out", tmp_path / "out", "--target", "1")
    assert rc == 0, err
    table = list(csv.reader(open(tmp_path / "out" / "relevance.csv")))
    assert table[0] == ["row", "explained_class", "score"] + names
    ref = Explainer(d / "rf_shap.onnx").explain(rows, 1)
    got = np.array([[float(v) for v in r[3:]] for r in table[1:]])
    np.testing.assert_allclose(got, ref.relevance, rtol=1e-5, atol=1e-7)
    assert [int(r[1]) for r in table[1:]] == [1, 1, 1]
    for k in range(3):
        assert (tmp_path / "out" / f"rows_{k}_relevance.png").stat().st_size > 1000
    np.save(tmp_path / "rows.npy", rows)
    rc, out, err = cli("run", d / "rf_shap.onnx", "--input", tmp_path / "rows.npy", "--out", tmp_path / "out2")
    assert rc == 0, err
    table = list(csv.reader(open(tmp_path / "out2" / "relevance.csv")))
    assert table[0][3:] == [f"x{k}" for k in range(30)] and len(table) == 4


def test_run_csv_bad_width_is_one_line(forest, tmp_path):
    d, X, names = forest
    (tmp_path / "bad.csv").write_text("1,2,3\n4,5,6\n")
    one_line_error(cli("run", d / "rf_shap.onnx", "--input", tmp_path / "bad.csv", "--out", tmp_path / "o"),
                   "expects [N, 30]")


def test_demo_tabular(tmp_path):
    rc, out, err = cli("demo", "--task", "tabular", "--out", tmp_path / "demo", "--n", "2")
    assert rc == 0, err
    assert "raw score x 1.000000" in out
    assert (tmp_path / "demo" / "relevance.csv").exists()
    assert (tmp_path / "demo" / "heldout_1_relevance.png").stat().st_size > 1000
