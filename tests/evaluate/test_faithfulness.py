"""Faithfulness comparison (xcompile/evaluate/faithfulness.py and tools/lrp_auto_sweep.py --faithfulness):
pixel flipping of several methods and a random reference on the same rows, checked against the exact
per-pixel contributions of a linear model (Samek et al. 2017: most relevant first, the score must fall faster than
under a random order)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import pytest
from clirun import tool
from onnx import TensorProto, helper, numpy_helper

from xcompile.evaluate import flipping
from xcompile.evaluate.faithfulness import RANDOM, faithfulness, summarize

ROOT = Path(__file__).resolve().parents[2]
SIDE, CHANNELS, CLASSES = 4, 1, 3


def linear_onnx(path: Path, w: np.ndarray, b: np.ndarray, channels: int = CHANNELS) -> Path:
    """scores = flatten(x) @ w + b for x [N, channels, SIDE, SIDE]."""
    g = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
         helper.make_node("Gemm", ["flat", "W", "B"], ["scores"], name="fc")],
        "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, SIDE, SIDE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", w.shape[1]])],
        [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(b.astype(np.float32), "B")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """Class 0 has positive weights and the inputs are positive, so every pixel's contribution w_i x_i to the class-0
    logit is positive and class 0 is predicted on every row."""
    rng = np.random.default_rng(0)
    n_feat = CHANNELS * SIDE * SIDE
    w = np.concatenate([rng.uniform(0.5, 1.5, (n_feat, 1)), rng.normal(0, 0.1, (n_feat, CLASSES - 1))], axis=1)
    b = np.array([0.0, 0.3, -0.2])
    x = rng.uniform(0.1, 1.0, (6, CHANNELS, SIDE, SIDE)).astype(np.float32)
    return linear_onnx(tmp_path_factory.mktemp("faith") / "linear.onnx", w, b), w, b, x


def test_faithfulness_curves_share_rows_and_truth_beats_random(linear):
    path, w, b, x = linear
    n, n_feat = len(x), x[0].size
    truth = (x.reshape(n, -1).astype(np.float64) * w[:, 0]).reshape(x.shape)  # exact contribution to logit 0
    f = faithfulness(path, "input_x_gradient,gradient,lrp:no-such-rule-set", x, steps=n_feat, baseline=0.0,
                     score="logit", random_draws=3, extra={"truth": truth, "anti": -truth})
    # an unknown rule set is reported, not flipped
    assert "lrp:no-such-rule-set" in f.errors and "lrp:no-such-rule-set" not in f.curves
    assert set(f.curves) == {"input_x_gradient", "gradient", "truth", "anti", RANDOM}
    np.testing.assert_array_equal(f.target, 0)
    logit = x.reshape(n, -1).astype(np.float64) @ w[:, 0] + b[0]
    for label, c in f.curves.items():
        # curve shapes: one point per step and row, the fraction of pixels flipped goes 1/16 .. 1
        assert c.curves.shape == (n, n_feat) and c.auc.shape == (n,), label
        np.testing.assert_allclose(c.fraction, np.arange(1, n_feat + 1) / n_feat)
        # the same rows and class for every map, the random reference included: same unperturbed score, and
        # once every pixel is filled with the baseline all orders reach the same input (logit = bias)
        np.testing.assert_array_equal(c.target, f.target)
        np.testing.assert_allclose(c.original, logit, rtol=1e-5)
        np.testing.assert_allclose(c.curves[:, -1], b[0], atol=1e-5)
    assert f.curves[RANDOM].settings["random_draws"] == 3
    # the compiled explainer reproduces the exact contributions, so its curve is the analytic one:
    # f(x) minus the k largest contributions -- monotone, since they are all positive
    analytic = logit[:, None] - np.cumsum(-np.sort(-truth.reshape(n, -1), axis=1), axis=1)
    for label in ("input_x_gradient", "truth"):
        np.testing.assert_allclose(f.curves[label].curves, analytic, rtol=1e-4, atol=1e-4)
    assert (np.diff(f.curves["truth"].curves, axis=1) < 0).all()
    # removing the k largest contributions lowers the logit at least as much as any other k pixels: the truth's curve
    # is below the random reference's at every step, the reversed order's above it
    rnd = f.curves[RANDOM].curves
    assert (f.curves["truth"].curves <= rnd + 1e-5).all() and (f.curves["anti"].curves >= rnd - 1e-5).all()
    s = f.summary()
    assert s["truth"]["beats_random"] == 1.0 and s["truth"]["gap"] < 0
    assert s["anti"]["beats_random"] == 0.0 and s["anti"]["gap"] > 0
    assert s["truth"]["mean"] < s[RANDOM]["mean"] < s["anti"]["mean"]
    assert summarize(f.curves)[RANDOM]["beats_random"] == 0.0 and s[RANDOM]["n"] == n


def test_random_reference_is_the_mean_of_its_draws(linear):
    path, w, b, x = linear
    f1 = faithfulness(path, "gradient", x, steps=4, baseline=0.0, score="softmax", random_draws=1, seed=5)
    f2 = faithfulness(path, "gradient", x, steps=4, baseline=0.0, score="softmax", random_draws=2, seed=5)
    scorer = flipping.Scorer(path, score="softmax")
    from xcompile.evaluate.faithfulness import random_relevance
    second = flipping.pixel_flipping(scorer, x, random_relevance(x, 5 + 1001), f2.target, steps=4, baseline=0.0)
    np.testing.assert_allclose(f2.curves[RANDOM].curves, (f1.curves[RANDOM].curves + second.curves) / 2, rtol=1e-6)
    np.testing.assert_allclose(f1.curves["gradient"].curves, f2.curves["gradient"].curves)


def test_sweep_faithfulness_column_on_a_tiny_model(tmp_path):
    """The sweep's --faithfulness path end to end on a 3-channel linear model: every method runs, the doc gets the
    per-rule-set column and the comparison table with the measured numbers."""
    sweep = tool("lrp_auto_sweep")
    rng = np.random.default_rng(1)
    w = np.concatenate([rng.uniform(0.5, 1.5, (3 * SIDE * SIDE, 1)), rng.normal(0, 0.1, (3 * SIDE * SIDE, 2))], 1)
    path = linear_onnx(tmp_path / "lin3.onnx", w, np.zeros(3), channels=3)
    x = rng.uniform(0.1, 1.0, (4, 3, SIDE, SIDE)).astype(np.float32)
    a = argparse.Namespace(ig_steps=4, faith_steps=8, faith_batch=2, random_draws=1)
    f = sweep.faith_measure(path, x, a, "random", fills=(0.0, 0.5))
    assert not f["errors"], f["errors"]
    # a second fill value re-flips the same maps on the same rows: same targets and unperturbed scores, other curves
    g = f["fills"]["0.5"]
    assert g["rows"] == 4 and g["original"] == pytest.approx(f["original"]) and g["auc"] != f["auc"]
    methods = sweep.faith_methods(4)
    assert set(f["summary"]) == set(methods) | {RANDOM}
    assert all(s["n"] == 4 and s["steps"] == 8 for s in f["summary"].values())
    # on a linear model input x gradient, IG and attnlrp (epsilon, zero bias) are the exact contributions w_i x_i,
    # so they beat random on every row; auto is epsilon-plus-flat here (no attention or norm): the same numbers
    for m in ("input_x_gradient", "integrated_gradients{steps=4}", "lrp:attnlrp"):
        assert f["summary"][m]["beats_random"] == 1.0, m
    assert f["summary"]["lrp:auto"] == f["summary"]["lrp:epsilon-plus-flat"]
    row = sweep.row("lin3", "auto", {"legacy": {"finite": True, "conservation": np.ones(2)}}, None, [])
    out = tmp_path / "lrp_auto.md"
    sweep.write([row], out, "cmd", 1.0, (-1.0, 2.0), {"lin3": f},
                {"rows": 4, "steps": 8, "ig_steps": 4, "random_draws": 1})
    text = out.read_text()
    assert "pixel-flipping AUC (random)" in text and "## Faithfulness: pixel flipping" in text
    auto, rnd = f["summary"]["lrp:auto"]["mean"], f["summary"][RANDOM]["mean"]
    assert f"{auto:.3g} ({rnd:.3g})" in text
    assert "| lin3 | random | 4 |" in text and "| lin3 (fill 0.5) | random | 4 |" in text


def test_leaders_are_the_best_and_its_statistical_ties():
    """Bold cells / verdict counts: the lowest mean AUC plus every method whose paired difference to it is within two
    standard errors over rows."""
    sweep = tool("lrp_auto_sweep")
    base = np.linspace(1.0, 2.0, 10)
    noise = np.random.default_rng(0).normal(0, 0.05, 10)
    f = {"auc": {"a": base.tolist(), "b": (base + noise).tolist(), "c": (base + 0.3 + noise).tolist(),
                 RANDOM: (base + 5).tolist()}}
    assert sorted(sweep.leaders(f, ["a", "b", "c"])) == ["a", "b"]
    assert sweep.leaders(f, ["c"]) == ["c"]
