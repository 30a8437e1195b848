"""Keras models on the TensorFlow backend, converted to ONNX, with their TensorFlow reference gradients.

    python model_zoo/tf_keras.py --model cnn|mobilenetv2|resnet50|efficientnetb0|tie --out DIR [--size 32]
                                 [--rows 4] [--converters tf2onnx,export]
    python model_zoo/tf_keras.py --model ... --out DIR --tie-aware DECISIONS.npz [...]

Keras fixes its backend once per process, so the tests run this script in a subprocess (it sets
KERAS_BACKEND=tensorflow before keras is imported) and read its .npz files back.

Models (``weights=None``, random weights, 10 classes, channels-last input [N, size, size, 3]):

- ``cnn``: a small functional CNN (Conv2D / BatchNormalization / ReLU / MaxPooling2D, a residual Add and a
  Concatenate, GlobalAveragePooling2D, Dense)
- ``mobilenetv2``, ``resnet50``, ``efficientnetb0``: ``keras.applications`` with ``include_top=True``
- ``tie``: a [2, 4, 1] image built to sit at float32 kinks (see TIE_X), for the tie-aware oracle's own test

Each model is built ending in a Softmax (``classifier_activation="softmax"``: a Dense with a softmax activation);
its twin without it (the same layers, the last Dense linear) outputs the logits. Every BatchNormalization gets the
mean and variance of its own input on 32 seeded N(0, 1) images (the explained rows among them) and a random
scale/shift, so the random network keeps its signal through its depth (logits ~1, not ~0).

Build writes DIR/{converter}_{softmax,logits}.onnx, DIR/weights.npz and DIR/reference.npz. Converters:
``tf2onnx`` = ``tf2onnx.convert.from_keras(model, input_signature, opset=17)``; ``export`` = Keras 3's
``model.export(path, format="onnx")`` (TensorFlow backend; it calls tf2onnx with Keras' default opset, 15).

reference.npz: ``x`` (float32 input rows), ``target`` (int64, -1 = the predicted class), ``probabilities`` /
``probabilities64`` (the Softmax model's own output, float32 / float64 copy), ``logits32`` / ``logits64`` (the
pre-softmax scores), ``grad32`` / ``grad64`` (d logits[target] / d x by ``tf.GradientTape``, float32 model /
float64 copy of the same weights; the target -1 resolved to the argmax of that model's logits), ``kinks64`` (per
row, the smallest |pre-activation - kink| / max|pre-activation of that layer's row| over every ReLU / ReLU6 input
and MaxPool window of the float64 copy: how close the row comes to a float32 near-tie).

--tie-aware: for each decisions file (the kink inputs of one explainer run, written by the test with
``model_zoo.tf_tie_oracle.save_decisions``) the float64 tape that takes that run's branch at float32 near-ties:
``<file>_tie_aware.npy`` (the gradient) and ``<file>_tie_aware.json`` (forced units, violations).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = ("cnn", "mobilenetv2", "resnet50", "efficientnetb0", "tie")
# "tie": (x + 1) - 1 (two 1x1 convolutions) -> ReLU -> MaxPool 2x2 -> Dense on one [2, 4, 1] image built to sit
# at float32 kinks (the construction of tests/models/test_tie_oracle.py, channels-last): exact in float64, but in float32
# 2**-25 rounds to 0 (a ReLU off in float32, on in float64) and 0.25 + 2**-25 to 0.25 (a MaxPool tie in float32, a
# winner in float64). -1e-4: a unit clearly off, 2e-4 of the row max from its kink = 3x the near-tie bound, for the
# test that a wrong branch is not excused.
TINY = 2.0 ** -25
TIE_X = np.array([[0.25, 0.25 + TINY, -0.5, TINY], [0.10, 0.20, -1e-4, -0.2]], np.float64)[None, :, :, None]
CONVERTERS = ("tf2onnx", "export")
N_CLASSES = 10


def build(name: str, size: int, softmax: bool):
    """A fresh, uncalibrated Keras model in the current floatx (seeded: the same weights in float32 and float64
    after ``set_weights``)."""
    import keras

    act = "softmax" if softmax else None
    shape = (size, size, 3)
    if name == "tie":
        inp = keras.Input(TIE_X.shape[1:], name="input")
        # two 1x1 convolutions (x + 1, then - 1): tf2onnx's optimizer folds (x + 1) - 1 written as Add, Sub into x + 0
        z = keras.layers.Conv2D(1, 1, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(1.0),
                                name="plus_one")(inp)
        z = keras.layers.Conv2D(1, 1, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(-1.0),
                                name="minus_one")(z)
        x = keras.layers.MaxPooling2D(2, name="pool")(keras.layers.ReLU(name="relu")(z))
        out = keras.layers.Dense(N_CLASSES, activation=act, name="scores")(keras.layers.Flatten(name="flatten")(x))
        return keras.Model(inp, out, name="float32_tie")
    if name == "cnn":
        inp = keras.Input(shape, name="input")
        x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inp)
        x = keras.layers.BatchNormalization(name="bn1")(x)
        x = keras.layers.ReLU(name="relu1")(x)
        x = keras.layers.MaxPooling2D(2, name="pool1")(x)
        y = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2a")(x)
        y = keras.layers.Conv2D(16, 3, padding="same", name="conv2b")(y)
        x = keras.layers.Add(name="residual")([x, y])
        x = keras.layers.Activation("relu", name="relu2")(x)
        a = keras.layers.Conv2D(8, 1, activation="relu", name="branch_a")(x)
        b = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="branch_b")(x)
        x = keras.layers.Concatenate(name="concat")([a, b])
        x = keras.layers.MaxPooling2D(2, name="pool2")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
        out = keras.layers.Dense(N_CLASSES, activation=act, name="scores")(x)
        return keras.Model(inp, out, name="functional_cnn")
    apps = {"mobilenetv2": keras.applications.MobileNetV2, "resnet50": keras.applications.ResNet50,
            "efficientnetb0": keras.applications.EfficientNetB0}
    return apps[name](input_shape=shape, weights=None, classes=N_CLASSES, classifier_activation=act)


def calibrate_batchnorm(model, x: np.ndarray, seed: int = 0) -> None:
    """Every BatchNormalization gets gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1) and, as moving statistics, the mean /
    variance of its own input on ``x``: one forward pass in training mode with momentum 0 and dropout off (each
    layer then normalizes with the batch statistics it stores, so every layer sees its input as calibrated)."""
    import keras

    rng = np.random.default_rng(seed)
    saved = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(gamma.dtype),
                               rng.normal(0, 0.1, beta.shape).astype(beta.dtype), mean, var])
            saved.append((layer, "momentum", layer.momentum))
            layer.momentum = 0.0
        elif isinstance(layer, keras.layers.Dropout):
            saved.append((layer, "rate", layer.rate))
            layer.rate = 0.0
    model([x], training=True)
    for layer, attr, value in saved:
        setattr(layer, attr, value)


def logits_model(model):
    """The same layers up to the pre-softmax scores: the last Dense's softmax activation left out."""
    import keras

    last = model.layers[-1]
    if getattr(last, "activation", None) is not keras.activations.softmax:
        return model
    cfg = last.get_config()
    cfg["activation"] = "linear"
    head = keras.layers.Dense.from_config(cfg)
    out = head(last.input)
    head.set_weights(last.get_weights())
    return keras.Model(model.inputs, out)


