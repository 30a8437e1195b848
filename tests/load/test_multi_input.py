"""Models with inputs besides the explained one (a second float input, a mask-like integer input): they compile,
every input is kept with its name / dtype / shape, and relevance matches PyTorch autograd (gradient) and Captum
(integrated gradients, whose in-graph batch expansion must repeat the other inputs too), both exporters."""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import xcompile  # noqa: E402
from xcompile.errors import XCompileError  # noqa: E402

NAMES = ["image", "meta", "mask"]


class ImageAndMetadata(torch.nn.Module):
    """A small CNN on the image; the metadata vector, masked by an integer mask, joins it before the head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 4 * 4, 8)
        self.head = torch.nn.Linear(8 + 5, 3)

    def forward(self, image, meta, mask):
        h = torch.relu(self.fc(torch.nn.functional.max_pool2d(torch.relu(self.conv(image)), 2).flatten(1)))
        return self.head(torch.cat([h, torch.tanh(meta) * mask.to(meta.dtype)], dim=1))


def inputs(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 5, dtype=torch.long)
    mask[1, 3:] = 0
    return [torch.randn(n, 1, 8, 8, generator=g), torch.randn(n, 5, generator=g), mask]


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def model(request, tmp_path_factory):
    m = ImageAndMetadata().eval()
    path = tmp_path_factory.mktemp("multi") / f"multi_{request.param}.onnx"
    args = tuple(inputs())
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        if request.param == "legacy":
            torch.onnx.export(m, args, str(path), dynamo=False, opset_version=17, input_names=NAMES,
                              output_names=["scores"], dynamic_axes={k: {0: "N"} for k in NAMES + ["scores"]})
        else:
            n = torch.export.Dim("N", min=1, max=64)
            torch.onnx.export(m, args, dynamo=True, input_names=NAMES, output_names=["scores"],
                              dynamic_shapes=tuple({0: n} for _ in NAMES), verbose=False).save(str(path))
    return m, path


def _grad(m, args, target, k):
    args = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    g, = torch.autograd.grad(m(*args).gather(1, target[:, None]).sum(), args[k])
    return g.numpy()


def _err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_two_float_inputs_need_a_choice(model):
    with pytest.raises(XCompileError, match="several float inputs \\['image', 'meta'\\]: choose the explained one with --set input=NAME"):
        xcompile.compile(model[1], "gradient")


@pytest.mark.parametrize("explained", [0, 1])
def test_every_input_kept_and_gradient_matches_autograd(model, explained):
    m, path = model
    ex = xcompile.Explainer(xcompile.compile(path, "gradient", input=NAMES[explained]))
    assert ex.input_names == NAMES and ex.data_input.name == NAMES[explained] and not ex.token_input
    assert [(i.name, i.type, i.shape) for i in ex.inputs] == [
        ("image", "tensor(float)", ["N", 1, 8, 8]), ("meta", "tensor(float)", ["N", 5]), ("mask", "tensor(int64)", ["N", 5])]
    args = inputs()
    res = ex.explain({k: v.numpy() for k, v in zip(NAMES, args)})
    assert res.relevance.shape == tuple(args[explained].shape)
    with torch.no_grad():
        np.testing.assert_allclose(res.scores, m(*args).numpy(), rtol=1e-5, atol=1e-5)
    assert _err(res.relevance, _grad(m, args, torch.as_tensor(res.predicted), explained)) <= 1e-4
    if explained == 1:  # masked metadata gets exactly no gradient
        assert np.all(res.relevance[1, 3:] == 0)
    with pytest.raises(XCompileError, match="pass a dict"):
        ex.explain(args[explained].numpy())
    with pytest.raises(XCompileError, match="input 'mask' has dtype float32; .* expects int64"):
        ex.explain({k: v.numpy().astype(np.float32) for k, v in zip(NAMES, args)})


def test_integrated_gradients_repeats_the_other_inputs(model):
    from captum.attr import IntegratedGradients
    m, path = model
    args = inputs()
    t = torch.tensor([0, 1, 2])
    ex = xcompile.Explainer(xcompile.compile(path, "integrated_gradients", input="image", steps=8))
    res = ex.explain({k: v.numpy() for k, v in zip(NAMES, args)}, t.numpy())
    ref = IntegratedGradients(m).attribute(args[0], baselines=torch.zeros_like(args[0]), target=t,
                                           additional_forward_args=tuple(args[1:]), n_steps=8, method="riemann_right")
    assert _err(res.relevance, ref.detach().numpy()) <= 1e-3


def test_a_mask_input_beside_one_float_input_is_found_and_probed_with_ones(tmp_path):
    """Auto-detection picks the one float input; the integer mask is probed with ones (a mask of zeros would be valid
    too here, but e.g. a mask that divides would not)."""
    class Masked(torch.nn.Module):
        def forward(self, x, attention_mask):
            w = attention_mask.to(x.dtype)
            return (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True) * torch.tensor([[1.0, -2.0]])

    path = tmp_path / "masked.onnx"
    x, mask = torch.randn(2, 6), torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Masked(), (x, mask), str(path), dynamo=False, opset_version=17,
                          input_names=["x", "attention_mask"], output_names=["scores"],
                          dynamic_axes={"x": {0: "N"}, "attention_mask": {0: "N"}, "scores": {0: "N"}})
    ex = xcompile.Explainer(xcompile.compile(path, "gradient"))
    assert ex.data_input.name == "x"
    res = ex.explain({"x": x.numpy(), "attention_mask": mask.numpy()}, [0, 1])
    expect = mask.numpy() / mask.numpy().sum(1, keepdims=True) * np.array([[1.0], [-2.0]])
    np.testing.assert_allclose(res.relevance, expect, rtol=1e-6, atol=1e-7)
