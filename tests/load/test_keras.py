"""A Keras 3 model exported with ``model.export(format="onnx")`` (channels-last input, a Transpose in front of the
first Conv) compiles; its gradient equals autograd through the Keras model itself (torch backend)."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

from oracle import rel_err  # noqa: E402

import xcompile  # noqa: E402


def test_keras_export_gradient_matches_autograd(tmp_path):
    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs on another backend in this process")
    from model_zoo.zoo import build_keras_digits
    path, model, acc, (x_test, _) = build_keras_digits(tmp_path, epochs=2)
    x = np.asarray(x_test[:6], np.float32)
    target = np.array([0, 1, 2, 3, 4, -1])
    out = xcompile.Explainer(xcompile.compile(path, "gradient")).explain(x, target)
    xt = torch.tensor(x, requires_grad=True)
    scores = model(xt)
    t = torch.tensor(np.where(target < 0, scores.detach().cpu().numpy().argmax(1), target))
    g, = torch.autograd.grad(scores.gather(1, t[:, None]).sum(), xt)
    assert rel_err(out.scores, scores.detach().cpu().numpy()) < 1e-5
    assert out.relevance.shape == x.shape
    assert rel_err(out.relevance, g.cpu().numpy()) < 1e-4
