"""The tie-aware oracle (model_zoo/tie_oracle.py) on a hand-made graph whose ReLU input and MaxPool window sit
exactly at float32 rounding of a kink -- constructed, not random -- at every onnxruntime optimization level and
with 1 and 2 intra-op threads.

z = (x + 1) - 1 is exact in float64 but rounds in float32: x = 2**-25 gives z32 = 0 (ReLU off) and z64 = 2**-25
(ReLU on); x = 0.25 and 0.25 + 2**-25 give equal z32 (a MaxPool tie) but distinct z64."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import helper
from oracle import one_op_model, rel_err

import xcompile
from model_zoo.tie_oracle import TIE_TOL, ProbedExplainer, TieAware

TINY = 2.0 ** -25
X = np.array([[[[0.25, 0.25 + TINY, -0.5, TINY],
                 [0.10, 0.20, -0.3, -0.2]]]], np.float32)  # [1, 1, 2, 4]: window 1 a MaxPool tie, window 2 a ReLU tie
LEVELS = ["all", "extended", "basic", "disable"]


def _model():
    nodes = [helper.make_node("Add", ["x", "one"], ["x1"], name="add_one"),
             helper.make_node("Sub", ["x1", "one"], ["z"], name="sub_one"),
             helper.make_node("Relu", ["z"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    return one_op_model(nodes, (1, 2, 4), (1, 1, 2), inits=[("one", np.float32(1.0))])


def _reference(w, x, target):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = F.max_pool2d(F.relu((xt + 1.0) - 1.0), 2)
    scores = y.reshape(y.shape[0], -1) @ torch.tensor(w, dtype=torch.float64)
    g, = torch.autograd.grad(scores[:, target].sum(), xt)
    return g.numpy()


def test_the_construction_is_a_float32_tie():
    z32 = (X + np.float32(1)) - np.float32(1)
    z64 = (X.astype(np.float64) + 1) - 1
    assert z32[0, 0, 0, 3] == 0 and z64[0, 0, 0, 3] == TINY           # ReLU: off in float32, on in float64
    assert z32[0, 0, 0, 0] == z32[0, 0, 0, 1] and z64[0, 0, 0, 1] > z64[0, 0, 0, 0]  # MaxPool: tie vs winner


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("level", LEVELS)
def test_near_ties_pass_at_every_optimization_level(level, threads):
    model, w = _model()
    target = int(np.argmax(np.abs(w[1])))  # a class whose weight on the ReLU-tie window is not ~0
    probed = ProbedExplainer(xcompile.compile(model, "gradient"))
    out, decisions = probed.explain(X, np.array([target]), level, threads)
    plain = _reference(w, X, target)
    with TieAware(decisions) as tie:
        ref = _reference(w, X, target)
    tie.check()
    print(f"[{level}, threads={threads}] {tie.summary()}; plain float64 {rel_err(out.relevance, plain):.2e}")
    assert rel_err(out.relevance, ref) < 1e-6
    # the explainer's float32 forward sees both ties: the ReLU unit is forced off, and the MaxPool window's winner
    # is the explainer's; plain float64 autograd differs by whole terms there
    assert tie.forced.get("relu") == 1 and tie.forced.get("max_pool", 0) >= 1
    assert tie.worst <= TIE_TOL
    assert rel_err(out.relevance, plain) > 0.1


def test_a_real_disagreement_is_not_excused():
    """A ReLU unit far from its kink on the other branch than float64 (a wrong explainer forward) fails check()."""
    model, w = _model()
    x = X.copy()
    x[0, 0, 1, 2] = 1e-4  # 1e-4 from the kink: 30x the near-tie bound of this row (max 0.25)
    probed = ProbedExplainer(xcompile.compile(model, "gradient"))
    _, decisions = probed.explain(x, np.array([0]))
    relu = next(p for p in decisions.probes if p.op_type == "Relu")
    decisions.values[relu.x] = decisions.values[relu.x].copy()
    decisions.values[relu.x][0, 0, 1, 2] = -1e-4  # as if the explainer's forward had put it on the other side
    with TieAware(decisions) as tie:
        _reference(w, x, 0)
    with pytest.raises(AssertionError, match="near-tie bound"):
        tie.check()
