"""Whole torchvision models, exported by both PyTorch exporters: every gradient-family method against
independent oracles (autograd, Captum), max|ours - ref| <= 1e-4 * max|ref| with our float32 explainer.

The oracles run in float64: PyTorch's own float32 CPU autograd is the less accurate side (vgg11_bn at 224:
float32 autograd vs float64 autograd 5.8e-3, our explainer vs float64 6.2e-7)."""
from __future__ import annotations

import contextlib

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

import xcompile
from model_zoo.zoo import input_shape, torch_model
from oracle import rel_err

MODELS = ["resnet18", "vgg11_bn", "densenet121", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16"]
EXPORTERS = ["legacy", "dynamo"]
TOL = 1e-4
_cache = {}


def setup(name, exporter, build, method, **params):
    key = (name, exporter, method, tuple(sorted(params.items())))
    if key not in _cache:
        if ("torch", name) not in _cache:
            _cache[("torch", name)] = torch_model(name).double()
        model = _cache[("torch", name)]
        x = np.random.default_rng(3).standard_normal((2, *input_shape(name)[1:])).astype(np.float32)
        explainer = xcompile.compile(build(name, exporter), method, **params)
        _cache[key] = (model, x, explainer)
    return _cache[key]


def targets(model, x):
    with torch.no_grad():
        pred = model(T(x)).argmax(1)
    return torch.tensor([7, int(pred[1])]), np.array([7, -1])


def T(x):
    return torch.tensor(np.asarray(x, np.float64))


def autograd_grad(model, x, t):
    xt = T(x).requires_grad_(True)
    g, = torch.autograd.grad(model(xt).gather(1, t[:, None]).sum(), xt)
    return g.numpy()


class _GuidedRelu(torch.autograd.Function):
    """Oracle for SPEC §3.1: guided backprop 1[x>0]*max(r,0); deconvnet max(r,0)."""
    mode = "guided"

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        r = g.clamp(min=0)
        return r * (x > 0) if _GuidedRelu.mode == "guided" else r


@contextlib.contextmanager
def modified_relu(mode):
    """Every ReLU of the PyTorch model (modules and functional calls alike) uses the modified backward."""
    _GuidedRelu.mode = mode
    saved = (F.relu, torch.relu, torch.nn.ReLU.forward)
    F.relu = lambda x, inplace=False: _GuidedRelu.apply(x)
    torch.relu = lambda x: _GuidedRelu.apply(x)
    torch.nn.ReLU.forward = lambda self, x: _GuidedRelu.apply(x)
    try:
        yield
    finally:
        F.relu, torch.relu, torch.nn.ReLU.forward = saved


def run(explainer, x, t):
    return xcompile.Explainer(explainer).explain(x, t)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_gradient_and_input_x_gradient(name, exporter, torchvision_onnx):
    model, x, ex = setup(name, exporter, torchvision_onnx, "gradient")
    t, tn = targets(model, x)
    out = run(ex, x, tn)
    with torch.no_grad():
        assert rel_err(out.scores, model(T(x)).numpy()) < 1e-4
    ref = autograd_grad(model, x, t)
    assert rel_err(out.relevance, ref) < TOL
    from captum.attr import InputXGradient
    _, _, ex2 = setup(name, exporter, torchvision_onnx, "input_x_gradient")
    ref2 = InputXGradient(model).attribute(T(x), target=t).detach().numpy()
    assert rel_err(run(ex2, x, tn).relevance, ref2) < TOL


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_vs_captum(name, exporter, torchvision_onnx):
    from captum.attr import IntegratedGradients
    steps = 4 if name.startswith("vgg") else 8
    model, x, ex = setup(name, exporter, torchvision_onnx, "integrated_gradients", steps=steps, chunk=4)
    t, tn = targets(model, x)
    ref = IntegratedGradients(model).attribute(T(x), target=t, n_steps=steps, method="riemann_right",
                                               internal_batch_size=4).detach().numpy()
    assert rel_err(run(ex, x, tn).relevance, ref) < TOL


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_modified_relu_methods(name, exporter, method, torchvision_onnx):
    model, x, ex = setup(name, exporter, torchvision_onnx, method)
    t, tn = targets(model, x)
    with modified_relu("guided" if method == "guided_backprop" else "deconv"):
        ref = autograd_grad(model, x, t)
    assert rel_err(run(ex, x, tn).relevance, ref) < TOL


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_guided_backprop_and_deconvnet_vs_captum(exporter, torchvision_onnx):
    """Cross-check of the oracle above with Captum where every ReLU is a module (vgg11_bn)."""
    from captum.attr import Deconvolution, GuidedBackprop
    for method, cls in (("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)):
        model, x, ex = setup("vgg11_bn", exporter, torchvision_onnx, method)
        t, tn = targets(model, x)
        ref = cls(model).attribute(T(x), target=t).detach().numpy()
        assert rel_err(run(ex, x, tn).relevance, ref) < TOL


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name,layer", [("resnet18", "layer4"), ("vgg11_bn", "avgpool")])
def test_gradcam_vs_captum(name, layer, exporter, torchvision_onnx):
    from captum.attr import LayerAttribution, LayerGradCam
    model, x, ex = setup(name, exporter, torchvision_onnx, "gradcam")
    t, tn = targets(model, x)
    cam = LayerGradCam(model, getattr(model, layer)).attribute(T(x), target=t, relu_attributions=True)
    out = run(ex, x, tn)
    assert rel_err(out.extras["gradcam_map"], cam.detach().numpy()) < TOL
    up = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "bilinear").detach().numpy()
    assert rel_err(out.relevance, np.broadcast_to(up, x.shape)) < TOL


def with_fixed_noise(explainer: onnx.ModelProto, noise: np.ndarray) -> onnx.ModelProto:
    """Replace the in-graph sampler by a fixed noise tensor (everything else of the graph unchanged)."""
    m = onnx.ModelProto()
    m.CopyFrom(explainer)
    for node in m.graph.node:
        if node.op_type == "RandomNormalLike":
            c = helper.make_node("Constant", [], list(node.output), name=node.name,
                                 value=numpy_helper.from_array(noise, "noise"))
            node.CopyFrom(c)
    return m


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_smoothgrad_fixed_noise_vs_autograd(name, exporter, torchvision_onnx):
    s, level = 4, 0.1
    model, x, ex = setup(name, exporter, torchvision_onnx, "smoothgrad", samples=s, noise_level=level)
    t, tn = targets(model, x)
    noise = np.random.default_rng(5).standard_normal((2, s, *x.shape[1:])).astype(np.float32)
    out = run(with_fixed_noise(ex, noise), x, tn)
    # the noisy points in float32, in the graph's order of operations (ReLU masks are sensitive to rounding)
    sigma = (x.reshape(2, -1).max(1) - x.reshape(2, -1).min(1)) * np.float32(level)
    ref = np.mean([autograd_grad(model, x + noise[:, k] * sigma[:, None, None, None], t) for k in range(s)], axis=0)
    assert rel_err(out.relevance, ref) < TOL


def test_smoothgrad_sampler_is_seeded_and_reproducible(torchvision_onnx):
    _, x, ex = setup("resnet18", "legacy", torchvision_onnx, "smoothgrad", samples=4)
    a = xcompile.Explainer(ex).explain(x).relevance
    b = xcompile.Explainer(ex).explain(x).relevance
    np.testing.assert_array_equal(a, b)
