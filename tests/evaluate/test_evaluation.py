"""Evaluation: pixel flipping / region perturbation against analytic curves on a linear model, axioms
that can fail, relevance pooling, SpRAY on planted clusters, and the CLI commands."""
import itertools
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from clirun import inproc
from onnx import TensorProto, helper, numpy_helper

import xcompile
from xcompile.errors import XCompileError
from xcompile.evaluate import axioms, flipping
from xcompile.evaluate.pooling import pool_relevance
from xcompile.evaluate.run import parse_specs
from xcompile.evaluate.spray import spray
from xcompile.runtime.explainer import Explainer

DIGITS = Path(str(resources.files("xcompile") / "data" / "digits_cnn.onnx"))
HELDOUT = Path(str(resources.files("xcompile") / "data" / "digits_heldout.npz"))


def linear_model(w: np.ndarray, b: np.ndarray, side: int = 4) -> onnx.ModelProto:
    """scores = flatten(x) @ w + b for x [N, 1, side, side]."""
    g = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
         helper.make_node("Gemm", ["flat", "W", "B"], ["scores"], name="fc")],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, side, side])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", w.shape[1]])],
        [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(b.astype(np.float32), "B")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((16, 3)), np.array([0.5, -0.25, 0.1])
    x = rng.uniform(0.1, 1.0, (5, 1, 4, 4)).astype(np.float32)
    return linear_model(w, b), w, b, x


def test_pixel_flipping_linear_analytic(linear):
    model, w, b, x = linear
    ex = Explainer(xcompile.compile(model, "input_x_gradient"))
    res = ex.explain(x)
    t = res.predicted
    contrib = x.reshape(5, -1).astype(np.float64) * w[:, t].T  # the exact decomposition of a linear model
    np.testing.assert_allclose(res.relevance.reshape(5, -1), contrib, rtol=1e-5, atol=1e-6)
    scorer = flipping.Scorer(model, score="logit", batch_size=7)  # batches that straddle samples
    for fis in (1, 3):
        c = flipping.pixel_flipping(scorer, x, res.relevance, None, features_in_step=fis, baseline=0.0)
        # analytic: flipping the k most relevant inputs to 0 removes exactly their contributions
        srt = -np.sort(-contrib, axis=1)
        f = contrib.sum(1) + b[t]
        steps = np.minimum(np.arange(1, len(range(0, 16, fis)) + 1) * fis, 16)
        analytic = f[:, None] - np.cumsum(srt, axis=1)[:, steps - 1]
        np.testing.assert_allclose(c.curves, analytic, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(c.auc, np.trapezoid(analytic, dx=1, axis=1), rtol=1e-5, atol=1e-5)
    # the exact decomposition is the ideal ordering: no random ordering has a lower AUC
    best = flipping.pixel_flipping(scorer, x, res.relevance, None, baseline=0.0).auc
    rng = np.random.default_rng(1)
    for _ in range(5):
        rand = flipping.pixel_flipping(scorer, x, rng.standard_normal(x.shape), None, baseline=0.0).auc
        assert np.all(best <= rand + 1e-6)


def quantus_region_reference(f, x, a, target, p, regions, fill):
    """Quantus RegionPerturbation.evaluate_instance, written out plainly (one model call per step)."""
    h, w = a.shape
    apad = np.pad(a, p - 1)
    sums, patches = [], []
    for r, q in itertools.product(range(h), range(w)):
        sums.append(apad[r + p - 1:r + 2 * p - 1, q + p - 1:q + 2 * p - 1].sum())
        patches.append((r, q))
    order = np.argsort(sums)[::-1]
    blocked, chosen = np.zeros((h, w), bool), []
    for k in order:
        r, q = patches[k]
        if not blocked[r:r + p, q:q + p].any():
            blocked[r:r + p, q:q + p] = True
            chosen.append((r, q))
        if len(chosen) >= regions:
            break
    y = f(x[None])[0, target]
    xp, out = x.copy(), []
    for r, q in chosen:
        xp[:, r:r + p, q:q + p] = fill
        out.append(y - f(xp[None])[0, target])
    return np.array(out)


def test_region_perturbation_matches_quantus_definition(linear):
    model, w, b, x = linear
    import onnxruntime as ort
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    f = lambda z: s.run(None, {"input": z.astype(np.float32)})[0].astype(np.float64)  # noqa: E731
    rng = np.random.default_rng(3)
    a = rng.standard_normal(x.shape)
    scorer = flipping.Scorer(model, score="logit", batch_size=4)
    c = flipping.region_perturbation(scorer, x, a, None, patch_size=2, regions_evaluation=5, baseline=0.0,
                                     normalise=False)
    t = f(x).argmax(1)
    for i in range(len(x)):
        ref = quantus_region_reference(f, x[i], a[i, 0], t[i], 2, 5, 0.0)
        assert len(ref) == c.curves.shape[1] == c.settings["steps"]
        np.testing.assert_allclose(c.curves[i], ref, rtol=1e-5, atol=1e-5)


def test_softmax_score_and_baselines(linear):
    model, w, b, x = linear
    scorer = flipping.Scorer(model, score="softmax")
    p = scorer.outputs(x)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-9)
    rng = np.random.default_rng(0)
    assert flipping.baseline_values(x[0], "black", rng).max() == x[0].min()
    assert flipping.baseline_values(x[0], "white", rng).min() == x[0].max()
    with pytest.raises(XCompileError):
        flipping.baseline_values(x[0], "purple", rng)


# ------------------------------------------------------------------ axioms
def tampered(model: onnx.ModelProto, op: str, value: float) -> onnx.ModelProto:
    """A deliberately broken explainer: relevance <- relevance (op) value."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    g = m.graph
    for n in g.node:
        for k, o in enumerate(n.output):
            if o == "relevance":
                n.output[k] = "relevance_honest"
    g.initializer.append(numpy_helper.from_array(np.array(value, np.float32), "tamper_value"))
    g.node.append(helper.make_node(op, ["relevance_honest", "tamper_value"], ["relevance"], name="tamper"))
    return m


def test_conservation_detects_broken_explainer(linear):
    _, w, _, x = linear
    model = linear_model(w, np.zeros(3))  # no bias: x * grad sums exactly to the score
    good = xcompile.compile(model, "input_x_gradient")
    row = axioms.conservation(Explainer(good), x)
    assert row.passed and row.value < 1e-5
    bad = axioms.conservation(Explainer(tampered(good, "Mul", 1.5)), x)
    assert not bad.passed and bad.value == pytest.approx(0.5, rel=1e-4)


def test_integrated_gradients_completeness(linear):
    model, _, _, x = linear
    row = axioms.conservation(Explainer(xcompile.compile(model, "integrated_gradients", steps=4)), x)
    assert row.expected and row.passed  # sum IG = f(x) - f(0) exactly for a linear model


def test_invariance_passes_for_equal_graphs_and_detects_broken():
    x = np.load(HELDOUT)["x"][:8]
    folded = axioms.fold_batchnorm_variant(onnx.load(DIGITS))
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    a = xcompile.compile(DIGITS, "gradient")
    b = xcompile.compile(folded, "gradient")
    ok = axioms.implementation_invariance(Explainer(a), Explainer(b), x)
    assert ok.passed, ok
    ident = axioms.implementation_invariance(Explainer(a), Explainer(xcompile.compile(axioms.identity_variant(DIGITS), "gradient")), x)
    assert ident.passed
    broken = axioms.implementation_invariance(Explainer(a), Explainer(tampered(b, "Add", 0.01)), x)
    assert not broken.passed


def test_check_axioms_table(linear):
    model, _, _, x = linear
    rows = axioms.check_axioms(xcompile.compile(model, "gradient"), x, equivalent=xcompile.compile(model, "gradient"))
    assert [r.axiom for r in rows] == ["conservation", "positivity", "continuity", "implementation_invariance"]
    by = {r.axiom: r for r in rows}
    assert by["continuity"].passed and by["continuity"].value < 1e-6  # a linear model's gradient is constant
    assert by["implementation_invariance"].passed
    assert all(np.isfinite(r.value) for r in rows)


# ------------------------------------------------------------------ pooling, SpRAY
def test_relevance_pooling():
    r = np.zeros((2, 1, 6, 6))
    r[0, 0, 1:3, 1:3] = 1.0   # 4 inside
    r[0, 0, 5, 5] = 2.0       # 2 outside
    r[1, 0, 0, 0] = 3.0       # 3 outside
    r[1, 0, 2, 2] = 1.5       # 1.5 inside
    p = pool_relevance(r, [1, 1, 3, 3])
    np.testing.assert_allclose(p.inside, [4.0, 1.5])
    np.testing.assert_allclose(p.outside, [2.0, 3.0])
    np.testing.assert_allclose(p.context, [0.5, 2.0])
    assert p.summary()["importance_of_context"] == pytest.approx(5.0 / 5.5)
    per_image = pool_relevance(r, np.array([[1, 1, 3, 3], [0, 0, 1, 1]]))
    np.testing.assert_allclose(per_image.inside, [4.0, 3.0])


def test_spray_recovers_planted_clusters():
    from sklearn.metrics import adjusted_rand_score
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    centers = [(4, 4), (4, 12), (12, 8)]
    maps, truth = [], []
    for k, (cy, cx) in enumerate(centers):
        for _ in range(25):
            blob = np.exp(-((yy - cy - rng.normal(0, 0.7)) ** 2 + (xx - cx - rng.normal(0, 0.7)) ** 2) / 6.0)
            maps.append(blob * rng.uniform(0.5, 2.0) + rng.normal(0, 0.05, (16, 16)))
            truth.append(k)
    perm = rng.permutation(len(maps))
    r = np.array(maps)[perm][:, None]
    truth = np.array(truth)[perm]
    s = spray(r, None, n_neighbors=8)
    assert s.n_clusters == 3
    assert adjusted_rand_score(truth, s.labels) > 0.95
    assert s.prototypes.shape == (3, 16, 16)
    assert np.argmax(s.eigengaps) == 2  # the largest gap follows the 3rd eigenvalue


def test_parse_specs():
    s = parse_specs("gradient, lrp:epsilon-gamma-box{low=0,high=1},occlusion{window=2,stride=1}")
    assert [(x.method, x.rules, x.params) for x in s] == [
        ("gradient", None, {}), ("lrp", "epsilon-gamma-box", {"low": "0", "high": "1"}),
        ("occlusion", None, {"window": "2", "stride": "1"})]
    with pytest.raises(XCompileError):
        parse_specs("grad ient")


# ------------------------------------------------------------------ CLI
def test_cli_commands(tmp_path, capsys):
    x = np.load(HELDOUT)
    data = tmp_path / "d.npz"
    np.savez(data, x=x["x"][:40], y=x["y"][:40])
    r = inproc(capsys, "evaluate", DIGITS, "--methods", "gradient,occlusion{window=2,stride=2}", "--data", data,
               "--n", "6", "--metric", "both", "--patch-size", "2", "--regions", "4", "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    for f in ("pixel_flipping.png", "pixel_flipping.json", "pixel_flipping.csv", "region_perturbation.csv"):
        assert (tmp_path / "ev" / f).is_file()
    ex = tmp_path / "g.onnx"
    from xcompile.write.writer import save
    save(xcompile.compile(DIGITS, "gradient"), ex)
    r = inproc(capsys, "axioms", str(ex), "--data", str(data), "--n", "6", "--json", str(tmp_path / "ax.json"))
    assert r.returncode == 0, r.stderr
    assert "continuity" in (tmp_path / "ax.json").read_text()
    r = inproc(capsys, "pool-relevance", ex, "--data", data, "--box", "2,2,6,6", "--out", tmp_path / "pool")
    assert r.returncode == 0 and "importance of context" in r.stdout, r.stderr
    r = inproc(capsys, "spray", str(ex), "--data", str(data), "--class", "3", "--select", "all", "--neighbors", "5",
               "--out", str(tmp_path / "sp"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sp" / "eigengap.png").is_file() and (tmp_path / "sp" / "prototypes.png").is_file()
