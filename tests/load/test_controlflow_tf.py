"""tf2onnx's recurrent pattern: Keras 3 GRU on float input, an LSTM behind a Masking layer and an LSTM on token ids
with ``Embedding(mask_zero=True)``, converted by tf2onnx into
a ``Loop`` whose body reads the outer sequence (Gather at a loop-carried counter) and whose condition compares
counters with the sequence length. canonicalize/controlflow.py unrolls it; the gradient matches ``tf.GradientTape``
and every LRP rule set is finite (and conserves on the bias-free twins).

TensorFlow runs in ONE subprocess (model_zoo/tf_recurrent.py; Keras fixes its backend per process)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from oracle import rel_err

import xcompile

ROOT = Path(__file__).resolve().parents[2]
GRAD_TOL = 1e-5
MODELS = ("gru", "masked_lstm_nobias", "mask_zero_lstm")  # random biases except the masked LSTM (conservation)
RULESETS = ["auto", "epsilon", "zero", "attnlrp", "cp-lrp", "epsilon-plus", "epsilon-alpha2-beta1", "epsilon-gamma-box"]

pytestmark = [pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
    reason="needs tensorflow and tf2onnx (pip install -e '.[test]')"),
    pytest.mark.slow]  # ~35 s of TensorFlow start-up and conversion; tests/load/test_controlflow.py covers the Loop shape


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tf_recurrent")
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="1",
               TF_NUM_INTEROP_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(ROOT / "model_zoo" / "tf_recurrent.py"), "--models", ",".join(MODELS),
                        "--out", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return out


@pytest.mark.parametrize("name", MODELS)
def test_gradient_against_gradient_tape(built, name):
    import onnx
    path = built / name / "model.onnx"
    assert any(n.op_type == "Loop" for n in onnx.load(str(path)).graph.node)
    ref = np.load(built / name / "reference.npz")
    compiled = xcompile.compile(str(path), "gradient")
    assert not any(n.op_type == "Loop" for n in compiled.graph.node)
    e = xcompile.Explainer(compiled).explain(ref["x"], ref["target"])
    assert rel_err(e.scores, ref["logits"]) < GRAD_TOL
    got = e.extras["embedding_relevance"] if name == "mask_zero_lstm" else e.relevance  # token ids: dF/dE [N, L, D]
    err = rel_err(got, ref["grad"])
    print(f"{name}: gradient vs tf.GradientTape {err:.2e}")
    assert err < GRAD_TOL
    if name.startswith("masked"):  # the masked (all-zero) steps: the state passes through, no gradient
        assert np.abs(e.relevance[0, 4:]).max() == 0 and np.abs(e.relevance[2, 2:]).max() == 0
    if name == "mask_zero_lstm":  # padding ids (0): no gradient
        assert np.abs(got[0, 4:]).max() == 0 and np.abs(got[2, 2:]).max() == 0


@pytest.mark.parametrize("name", MODELS)
def test_rulesets_finite_and_conservative(built, name):
    ref = np.load(built / name / "reference.npz")
    for rules in RULESETS:
        e = xcompile.Explainer(xcompile.compile(str(built / name / "model.onnx"), "lrp", rules=rules)).explain(
            ref["x"], ref["target"])
        assert np.isfinite(e.relevance).all() and np.abs(e.relevance).max() > 0, rules
        if name != "masked_lstm_nobias":  # biases absorb relevance; AttnLRP has no gated-cell rule (GRU's (1 - z) * n
            continue                # is not conservative under it for PyTorch's GRU without Loop either)
        score = e.scores[np.arange(len(ref["x"])), ref["target"]]
        np.testing.assert_allclose(e.relevance.reshape(len(score), -1).sum(1), score, rtol=1e-3, atol=1e-5, err_msg=rules)
