"""The tie-aware float64 oracle of model_zoo/tie_oracle.py for Keras models on the TensorFlow backend.

Same rule: a float64 ``tf.GradientTape`` through the Keras model, except that a ReLU / ReLU6 unit or a MaxPool
window whose float32 input (read from the explainer's own run, ``ProbedExplainer``) lies on another branch than
float64 takes the explainer's branch -- allowed only for a genuine near-tie, |z64 - kink| <= TIE_TOL * max|z64 of
that row| (for MaxPool |z64[winner32] - z64[winner64]|); a unit beyond that bound is a violation and fails
``check()``. Everything else is TensorFlow's own float64 computation.

How: inside ``with TFTieAware(decisions):`` the Keras TensorFlow backend's ``relu``, ``relu6`` and ``max_pool``
(what ``keras.layers.ReLU``, ``activation="relu"`` and ``MaxPooling2D`` call) are replaced by versions that match
each row of their input by value to a row of the ONNX kink inputs (the ONNX tensors are channels-first after
tf2onnx's Transposes: a channels-last Keras row is matched transposed, else as it is) and take the ONNX branch.
Run the model eagerly (``model(x)``, not a compiled function).

The decisions travel between processes as .npz (``save_decisions`` in the test process, ``load_decisions`` in the
TensorFlow process).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from model_zoo.tie_oracle import Decisions, Probe, TieLedger


def save_decisions(decisions: Decisions, path) -> None:
    arrays = {f"value{i}": v for i, v in enumerate(decisions.values.values())}
    names = list(decisions.values)
    np.savez(path, probes=np.array(json.dumps([dataclasses.asdict(p) for p in decisions.probes])),
             names=np.array(json.dumps(names)), **arrays)


def load_decisions(path) -> Decisions:
    with np.load(path) as d:
        probes = [Probe(**p) for p in json.loads(str(d["probes"]))]
        names = json.loads(str(d["names"]))
        values = {n: d[f"value{i}"] for i, n in enumerate(names)}
    return Decisions(probes, values)


def _channels_first(row: np.ndarray) -> np.ndarray:
    return np.moveaxis(row, -1, 0) if row.ndim >= 2 else row


def _channels_last(row: np.ndarray) -> np.ndarray:
    return np.moveaxis(row, 0, -1) if row.ndim >= 2 else row


class TFTieAware(TieLedger):
    """``forced`` (op -> units forced), ``calls``, ``worst`` (largest |z64 - kink| / row max among forced units),
    ``violations`` (differing units beyond TIE_TOL)."""

    def __init__(self, decisions: Decisions):
        super().__init__()
        self.decisions = decisions
        self._saved = None

    def summary(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.forced.items())) or "none"
        return f"forced units: {ops} (worst {self.worst:.1e} of row max from the kink)"

    def _match(self, kinds, row64):
        """(probe, row index, float32 row in row64's layout) of the ONNX row that row64 is."""
        first = _channels_first(row64)
        try:
            p, j, z32 = self.decisions.match(kinds, first)
            return p, j, _channels_last(z32), True
        except AssertionError:
            if first.shape == row64.shape and row64.ndim < 2:
                raise
            p, j, z32 = self.decisions.match(kinds, row64)
            return p, j, z32, False

    # elementwise kinks --------------------------------------------------------------------------------------
    def _elementwise(self, op, kinds, x, original, region, kinks):
        import tensorflow as tf

        z64 = np.asarray(x, np.float64)
        regions = np.empty(z64.shape, np.int8)
        for b in range(z64.shape[0]):
            _, _, z32, _ = self._match(kinds, z64[b])
            r32, r64 = region(z32.astype(np.float32)), region(z64[b])
            dist = np.min([np.abs(z64[b] - k) for k in kinks], axis=0)
            self._record(op, r32 != r64, dist, max(float(np.abs(z64[b]).max()), 1e-30))
            regions[b] = r32
        deriv = tf.constant(regions.astype(z64.dtype), dtype=x.dtype)

        @tf.custom_gradient
        def kinked(z):
            return original(z), lambda g: g * deriv
        return kinked(x)

    def relu(self, x):
        return self._elementwise("relu", ("Relu",), x, self._saved["relu"], lambda z: (z > 0).astype(np.int8), [0.0])

    def relu6(self, x):
        return self._elementwise("relu6", ("Clip",), x, self._saved["relu6"],
                                 lambda z: ((z > 0) & (z < 6)).astype(np.int8), [0.0, 6.0])

    # MaxPool ------------------------------------------------------------------------------------------------
    def max_pool(self, inputs, pool_size, strides=None, padding="valid", data_format=None):
        import tensorflow as tf

        pool = tuple(pool_size) if isinstance(pool_size, (tuple, list)) else (pool_size, pool_size)
        strides = pool if strides is None else (tuple(strides) if isinstance(strides, (tuple, list))
                                                else (strides, strides))
        if padding.lower() != "valid" or len(inputs.shape) != 4 or data_format == "channels_first":
            raise NotImplementedError("tie-aware max_pool: 2-D, channels-last, padding='valid' only")
        z64 = np.asarray(inputs, np.float64)
        n, h, w, c = z64.shape
        win = np.lib.stride_tricks.sliding_window_view(z64, pool, axis=(1, 2))[:, ::strides[0], ::strides[1]]
        ho, wo = win.shape[1:3]
        local = win.reshape(n, ho, wo, c, -1).argmax(-1)  # float64's winner in each window
        rows = np.arange(ho)[:, None, None] * strides[0] + local // pool[1]
        cols = np.arange(wo)[None, :, None] * strides[1] + local % pool[1]
        idx64 = rows * w + cols                             # [n, ho, wo, c], flat over (h, w)
        chosen = idx64.copy()
        for b in range(n):
            p, j, _, first = self._match(("MaxPool",), z64[b])
            if not first:
                raise AssertionError(f"tie-aware max_pool: {p.node} is not channels-first")
            flat = self.decisions.values[p.indices][j]       # [c, ho, wo], flat over the batch too
            idx32 = np.moveaxis(flat - (j * c + np.arange(c)[:, None, None]) * (h * w), 0, -1)
            assert idx32.shape == (ho, wo, c) and idx32.min() >= 0 and idx32.max() < h * w, \
                f"tie-aware max_pool: the indices of {p.node} do not fit"
            plane = z64[b].reshape(h * w, c)
            v32 = np.take_along_axis(plane, idx32.reshape(-1, c), 0)
            v64 = np.take_along_axis(plane, idx64[b].reshape(-1, c), 0)
            self._record("max_pool", idx32.reshape(-1, c) != idx64[b].reshape(-1, c), np.abs(v32 - v64),
                         max(float(np.abs(plane).max()), 1e-30))
            chosen[b] = idx32
        bi = np.broadcast_to(np.arange(n)[:, None, None, None], chosen.shape)
        ci = np.broadcast_to(np.arange(c), chosen.shape)
        gather = np.stack([bi, chosen // w, chosen % w, ci], -1)
        return tf.gather_nd(inputs, tf.constant(gather, tf.int64))  # differentiable: the gradient goes to winners

    def __enter__(self):
        from keras.src.backend.tensorflow import nn

        self._nn = nn
        self._saved = {"relu": nn.relu, "relu6": nn.relu6, "max_pool": nn.max_pool}
        nn.relu, nn.relu6, nn.max_pool = self.relu, self.relu6, self.max_pool
        return self

    def __exit__(self, *exc):
        for k, v in self._saved.items():
            setattr(self._nn, k, v)
        return False
