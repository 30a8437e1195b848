"""Keras 3 recurrent classifiers on the TensorFlow backend converted by tf2onnx (a ``Loop`` whose body reads outer
tensors: tf2onnx's ``while`` pattern), with their ``tf.GradientTape`` reference gradients.

    python model_zoo/tf_recurrent.py --models gru,masked_lstm_nobias[,masked_lstm,gru_nobias] --out DIR

- ``gru``: float input [N, 5, 3] -> GRU(4) -> Dense(3)
- ``masked_lstm``: float input [N, 6, 3] -> Masking(0.0) -> LSTM(4) -> Dense(3); two rows end in all-zero padding
  steps, which the mask skips
- ``mask_zero_lstm``: token ids [N, 6] -> Embedding(12, 3, mask_zero=True) -> LSTM(4) -> Dense(3), rows padded
  with id 0; ``grad`` is with respect to the embedding output [N, L, D]

Biases are drawn N(0, 0.05²) (Keras' zero default would hide them); ``*_nobias``: the same without any bias
(use_bias=False): LRP's conservation is then exact up to the stabilizers.

Writes DIR/MODEL/model.onnx (``tf2onnx.convert.from_keras``, opset 17) and DIR/MODEL/reference.npz: ``x`` (the input rows),
``logits``, ``target`` and ``grad`` (d logits[target] / d input by ``tf.GradientTape``). Keras fixes its backend once per
process, so the tests run this script in a subprocess (tests/load/test_controlflow_tf.py)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    for name in a.models.split(","):
        build(name, Path(a.out) / name)


def build(name: str, out: Path) -> None:
    import keras
    import tensorflow as tf
    import tf2onnx
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    bias = not name.endswith("_nobias")
    init = keras.initializers.RandomNormal(stddev=0.05, seed=1)
    dense = keras.layers.Dense(3, use_bias=bias, bias_initializer=init)
    if name.startswith("gru"):
        inp = keras.Input((5, 3))
        model = keras.Model(inp, dense(keras.layers.GRU(4, use_bias=bias, bias_initializer=init)(inp)))
        sig = [tf.TensorSpec((None, 5, 3), tf.float32)]
        x = rng.standard_normal((3, 5, 3)).astype(np.float32)
    elif name.startswith("masked_lstm"):
        inp = keras.Input((6, 3))
        model = keras.Model(inp, dense(keras.layers.LSTM(4, use_bias=bias, bias_initializer=init)(keras.layers.Masking(0.0)(inp))))
        sig = [tf.TensorSpec((None, 6, 3), tf.float32)]
        x = rng.standard_normal((3, 6, 3)).astype(np.float32)
        x[0, 4:] = 0  # padded steps: the mask skips them (the state passes through)
        x[2, 2:] = 0
    elif name == "mask_zero_lstm":
        inp = keras.Input((6,), dtype="int32")
        emb = keras.layers.Embedding(12, 3, mask_zero=True)
        rnn = keras.layers.LSTM(4, bias_initializer=init)
        model = keras.Model(inp, dense(rnn(emb(inp))))
        sig = [tf.TensorSpec((None, 6), tf.int32)]
        x = rng.integers(1, 12, (3, 6)).astype(np.int32)
        x[0, 4:] = 0  # padding (id 0): the mask skips these steps
        x[2, 2:] = 0
        xt = tf.constant(x)
        e = emb(xt)
        with tf.GradientTape() as tape:  # with respect to the embedding output E [N, L, D]
            tape.watch(e)
            logits = dense(rnn(e, mask=emb.compute_mask(xt)))
            target = tf.argmax(logits, axis=1)
            score = tf.reduce_sum(tf.gather(logits, target, batch_dims=1))
        grad = tape.gradient(score, e).numpy()
        tf2onnx.convert.from_keras(model, input_signature=sig, opset=17, output_path=str(out / "model.onnx"))
        np.savez(out / "reference.npz", x=x, logits=logits.numpy(), target=target.numpy().astype(np.int64), grad=grad)
        return
    else:
        raise SystemExit(f"unknown model {name!r}")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = model(xt)
        target = tf.argmax(logits, axis=1)
        score = tf.reduce_sum(tf.gather(logits, target, batch_dims=1))
    grad = tape.gradient(score, xt).numpy()
    tf2onnx.convert.from_keras(model, input_signature=sig, opset=17, output_path=str(out / "model.onnx"))
    np.savez(out / "reference.npz", x=x, logits=logits.numpy(), target=target.numpy().astype(np.int64), grad=grad)


if __name__ == "__main__":
    main()
