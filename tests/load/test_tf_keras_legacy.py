"""Keras 2 (``tf_keras``) models through ``tf2onnx.convert.from_keras``: a residual CNN and an Embedding(mask_zero) →
LSTM text model (model_zoo/tf_keras_legacy.py builds them in a subprocess, where ``TF_USE_LEGACY_KERAS=1`` selects
Keras 2). The explainer's scores are the Keras model's own; its gradient matches ``tf.GradientTape`` through the same
float32 model, at the input for the CNN and at the embedding output for the text model (padded steps included).
Every LRP rule set stays finite on the text model and gives exactly zero relevance to padding ids."""
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
TOL = 1e-4     # of max |reference|; measured 1.5e-7 (CNN) and 1.7e-7 (text)

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("tensorflow", "tf2onnx", "tf_keras")),
    reason="needs tensorflow, tf2onnx and tf_keras (tools/install_test_deps.sh installs tf_keras)")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tf_keras_legacy")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="1",
               TF_NUM_INTEROP_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "model_zoo.tf_keras_legacy", "--out", str(out)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    ref = dict(np.load(out / "reference.npz"))
    assert str(ref["keras_version"]).startswith("2."), ref["keras_version"]
    return out, ref


def test_keras2_cnn_gradient(built):
    out, ref = built
    res = xcompile.Explainer(xcompile.compile(str(out / "cnn.onnx"), "gradient")).explain(ref["x"])
    score_err, grad_err = rel_err(res.scores, ref["cnn_logits"]), rel_err(res.relevance, ref["cnn_grad"])
    print(f"Keras 2 CNN: scores {score_err:.1e}, gradient {grad_err:.1e}")
    assert score_err < TOL and grad_err < TOL


def test_keras2_text_gradient_and_lrp(built):
    out, ref = built
    res = xcompile.Explainer(xcompile.compile(str(out / "text.onnx"), "gradient")).explain(ref["ids"])
    emb = res.extras["embedding_relevance"]
    score_err, grad_err = rel_err(res.scores, ref["text_logits"]), rel_err(emb, ref["text_grad"])
    print(f"Keras 2 Embedding+LSTM: scores {score_err:.1e}, embedding gradient {grad_err:.1e}")
    assert score_err < TOL and grad_err < TOL
    pad = ref["ids"] == 0
    for rules in ("epsilon", "auto"):
        rel = xcompile.Explainer(xcompile.compile(str(out / "text.onnx"), "lrp", rules=rules)).explain(ref["ids"])
        assert np.isfinite(rel.relevance).all(), rules
        assert np.all(rel.relevance[pad] == 0), rules
