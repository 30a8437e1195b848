"""Whole torchvision models, exported by both PyTorch exporters: every gradient-family method against
independent oracles (autograd, Captum), max|ours - ref| <= 1e-4 * max|ref| with our float32 explainer.

The oracles run in float64 and are tie-aware (model_zoo/tie_oracle.py): where a unit's pre-activation lies within
float32 rounding of a kink (a ReLU input at 0, a MaxPool near-tie), the float64 backward takes the branch the
explainer's float32 forward took, so the verdict does not depend on the CPU's kernels. Each check prints and
records how many units it forced. The tie-sensitive checks (models with ReLU/MaxPool/HardSwish: gradient and
integrated gradients) run under onnxruntime's ENABLE_ALL and BASIC levels with 1 and 2 intra-op threads."""
from __future__ import annotations

import functools
import json
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from oracle import rel_err

import xcompile
from model_zoo.tie_oracle import KERNEL_CONFIGS, ProbedExplainer, TieAware
from model_zoo.zoo import input_shape, torch_model

SLOW = pytest.mark.slow
MODELS = ["resnet18", pytest.param("vgg11_bn", marks=SLOW), "densenet121", "mobilenet_v3_small",
          "efficientnet_b0", "vit_b_16"]
EXPORTERS = ["legacy", "dynamo"]
TOL = 1e-4
DEFAULT_CONFIG = (("all", None),)
# models with kinks whose side float32 decides (ReLU, MaxPool, HardSwish/HardSigmoid): checked under every
# optimization level x thread count of KERNEL_CONFIGS
KINKED = {"resnet18", "vgg11_bn", "densenet121", "mobilenet_v3_small"}
@functools.lru_cache(maxsize=1)
def _torch64(name):
    """The float64 torch model: the last one only. Keeping every model (and every compiled explainer, never asked
    for twice) alive for the whole session held several GB (ViT-B/16 in float64 alone: 0.7 GB)."""
    return torch_model(name).double()


def setup(name, exporter, build, method, **params):
    x = np.random.default_rng(3).standard_normal((2, *input_shape(name)[1:])).astype(np.float32)
    return _torch64(name), x, xcompile.compile(build(name, exporter), method, **params)


def targets(model, x):
    with torch.no_grad():
        pred = model(T(x)).argmax(1)
    return torch.tensor([7, int(pred[1])]), np.array([7, -1])


def T(x):
    return torch.tensor(np.asarray(x, np.float64))


MEASURED: dict = {}


