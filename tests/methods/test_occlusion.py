"""Occlusion: one batched graph == a Python loop over occluded copies == Captum's Occlusion (and Zennit's,
up to its definition)."""
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import xcompile
from xcompile.errors import XCompileError
from xcompile.runtime.explainer import Explainer

MODEL = Path(str(resources.files("xcompile") / "data" / "digits_cnn.onnx"))
DATA = Path(str(resources.files("xcompile") / "data" / "digits_heldout.npz"))


@pytest.fixture(scope="module")
def digits():
    d = np.load(DATA)
    return d["x"][:6].astype(np.float32), d["y"][:6]


@pytest.fixture(scope="module")
def forward():
    s = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    return lambda x: s.run(None, {"input": np.ascontiguousarray(x, np.float32)})[0]


def loop_reference(f, x, target, window, stride, fill):
    """The textbook definition: run the model on each occluded copy, one call per window."""
    n, c, h, w = x.shape
    base = f(x)[np.arange(n), target]
    total, count = np.zeros((n, h, w)), np.zeros((h, w))
    last = [-(-(size - win) // st) * st for size, win, st in zip((h, w), window, stride)]  # Captum: cover all
    for i in range(0, last[0] + 1, stride[0]):
        for j in range(0, last[1] + 1, stride[1]):
            xo = x.copy()
            xo[:, :, i:i + window[0], j:j + window[1]] = fill
            drop = base - f(xo)[np.arange(n), target]
            total[:, i:i + window[0], j:j + window[1]] += drop[:, None, None]
            count[i:i + window[0], j:j + window[1]] += 1
    heat = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return np.repeat(heat[:, None], c, axis=1)


@pytest.mark.parametrize("window,stride,fill", [((2, 2), (2, 2), 0.0), ((3, 3), (2, 2), 0.5), ((2, 4), (1, 2), -1.0), ((3, 3), (3, 3), 0.0)])
def test_equals_python_loop(digits, forward, window, stride, fill):
    x, _ = digits
    ex = Explainer(xcompile.compile(MODEL, "occlusion", window="x".join(map(str, window)),
                                    stride="x".join(map(str, stride)), fill=fill))
    target = np.array([0, 1, 2, 3, -1, -1])
    res = ex.explain(x, target)
    t = np.where(target < 0, forward(x).argmax(1), target)
    ref = loop_reference(forward, x, t, window, stride, fill)
    np.testing.assert_allclose(res.relevance, ref, rtol=0, atol=2e-5)
    np.testing.assert_allclose(res.scores, forward(x), rtol=0, atol=1e-5)  # scores unchanged, first output


def test_chunked_graph_is_the_same(digits):
    x, _ = digits
    a = Explainer(xcompile.compile(MODEL, "occlusion", window=2, stride=1)).explain(x).relevance
    b = Explainer(xcompile.compile(MODEL, "occlusion", window=2, stride=1, chunk=10)).explain(x).relevance
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_matches_captum(digits, forward):
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    x, _ = digits
    t = forward(x).argmax(1)
    fwd = lambda z: torch.from_numpy(forward(z.detach().numpy()))  # noqa: E731
    ref = captum.Occlusion(fwd).attribute(torch.from_numpy(x), sliding_window_shapes=(1, 3, 3), strides=(1, 2, 2),
                                          baselines=0.0, target=torch.from_numpy(t)).numpy()
    ours = Explainer(xcompile.compile(MODEL, "occlusion", window=3, stride=2)).explain(x, t).relevance
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5)


def test_matches_zennit_definition(digits, forward):
    """Zennit's Occlusion with the window occluded (invert=True) sums f(occluded) over the windows covering a
    pixel; for a tiling (window == stride) that is f(x) minus our score-drop map."""
    torch = pytest.importorskip("torch")
    za = pytest.importorskip("zennit.attribution")
    x, _ = digits
    t = forward(x).argmax(1)

    class Wrapped(torch.nn.Module):
        def forward(self, z):
            return torch.from_numpy(forward(z.detach().numpy()))

    onehot = torch.nn.functional.one_hot(torch.from_numpy(t), 10).float()
    att = za.Occlusion(Wrapped(), window=(4, 4), stride=(4, 4),
                       occlusion_fn=partial(za.occlude_independent, invert=True))
    _, ref = att(torch.from_numpy(x), lambda out: out * onehot)
    ours = Explainer(xcompile.compile(MODEL, "occlusion", window=4, stride=4)).explain(x, t).relevance
    base = forward(x)[np.arange(len(x)), t][:, None, None, None]
    np.testing.assert_allclose(ours, base - ref.numpy(), rtol=0, atol=2e-5)


def test_default_window_covers_the_8x8_digit(digits, forward):
    x, _ = digits
    res = Explainer(xcompile.compile(MODEL, "occlusion")).explain(x)  # defaults: 8x8 window, stride 8, fill 0
    t = res.predicted
    drop = forward(x)[np.arange(len(x)), t] - forward(np.zeros_like(x))[np.arange(len(x)), t]
    np.testing.assert_allclose(res.relevance, np.broadcast_to(drop[:, None, None, None], x.shape), atol=2e-5)


def test_one_graph_call_no_python_loop(digits):
    m = xcompile.compile(MODEL, "occlusion", window=2, stride=2)
    assert not any(n.op_type in ("Loop", "Scan", "If") for n in m.graph.node)
    assert [o.name for o in m.graph.output][:2] == ["scores", "relevance"]


def test_bad_options():
    with pytest.raises(XCompileError):
        xcompile.compile(MODEL, "occlusion", window="0")
    with pytest.raises(XCompileError):
        xcompile.compile(MODEL, "occlusion", window="2x2x2")
