"""Keras models on the TensorFlow backend, converted by ``tf2onnx.convert.from_keras`` (opset 17) and by Keras 3's
``model.export(path, format="onnx")``, compile; the explainer's scores are the Keras model's own output and its
gradient of the pre-softmax score matches ``tf.GradientTape`` (float64 copy of the same weights, tie-aware).

Keras fixes its backend once per process, and this process may run Keras on torch (tests/load/test_keras.py), so every
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

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "model_zoo" / "tf_keras.py"
GRAD_TOL = 1e-4    # of max |reference gradient|
# of max |output| of the float64 Keras copy: ResNet-50's float32 forward is 4.6e-5 (onnxruntime) / 7.3e-5 (TensorFlow)
# from it, in opposite directions (1.1e-4 from each other)
SCORE_TOL = 1e-4

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
        own = ref["probabilities64"] if head == "softmax" else ref["logits64"]
        own32 = ref["probabilities"] if head == "softmax" else ref["logits32"]
        score_err = rel_err(exp.scores, own)
        plain, tie = rel_err(exp.relevance, ref["grad64"]), rel_err(exp.relevance, tie_ref)
        print(f"{name} {size}px {conv} {head}: scores {score_err:.1e} (Keras float32 {rel_err(exp.scores, own32):.1e}, "
              f"TensorFlow's own {rel_err(own32, own):.1e}); gradient vs float64 tape {plain:.1e}, "
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
@pytest.mark.parametrize("name,size", [("mobilenetv2", 64), ("efficientnetb0", 64), ("resnet50", 32)])
def test_keras_applications(name, size, tmp_path):
    """keras.applications with both converters: MobileNetV2, EfficientNetB0 (Rescaling, Normalization, swish,
    squeeze-and-excitation Multiply; at 64 px: at 32 px its 1x1 last stages make float32 itself miss, TensorFlow's
    own float32 gradient is 2.4e-4 from float64 there and onnxruntime's 1.4e-4 to 2.7e-4 by optimization level,
    with no kink in the model), ResNet50 (ZeroPadding2D + MaxPooling2D 3x3/2, residual Adds; tf2onnx's
    conversion of it peaks near 10 GB of memory)."""
    check_model(name, tmp_path, size=size)


def test_tie_aware_oracle_on_a_constructed_float32_tie(tmp_path):
    """model_zoo/tf_keras.py's "tie" model: a ReLU input and a MaxPool window at float32 rounding of their kinks
    (the construction of tests/models/test_tie_oracle.py, channels-last, through tf2onnx). Plain float64 differs from the
    float32 explainer by whole terms; the tie-aware tape takes the explainer's branch at exactly those units and
    then agrees. A unit far from its kink on another branch is a violation, not excused."""
    out = tmp_path / "tie"
    common = ["--model", "tie", "--out", str(out)]
    run_helper(*common, "--converters", "tf2onnx")
    ref = np.load(out / "reference.npz")
    probed = ProbedExplainer(xcompile.compile(str(out / "tf2onnx_logits.onnx"), "gradient"))
    exp, decisions = probed.explain(ref["x"], ref["target"])
    save_decisions(decisions, out / "real.npz")
    relu = next(p for p in decisions.probes if p.op_type == "Relu")
    wrong = decisions.values[relu.x].copy()  # as if the explainer's forward had put the unit at -1e-4 (second image
    flat = wrong.reshape(len(wrong), -1)     # row; C = 1: the same order in NCHW) on the other side of its kink
    assert np.allclose(flat[:, 6], -1e-4, atol=1e-6)
    flat[:, 6] = 1e-4
    decisions.values[relu.x] = flat.reshape(wrong.shape)
    save_decisions(decisions, out / "wrong.npz")
    run_helper(*common, "--tie-aware", str(out / "real.npz"), str(out / "wrong.npz"))
    info = json.loads((out / "real_tie_aware.json").read_text())
    tie_ref = np.load(out / "real_tie_aware.npy")
    plain, tie = rel_err(exp.relevance, ref["grad64"]), rel_err(exp.relevance, tie_ref)
    print(f"constructed tie: plain float64 {plain:.2e}, tie-aware {tie:.2e} ({info['summary']})")
    assert not info["violations"]
    # per row (the image once per class): the ReLU unit at 2**-25, and both MaxPool windows: 0.25 vs 0.25 + 2**-25,
    # and the window whose float32 values are all 0 after the ReLU where float64's winner is 2**-25
    n = len(ref["x"])
    assert info["forced"].get("relu") == n and info["forced"].get("max_pool") == 2 * n
    assert info["worst"] <= 2.0 ** -14
    assert tie < 1e-6 and plain > 0.1
    wrong_info = json.loads((out / "wrong_tie_aware.json").read_text())
    assert wrong_info["violations"] and "near-tie bound" in wrong_info["violations"][0]
