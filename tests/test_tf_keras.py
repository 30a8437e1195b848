"""Keras models on the TensorFlow backend, converted by ``tf2onnx.convert.from_keras`` (opset 17) and by Keras 3's
``model.export(path, format="onnx")``, compile; the explainer's scores are the Keras model's own output and its
gradient of the pre-softmax score matches ``tf.GradientTape`` (float64 copy of the same weights, tie-aware).

Keras fixes its backend once per process, and this process may run Keras on torch (tests/test_keras.py), so every
TensorFlow step runs in a subprocess (model_zoo/tf_keras.py) and hands its arrays back as .npz files.

Oracle: ``tf.GradientTape`` through a float64 copy of the Keras model (the float32 weights cast up). Where a ReLU /
ReLU6 input or a MaxPool window of a row lies within float32 rounding of its kink, float32 and float64 take
different branches and their gradients differ by whole terms (ResNet-50: 3e-2 of max on single rows, TensorFlow's
own float32 gradient as much as onnxruntime's); there the float64 tape takes the explainer's branch, only for units
within 2**-14 of the row's max from the kink (model_zoo/tf_tie_oracle.py, the rule of model_zoo/tie_oracle.py), and a
unit beyond that bound fails the test. Both errors are printed: plain float64 and tie-aware.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from oracle import rel_err

import xcompile
from model_zoo.tf_tie_oracle import save_decisions
from model_zoo.tie_oracle import ProbedExplainer

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / "model_zoo" / "tf_keras.py"
GRAD_TOL = 1e-4    # of max |reference gradient|
SCORE_TOL = 1e-4   # of max |Keras float32 output|: onnxruntime's float32 forward vs TensorFlow's (ResNet-50 7.8e-5)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
    reason="needs tensorflow and tf2onnx (pip install -e '.[test]')")


def run_helper(*args: str, timeout: int = 1200) -> str:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", TF_NUM_INTRAOP_THREADS="1",
               TF_NUM_INTEROP_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(HELPER), *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{HELPER.name} {' '.join(args)} failed:\n{r.stderr[-4000:]}"
    return r.stderr


def check_model(name: str, tmp_path: Path, size: int, converters=("tf2onnx", "export")):
    t0 = time.perf_counter()
    out = tmp_path / name
    common = ["--model", name, "--size", str(size), "--out", str(out)]
    log = run_helper(*common, "--converters", ",".join(converters))
    print(log.strip().splitlines()[-2])
    ref = np.load(out / "reference.npz")
    x, target = ref["x"], ref["target"]
    runs = {}
    for conv in converters:
        for head in ("softmax", "logits"):
            path = out / f"{conv}_{head}.onnx"
            probed = ProbedExplainer(xcompile.compile(str(path), "gradient"))
            exp, decisions = probed.explain(x, target)
            save_decisions(decisions, out / f"{conv}_{head}.npz")
            runs[conv, head] = exp, len(decisions.probes)
    run_helper(*common, "--tie-aware", *[str(out / f"{c}_{h}.npz") for c, h in runs])
    own_argmax = ref["logits64"].argmax(1)
    for (conv, head), (exp, n_probes) in runs.items():
        stem = out / f"{conv}_{head}"
        tie_ref = np.load(f"{stem}_tie_aware.npy")
        info = json.loads(Path(f"{stem}_tie_aware.json").read_text())
        own = ref["probabilities"] if head == "softmax" else ref["logits32"]
        score_err = rel_err(exp.scores, own)
        plain, tie = rel_err(exp.relevance, ref["grad64"]), rel_err(exp.relevance, tie_ref)
        print(f"{name} {size}px {conv} {head}: scores {score_err:.1e}; gradient vs float64 tape {plain:.1e}, "
              f"tie-aware {tie:.1e} ({info['summary']}; kinked calls {info['calls']}); TensorFlow float32 vs float64 "
              f"{rel_err(ref['grad32'], ref['grad64']):.1e}")
        assert exp.scores.shape == own.shape and score_err <= SCORE_TOL
        assert exp.relevance.shape == x.shape
        assert list(exp.predicted) == [t if t >= 0 else own_argmax[i] for i, t in enumerate(target)]
        assert not info["violations"], info["violations"]
        # every kinked Keras call found its ONNX row (else the helper fails); a model with kinks made such calls
        assert (sum(info["calls"].values()) > 0) == (n_probes > 0)
        assert tie <= GRAD_TOL
        assert np.abs(tie_ref).max() > 1e-3  # the gradient reaches the input: not a vacuous comparison
    print(f"{name}: {time.perf_counter() - t0:.1f}s")


def test_functional_cnn(tmp_path):
    """Conv2D + BatchNormalization + ReLU, MaxPooling2D, a residual Add, a Concatenate of two branches,
    GlobalAveragePooling2D, Dense + ReLU, Dense (+ Softmax)."""
    check_model("cnn", tmp_path, size=32)


def test_mobilenetv2_tf2onnx(tmp_path):
    """keras.applications.MobileNetV2 (ReLU6 -> Clip, depthwise convolutions, ZeroPadding2D, residual Adds);
    tf2onnx only in the default run (both converters: the slow test below)."""
    check_model("mobilenetv2", tmp_path, size=32, converters=("tf2onnx",))


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("mobilenetv2", 64), ("efficientnetb0", 32), ("resnet50", 32)])
def test_keras_applications(name, size, tmp_path):
    """keras.applications with both converters: MobileNetV2, EfficientNetB0 (Rescaling, Normalization, swish,
    squeeze-and-excitation Multiply), ResNet50 (ZeroPadding2D + MaxPooling2D 3x3/2, residual Adds; tf2onnx's
    conversion of it peaks near 10 GB of memory)."""
    check_model(name, tmp_path, size=size)