def tape_gradient(model, x, target):
    import tensorflow as tf

    xt = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = model([xt], training=False)
        t = np.where(target < 0, np.asarray(logits).argmax(1), target)
        picked = tf.reduce_sum(tf.gather(logits, t, axis=1, batch_dims=1))
    return np.asarray(logits), np.asarray(tape.gradient(picked, xt))


def kink_distances(model, x) -> np.ndarray:
    """Per row: min over ReLU / ReLU6 / MaxPool inputs of the distance to a kink relative to that row's max."""
    import keras

    taps, kinds = [], []
    for layer in model.layers:
        act = getattr(layer, "activation", None)
        if isinstance(layer, keras.layers.ReLU):
            kinds.append([0.0] + ([float(layer.max_value)] if layer.max_value is not None else []))
            taps.append(layer.input)
        elif isinstance(layer, keras.layers.MaxPooling2D):
            kinds.append("pool")
            taps.append(layer.input)
        elif act is keras.activations.relu and not isinstance(layer, keras.layers.InputLayer):
            kinds.append([0.0])
            cfg = layer.get_config()  # the pre-activation: the same layer without its activation
            cfg["activation"], cfg["name"] = "linear", layer.name + "_preactivation"
            twin = type(layer).from_config(cfg)
            twin.build(layer.input.shape)
            twin.set_weights(layer.get_weights())
            taps.append(twin(layer.input))
    if not taps:
        return np.full(len(x), np.inf)
    values = keras.Model(model.inputs, taps)([x], training=False)
    values = values if isinstance(values, (list, tuple)) else [values]
    best = np.full(len(x), np.inf)
    for z, kind in zip(values, kinds):
        z = np.asarray(z, np.float64).reshape(len(x), -1) if kind != "pool" else np.asarray(z, np.float64)
        scale = np.abs(z.reshape(len(x), -1)).max(1) + 1e-30
        if kind == "pool":  # the gap between the two largest values of a 2x2 window (Keras' pools here are 2x2 or
            n, h, w, c = z.shape  # 3x3/2 with padding: the 2x2 proxy is recorded for the pools of the functional CNN)
            win = z[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4)
            win = np.sort(win.reshape(n, -1, 4), axis=-1)
            gap = win[..., -1] - win[..., -2]
            d = np.where(win[..., -1] > 0, gap, np.inf).min(1)  # a tie of zeros after a ReLU routes nothing
        else:
            d = np.min([np.abs(z - k).min(1) for k in kind], axis=0)
        best = np.minimum(best, d / scale)
    return best


