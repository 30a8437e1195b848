"""Keras 2 (the ``tf_keras`` package, ``TF_USE_LEGACY_KERAS=1``) models converted by ``tf2onnx.convert.from_keras``,
with their ``tf.GradientTape`` reference gradients: the files older TensorFlow pipelines still write.

    python -m model_zoo.tf_keras_legacy --out DIR

(as a module: run as a script, model_zoo/tf_keras.py would shadow the ``tf_keras`` package).

Keras fixes its implementation once per process, so the test runs this script in a subprocess and reads its .npz
back. Two seeded models, random weights (BatchNormalization statistics set from its own input so the signal
survives):

- ``cnn``: Conv2D + ReLU, MaxPooling2D, BatchNormalization, a residual Add, GlobalAveragePooling2D, Dense (5 logits),
  channels-last input [N, 12, 12, 3]
- ``text``: Embedding(mask_zero=True) → LSTM → Dense (3 logits) on int32 ids [N, 10]; row 0 is padded with id 0, so
  the mask path (tf2onnx writes it as Loop/Where arithmetic) is on the relevance path

DIR/{cnn,text}.onnx and DIR/reference.npz: ``x``, ``ids``, ``cnn_logits``, ``text_logits`` (the Keras models' own
float32 outputs), ``cnn_grad`` (d logit[argmax] / d x) and ``text_grad`` (d logit[argmax] / d embedding output,
masked steps included), both by ``tf.GradientTape`` through the float32 model.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build(out: Path) -> None:
    import numpy as np
    import tensorflow as tf
    import tf2onnx
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 12, 12, 3)).astype(np.float32)
    ids = rng.integers(1, 50, size=(3, 10)).astype(np.int32)
    ids[0, 7:] = 0

    inp = keras.layers.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    bn = keras.layers.BatchNormalization()
    h = bn(h)
    r = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(h)
    h = keras.layers.Add()([h, r])
    h = keras.layers.GlobalAveragePooling2D()(h)
    cnn = keras.Model(inp, keras.layers.Dense(5)(h))
    pre = keras.Model(inp, cnn.layers[2].output)(x).numpy()          # BatchNormalization's input
    bn.set_weights([rng.uniform(0.5, 1.5, 8).astype(np.float32), rng.normal(0, 0.1, 8).astype(np.float32),
                    pre.mean((0, 1, 2)), pre.var((0, 1, 2)) + 1e-3])

    text = keras.Sequential([keras.layers.Input((10,), dtype="int32"), keras.layers.Embedding(50, 8, mask_zero=True),
                             keras.layers.LSTM(6), keras.layers.Dense(3)])

    out.mkdir(parents=True, exist_ok=True)
    tf2onnx.convert.from_keras(cnn, input_signature=[tf.TensorSpec((None, 12, 12, 3), tf.float32, name="x")],
                               opset=17, output_path=str(out / "cnn.onnx"))
    tf2onnx.convert.from_keras(text, input_signature=[tf.TensorSpec((None, 10), tf.int32, name="ids")],
                               opset=17, output_path=str(out / "text.onnx"))

    with tf.GradientTape() as tape:
        xt = tf.constant(x)
        tape.watch(xt)
        cnn_logits = cnn(xt)
        top = tf.reduce_max(cnn_logits, axis=1)     # each row's argmax logit
    cnn_grad = tape.gradient(top, xt)
    embedding, lstm, dense = text.layers
    with tf.GradientTape() as tape:
        e = embedding(ids)
        tape.watch(e)
        text_logits = dense(lstm(e, mask=embedding.compute_mask(ids)))
        top = tf.reduce_max(text_logits, axis=1)
    text_grad = tape.gradient(top, e)
    np.savez(out / "reference.npz", x=x, ids=ids, cnn_logits=cnn_logits.numpy(), text_logits=text_logits.numpy(),
             cnn_grad=cnn_grad.numpy(), text_grad=text_grad.numpy(), keras_version=keras.__version__)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    build(ap.parse_args().out)