def measured(value: float, what: str = "") -> float:
    """Record a measured error under the running test's id (written to test_models_errors.json in the zoo_build
    folder of tests/conftest.py: XCOMPILE_ZOO_CACHE=model_zoo/build keeps it)."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0].split("::")[-1]
    MEASURED.setdefault(test + (f"/{what}" if what else ""), []).append(float(value))
    return value


@pytest.fixture(scope="module", autouse=True)
def _write_measured(zoo_build):
    yield
    out = zoo_build / "test_models_errors.json"
    old = json.loads(out.read_text()) if out.is_file() else {}
    old.update({k: max(v) for k, v in MEASURED.items()})
    out.write_text(json.dumps(old, indent=1, sort_keys=True))


def agree(explainer, x, tn, reference, *, name=None, relu="gradient", where="forward", configs=DEFAULT_CONFIG,
          value=lambda out: out.relevance):
    """Run ``explainer`` (a test copy that also outputs its kink inputs) under each onnxruntime config and compare
    ``value(out)`` with ``reference()`` computed in float64 under the tie-aware oracle of that run. Returns the
    last Explanation. ``name`` in KINKED -> every config of KERNEL_CONFIGS."""
    if name in KINKED and configs is DEFAULT_CONFIG:
        configs = KERNEL_CONFIGS
    probed, refs = ProbedExplainer(explainer, where), {}
    for opt, threads in configs:
        out, decisions = probed.explain(x, tn, opt, threads)
        sig = decisions.signature()
        if sig not in refs:  # the same branches at every kink -> the same reference
            with TieAware(decisions, relu) as tie:
                refs[sig] = (reference(), tie)
            tie.check()
        ref, tie = refs[sig]
        err = measured(rel_err(value(out), ref))
        measured(tie.n_forced, "forced_units")
        print(f"[{opt}, threads={threads}] ours vs float64 {err:.2e}; {tie.summary()}")
        assert err < TOL, f"[{opt}, threads={threads}] ours vs tie-aware float64 {err:.2e}; {tie.summary()}"
    return out


def autograd_grad(model, x, t):
    xt = T(x).requires_grad_(True)
    g, = torch.autograd.grad(model(xt).gather(1, t[:, None]).sum(), xt)
    return g.numpy()


def run(explainer, x, t):
    return xcompile.Explainer(explainer).explain(x, t)


# One model per family for the gradient (ResNet, VGG, DenseNet, MobileNetV3, EfficientNet, ConvNeXt, ViT;
# EfficientNet-Lite0 and Keras in tests/models/test_pretrained.py, tests/load/test_keras.py). vgg11_bn at 224 px has float32
# near-ties in both exports (3 to 5 forced units; plain float64 autograd is 3.3e-3 off there).
# Slow (the default run's memory peak and a third of its time: vgg11_bn 6.8 GB, ViT-B/16 6.2 GB, ConvNeXt's float64
# depthwise convolutions minutes per export): the default run keeps these families in tests/models/test_timm.py (VGG,
# ConvNeXt, ViT: gradient vs float64 autograd), ViT-B/16 in test_integrated_gradients_vs_captum (the same backward
# graph at the interpolated points), and real near-ties under every kernel config in the KINKED models below.
GRADIENT_CASES = [(m, e) for m in ["resnet18", "densenet121", "mobilenet_v3_small", "efficientnet_b0"] for e in EXPORTERS]
GRADIENT_CASES += [pytest.param(m, e, marks=SLOW) for m in ["vit_b_16", "convnext_tiny", "vgg11_bn"] for e in EXPORTERS]


@pytest.mark.parametrize("name,exporter", GRADIENT_CASES)
def test_gradient_and_input_x_gradient(name, exporter, torchvision_onnx):
    model, x, ex = setup(name, exporter, torchvision_onnx, "gradient")
    t, tn = targets(model, x)
    out = agree(ex, x, tn, lambda: autograd_grad(model, x, t), name=name)
    with torch.no_grad():
        assert rel_err(out.scores, model(T(x)).numpy()) < 1e-4
    del ex, out  # one explainer alive at a time (each holds the model's weights)
    from captum.attr import InputXGradient
    _, _, ex2 = setup(name, exporter, torchvision_onnx, "input_x_gradient")
    agree(ex2, x, tn, lambda: InputXGradient(model).attribute(T(x), target=t).detach().numpy())


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_vs_captum(name, exporter, torchvision_onnx):
    from captum.attr import IntegratedGradients
    steps = 4 if name.startswith("vgg") else 8
    model, x, ex = setup(name, exporter, torchvision_onnx, "integrated_gradients", steps=steps, chunk=4)
    t, tn = targets(model, x)
    agree(ex, x, tn, lambda: IntegratedGradients(model).attribute(
        T(x), target=t, n_steps=steps, method="riemann_right", internal_batch_size=4).detach().numpy(),
        name=name, where="clones")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", [m for m in MODELS if m != "vit_b_16"])  # ViT has no ReLU: it IS the gradient
@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_modified_relu_methods(name, exporter, method, torchvision_onnx):
    """Oracle: autograd with every ReLU's backward replaced (guided backprop 1[x>0] * max(g, 0), deconvnet
    max(g, 0); Springenberg et al. 2015, Zeiler & Fergus 2014), by the tie-aware oracle's relu mode."""
    model, x, ex = setup(name, exporter, torchvision_onnx, method)
    t, tn = targets(model, x)
    agree(ex, x, tn, lambda: autograd_grad(model, x, t), relu="guided" if method == "guided_backprop" else "deconv")


