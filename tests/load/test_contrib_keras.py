"""Keras 3 text classifiers (Embedding -> LSTM / GRU / Bidirectional LSTM / Conv1D), converted by tf2onnx and by
Keras' ``model.export(format="onnx")``: Keras wraps the token ids in index arithmetic before the look-up (negative
ids: Less / Add / Mul / Not / Cast), through which the token input is found. Oracle: ``tf.GradientTape`` at the
Embedding layer's output (model_zoo/tf_keras_text.py, run in a subprocess: Keras fixes its backend per process)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xcompile

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "model_zoo" / "tf_keras_text.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
    reason="needs tensorflow and tf2onnx (pip install -e '.[test]')")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# ~50-75 s each (TensorFlow start, conversion): slow. Keras 3's GRU reaches ONNX as a Loop (TensorFlow's while loop),
# not a GRU op: unrolled by canonicalize/controlflow.py
@pytest.mark.slow
@pytest.mark.parametrize("model", ["lstm", "gru", "bilstm", "conv1d"])
def test_keras_text_model_gradient_at_the_embedding(tmp_path, model):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="1",
               TF_NUM_INTEROP_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(HELPER), "--model", model, "--out", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = np.load(tmp_path / "reference.npz")
    for conv in ("tf2onnx", "export"):
        ex = xcompile.Explainer(xcompile.compile(tmp_path / f"{conv}.onnx", "gradient"))
        assert ex.token_input and ex.vocab == 50
        res = ex.explain(ref["ids"], ref["target"])
        np.testing.assert_allclose(res.scores, ref["logits"], rtol=1e-5, atol=1e-5)
        err = rel_err(res.extras["embedding_relevance"], ref["grad"])
        print(f"keras {model} {conv}: gradient at the embedding vs GradientTape {err:.2e}")
        assert err <= 1e-5
        ixg = xcompile.Explainer(xcompile.compile(tmp_path / f"{conv}.onnx", "input_x_gradient")).explain(
            ref["ids"], ref["target"])
        assert rel_err(ixg.relevance, (ref["embedding"] * ref["grad"]).sum(-1)) <= 1e-5