def _weights_path(out: Path) -> Path:
    return out / "weights.npz"


def build_all(args) -> None:
    """The model (with --softmax: ending in a Softmax), its logits twin, their ONNX files, the reference."""
    import keras
    import tensorflow as tf

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # the explained rows are among the calibration images: at 32 px the last stages of the keras.applications
    # models are 1x1 (EfficientNetB0: BatchNorm statistics of one value per image), where a row outside the
    # calibration batch lands far from its statistics (logits ~500 instead of ~5)
    calib = rng.standard_normal((32, args.size, args.size, 3)).astype(np.float32)
    x = calib[:args.rows].copy()
    target = np.array([(3 * i) % N_CLASSES for i in range(args.rows - 1)] + [-1], np.int64)
    if args.model == "tie":  # the constructed image once per class
        x, target = np.repeat(TIE_X, N_CLASSES, 0).astype(np.float32), np.arange(N_CLASSES, dtype=np.int64)

    keras.utils.set_random_seed(0)
    model = build(args.model, args.size, softmax=True)
    if args.model != "tie":
        calibrate_batchnorm(model, calib)
    weights = model.get_weights()
    np.savez(_weights_path(out), *weights)
    logits = logits_model(model)
    probabilities = np.asarray(model([x], training=False))
    logits32, grad32 = tape_gradient(logits, x, target)
    model64 = float64_copy(args.model, args.size, weights)
    logits64, grad64 = tape_gradient(logits_model(model64), x.astype(np.float64), target)
    probabilities64 = np.asarray(model64([x.astype(np.float64)], training=False))
    kinks64 = kink_distances(model64, x.astype(np.float64))
    assert grad64.dtype == np.float64 and logits64.dtype == np.float64

    for conv in args.converters.split(","):
        for name, m in (("softmax", model), ("logits", logits)):
            path = out / f"{conv}_{name}.onnx"
            if conv == "tf2onnx":
                import tf2onnx

                spec = (tf.TensorSpec((None, *x.shape[1:]), tf.float32, name="input"),)
                tf2onnx.convert.from_keras(m, input_signature=spec, opset=17, output_path=str(path))
            else:
                m.export(str(path), format="onnx", verbose=False)
    np.savez(out / "reference.npz", x=x, target=target, probabilities=probabilities,
             probabilities64=probabilities64, logits32=logits32,
             logits64=logits64, grad32=grad32, grad64=grad64, kinks64=kinks64)
    print(f"{args.model}: {model.count_params()} params, |logits| max {np.abs(logits64).max():.3g}, "
          f"float32 vs float64 gradient {np.abs(grad32 - grad64).max() / np.abs(grad64).max():.2e}, "
          f"nearest kink {kinks64.min():.1e}", file=sys.stderr)


def float64_copy(name: str, size: int, weights):
    """The same architecture in float64 with the given (float32) weights. The global dtype policy is fixed by the
    first layer built, so it is set too, not only floatx."""
    import keras

    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        keras.utils.set_random_seed(0)
        model64 = build(name, size, softmax=True)
        model64.set_weights([w.astype(np.float64) for w in weights])
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    return model64


def tie_aware_all(args) -> None:
    """For each decisions file written by the test (the kink inputs of one explainer run, see
    model_zoo/tie_oracle.py): the float64 gradient that takes that run's branch at float32 near-ties."""
    import json

    from model_zoo.tf_tie_oracle import TFTieAware, load_decisions

    out = Path(args.out)
    ref = np.load(out / "reference.npz")
    with np.load(_weights_path(out)) as w:
        weights = [w[f"arr_{i}"] for i in range(len(w.files))]
    model64 = logits_model(float64_copy(args.model, args.size, weights))
    x = ref["x"].astype(np.float64)
    for path in args.decisions:
        decisions = load_decisions(path)
        with TFTieAware(decisions) as tie:
            _, grad = tape_gradient(model64, x, ref["target"])
        stem = Path(path).with_suffix("")
        np.save(f"{stem}_tie_aware.npy", grad)
        Path(f"{stem}_tie_aware.json").write_text(json.dumps(
            {"forced": tie.forced, "calls": tie.calls, "worst": tie.worst, "violations": tie.violations,
             "summary": tie.summary()}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=MODELS, required=True)
    ap.add_argument("--converters", default="tf2onnx,export", help="comma-separated: tf2onnx, export")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tie-aware", dest="decisions", nargs="+", metavar="DECISIONS_NPZ",
                    help="instead of building: the tie-aware float64 gradient for each decisions file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.decisions:
        tie_aware_all(args)
    else:
        build_all(args)
    print(f"done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
