"""Keras 3 text classifiers (Embedding -> LSTM / GRU / Bidirectional LSTM / Conv1D) on the TensorFlow backend,
converted to ONNX, with their TensorFlow reference gradients at the embedding output.

    python model_zoo/tf_keras_text.py --model lstm|gru|bilstm|conv1d --out DIR [--converters tf2onnx,export]

Keras fixes its backend once per process, so the tests run this script in a subprocess (tests/load/test_contrib_keras.py)
and read its .npz files back. Keras 3 wraps the token ids in index arithmetic before the look-up (negative ids
wrapped: Less / Add / Where; Cast), which the converters keep.

Writes DIR/{converter}.onnx (``tf2onnx`` = ``tf2onnx.convert.from_keras(model, int32 signature, opset=17)``;
``export`` = Keras 3's ``model.export(path, format="onnx")``) and DIR/reference.npz: ``ids`` (int32 [N, L]),
``logits`` (the model's output), ``embedding`` (E = the Embedding layer's output) and ``grad`` (d logits[target] / dE
by ``tf.GradientTape``, float32, target = the argmax)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

MODELS = ("lstm", "gru", "bilstm", "conv1d")
VOCAB, LENGTH, WIDTH, CLASSES = 50, 10, 8, 3


def build(name: str):
    """(full model: ids -> logits, embedding layer, body: E -> logits), seeded."""
    import keras

    keras.utils.set_random_seed(0)
    emb = keras.layers.Embedding(VOCAB, WIDTH, name="embedding")
    layers = {"lstm": lambda: [keras.layers.LSTM(6, name="lstm")],
              "gru": lambda: [keras.layers.GRU(6, name="gru")],
              "bilstm": lambda: [keras.layers.Bidirectional(keras.layers.LSTM(5), name="bilstm")],
              "conv1d": lambda: [keras.layers.Conv1D(6, 3, activation="relu", name="conv"),
                                 keras.layers.GlobalMaxPooling1D(name="pool")]}[name]()
    e_in = keras.Input((LENGTH, WIDTH), name="embedded")
    x = e_in
    for layer in layers:
        x = layer(x)
    body = keras.Model(e_in, keras.layers.Dense(CLASSES, name="scores")(x), name="body")
    ids = keras.Input((LENGTH,), dtype="int32", name="ids")
    model = keras.Model(ids, body(emb(ids)), name=f"text_{name}")
    return model, emb, body


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=MODELS, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--converters", default="tf2onnx,export")
    a = ap.parse_args(argv)
    import tensorflow as tf

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model, emb, body = build(a.model)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (3, LENGTH)).astype(np.int32)
    for conv in a.converters.split(","):
        path = out / f"{conv}.onnx"
        if conv == "tf2onnx":
            import tf2onnx

            spec = (tf.TensorSpec((None, LENGTH), tf.int32, name="ids"),)
            tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
        else:
            model.export(str(path), format="onnx", verbose=False)
    e = emb(ids)
    with tf.GradientTape() as tape:
        tape.watch(e)
        logits = body(e)
        target = np.asarray(logits).argmax(1)
        picked = tf.reduce_sum(tf.gather(logits, target, axis=1, batch_dims=1))
    grad = tape.gradient(picked, e)
    np.savez(out / "reference.npz", ids=ids, logits=np.asarray(model(ids)), embedding=np.asarray(e),
             grad=np.asarray(grad), target=target.astype(np.int64))
    print(f"{a.model}: wrote {sorted(p.name for p in out.iterdir())}", file=sys.stderr)


if __name__ == "__main__":
    main()