@pytest.mark.parametrize("exporter", EXPORTERS)
@SLOW
def test_guided_backprop_and_deconvnet_vs_captum(exporter, torchvision_onnx):
    """Cross-check of the oracle above with Captum where every ReLU is a module (vgg11_bn): Captum's hooks modify
    the gradient at the ReLU modules, the tie-aware oracle only chooses the branch at near-ties."""
    from captum.attr import Deconvolution, GuidedBackprop
    for method, cls in (("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)):
        model, x, ex = setup("vgg11_bn", exporter, torchvision_onnx, method)
        t, tn = targets(model, x)
        agree(ex, x, tn, lambda: cls(model).attribute(T(x), target=t).detach().numpy())


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name,layer", [("resnet18", "layer4"), pytest.param("vgg11_bn", "avgpool", marks=SLOW)])
def test_gradcam_vs_captum(name, layer, exporter, torchvision_onnx):
    from captum.attr import LayerAttribution, LayerGradCam
    model, x, ex = setup(name, exporter, torchvision_onnx, "gradcam")
    t, tn = targets(model, x)
    cams = {}

    def cam():  # Captum's relu_attributions=True, applied outside the model (not a kink of the explained model)
        raw = LayerGradCam(model, getattr(model, layer)).attribute(T(x), target=t, relu_attributions=False)
        cams["map"] = raw.detach().clamp(min=0)
        return cams["map"].numpy()
    agree(ex, x, tn, cam, value=lambda out: out.extras["gradcam_map"])
    up = LayerAttribution.interpolate(cams["map"], tuple(x.shape[2:]), "bilinear").detach().numpy()
    assert measured(rel_err(run(ex, x, tn).relevance, np.broadcast_to(up, x.shape))) < TOL


def stored_noise(explainer: onnx.ModelProto) -> np.ndarray:
    """The seeded noise table the compiler stored in the explainer, [1, samples, C, H, W]."""
    tables = [numpy_helper.to_array(t) for t in explainer.graph.initializer if "smoothgrad_noise" in t.name]
    assert tables, "no stored noise table"
    return np.concatenate(tables, axis=1)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name,level", [("resnet18", 0.1), pytest.param("efficientnet_b0", 0.02, marks=SLOW)])
def test_smoothgrad_vs_autograd_with_the_stored_noise(name, level, exporter, torchvision_onnx):
    """efficientnet_b0 at noise 0.1 (sigma ~0.9 on N(0, 1) images) leaves the range its BatchNorm statistics were
    calibrated on: logits reach 1e2 and PyTorch's own float32 gradient is 1e-3 off float64 there (a smooth network,
    no kink: float32 conditioning); 0.02 keeps the noisy points in range."""
    s = 4
    model, x, ex = setup(name, exporter, torchvision_onnx, "smoothgrad", samples=s, noise_level=level)
    t, tn = targets(model, x)
    noise = np.broadcast_to(stored_noise(ex), (2, s, *x.shape[1:]))
    # the table is exactly numpy's seeded normal draw (the `seed` option)
    np.testing.assert_array_equal(noise[0], np.random.default_rng(0).standard_normal((s, *x.shape[1:])).astype(np.float32))
    # the noisy points in float32, in the graph's order of operations
    sigma = (x.reshape(2, -1).max(1) - x.reshape(2, -1).min(1)) * np.float32(level)
    agree(ex, x, tn, lambda: np.mean([autograd_grad(model, x + noise[:, k] * sigma[:, None, None, None], t)
                                      for k in range(s)], axis=0), where="clones")


def test_smoothgrad_sampler_is_seeded_and_reproducible(torchvision_onnx):
    _, x, ex = setup("resnet18", "legacy", torchvision_onnx, "smoothgrad", samples=4)
    session = xcompile.Explainer(ex)
    a = session.explain(x).relevance
    np.testing.assert_array_equal(a, session.explain(x).relevance)        # same session, second call
    np.testing.assert_array_equal(a, xcompile.Explainer(ex).explain(x).relevance)  # fresh session
    # a row's explanation does not depend on the rest of its batch
    assert rel_err(session.explain(x[1:]).relevance[0], a[1]) < 1e-5
    other = xcompile.compile(torchvision_onnx("resnet18", "legacy"), "smoothgrad", samples=4, seed=1)
    assert not np.allclose(xcompile.Explainer(other).explain(x).relevance, a)
