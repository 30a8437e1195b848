"""DeepLIFT (Rescale rule, Shrikumar et al. 2017) against Captum's ``DeepLift`` and a numpy Rescale reference.

Captum's oracle needs a model copy in which
- no module is used twice (torchvision's ResNet calls ``self.relu`` twice per block): each use gets its own ReLU;
- no hooked module reads another hooked module's output tensor directly (ReLU -> MaxPool): Captum hooks the
  module's *input tensor*, so the ReLU's output hook reads the plain gradient before the MaxPool hook has
  rewritten it and the result is not conservative (sum of attributions != F(x) - F(x'); 1.1 on the digits
  CNN). A ``clone()`` in front of each MaxPool separates the two tensors and Captum becomes conservative.

Captum's MaxPool routes the output differences with ``max_unpool``, which keeps only one of several windows that
pick the same input (overlapping pools, ResNet's 3x3 stride 2); the oracle gets an adding unpool, as ours.

Errors are max|ours - Captum| / max|Captum|. Like tests/models/test_models.py, the oracle runs in float64 and in
float32 and ours must agree with one of them. On the digits CNN float32 and float64 Captum differ by 1.7e-2
themselves: the reference pass of a constant baseline is a constant image, so its MaxPool windows hold exact
ties (1096 of 8192 windows at baseline 0) and which tied position gets the reference's switch depends on
rounding (16 windows differ between float32 and float64); any choice is a valid DeepLIFT explanation, and ours
breaks the ties as float32 PyTorch does (error 4e-7)."""
from __future__ import annotations

import contextlib
import copy
import math
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from oracle import one_op_model

import xcompile

nn = torch.nn
DIGITS = "xcompile/data/digits_cnn.onnx"
SLOW = pytest.mark.slow
MEASURED: dict = {}


def _root():
    from pathlib import Path
    return Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- helpers
class Clone(nn.Module):
    def forward(self, x):
        return x.clone()


def _basic_forward(self, x):
    identity = x
    out = self.relu_a(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
        identity = self.downsample(x)
    return self.relu_b(out + identity)


def captum_copy(model: nn.Module) -> nn.Module:
    """A copy Captum's DeepLift can explain exactly: distinct ReLUs per use, no in-place ReLU, a clone before
    every MaxPool (see the module docstring)."""
    import torchvision
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torchvision.models.resnet.BasicBlock):
            mod.relu_a, mod.relu_b = nn.ReLU(), nn.ReLU()
            mod.forward = types.MethodType(_basic_forward, mod)
    pools = []
    for mod in m.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
        pools += [(mod, name, child) for name, child in mod.named_children()
                  if isinstance(child, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d))]
    for mod, name, child in pools:
        setattr(mod, name, nn.Sequential(Clone(), child))
    return m.eval()


def _unpool_add(input, indices, kernel_size, stride, padding, output_size):
    """max_unpool that ADDS values routed to the same position (torch's max_unpool keeps one of them)."""
    n, c = input.shape[:2]
    out = torch.zeros(n, c, int(np.prod(output_size[2:])), dtype=input.dtype)
    out.scatter_add_(2, indices.reshape(n, c, -1), input.reshape(n, c, -1))
    return out.reshape(list(output_size))


def _maxpool_adding(module, inputs, outputs, grad_input, grad_output, eps=1e-10):
    from captum.attr._core import deep_lift
    return deep_lift.maxpool(module, deep_lift.F.max_pool2d, _unpool_add, inputs, outputs, grad_input, grad_output, eps=eps)


@contextlib.contextmanager
def adding_unpool():
    """Captum routes MaxPool's output differences with max_unpool2d, which keeps only one of several windows
    that pick the same input position (overlapping pools: ResNet's 3x3 stride 2): not conservative. We add them
    (the pool's adjoint, as its gradient does); the oracle gets the same fix."""
    from captum.attr._core import deep_lift
    old = deep_lift.SUPPORTED_NON_LINEAR[nn.MaxPool2d]
    deep_lift.SUPPORTED_NON_LINEAR[nn.MaxPool2d] = _maxpool_adding
    try:
        yield
    finally:
        deep_lift.SUPPORTED_NON_LINEAR[nn.MaxPool2d] = old


def captum_deeplift(model, x, baseline, target, dtype=torch.float64):
    from captum.attr import DeepLift
    m = copy.deepcopy(model).to(dtype)
    xt = torch.tensor(np.asarray(x), dtype=dtype)
    b = baseline if isinstance(baseline, float) else torch.tensor(np.asarray(baseline), dtype=dtype)
    with adding_unpool():
        a, delta = DeepLift(m).attribute(xt, baselines=b, target=torch.as_tensor(target), return_convergence_delta=True)
    return a.detach().double().numpy(), delta.detach().double().numpy()


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def check_vs_captum(model, onnx_path, x, target, tol, baseline=0.0, what=""):
    """Ours vs Captum (float64 and float32; pass if one agrees). Returns (err64, err32, gap)."""
    ref_model = captum_copy(model)
    ex = xcompile.Explainer(xcompile.compile(onnx_path, "deeplift", baseline=baseline))
    out = ex.explain(x, np.asarray(target))
    t = torch.as_tensor(np.where(np.asarray(target) < 0, out.predicted, target))
    ref64, delta = captum_deeplift(ref_model, x, baseline, t, torch.float64)
    assert np.abs(delta).max() <= 1e-6 * max(1.0, np.abs(ref64).sum(axis=tuple(range(1, ref64.ndim))).max()), \
        f"Captum oracle not conservative ({delta})"
    e64 = rel_err(out.relevance, ref64)
    e32 = e64 if e64 <= tol else rel_err(out.relevance, captum_deeplift(ref_model, x, baseline, t, torch.float32)[0])
    gap = float(np.abs(out.extras["completeness_gap"]).max())
    MEASURED[what or onnx_path] = (e64, e32, gap)
    print(f"deeplift {what}: err vs Captum float64 {e64:.2e}, float32 {e32:.2e}, completeness gap {gap:.2e}")
    assert min(e64, e32) <= tol, (e64, e32)
    scale = float(np.abs(out.relevance).sum(axis=tuple(range(1, out.relevance.ndim))).max())
    assert gap <= 1e-4 * max(scale, 1.0), gap
    return e64, e32, gap


# ------------------------------------------------------------------------------------------- digits CNN
def digits_torch():
    """The shipped digits CNN as a PyTorch module (weights and normalization read from the ONNX file)."""
    from model_zoo.zoo import _digits_modules
    DigitsCNN, _ = _digits_modules()
    m = onnx.load(str(_root() / DIGITS))
    consts = [float(numpy_helper.to_array(n.attribute[0].t)) for n in m.graph.node if n.op_type == "Constant"]
    net = DigitsCNN(*consts[:2])
    state = {i.name: torch.tensor(numpy_helper.to_array(i)) for i in m.graph.initializer}
    net.load_state_dict(state, strict=False)
    return net.eval()


def digits_x(n=4):
    return np.load(_root() / "xcompile/data/digits_heldout.npz")["x"][:n]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_digits_cnn_vs_captum(exporter, tmp_path):
    net = digits_torch()
    path = str(_root() / DIGITS)
    if exporter == "dynamo":  # the shipped file is the legacy export; export the same weights with dynamo
        from model_zoo.zoo import export_onnx
        path = str(tmp_path / "digits_dynamo.onnx")
        export_onnx(net, torch.tensor(digits_x(2)), path, "dynamo")
    x = digits_x(4)
    for baseline in (0.0, 0.5):
        check_vs_captum(net, path, x, [3, -1, 5, -1], 1e-4, baseline, f"digits_cnn/{exporter}/baseline={baseline}")


# ------------------------------------------------------------------------------------------- torchvision
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", ["resnet18", pytest.param("vgg11_bn", marks=SLOW)])
def test_torchvision_vs_captum(name, exporter, torchvision_onnx):
    from model_zoo.zoo import input_shape, torch_model
    model = torch_model(name)
    x = np.random.default_rng(3).standard_normal((2, *input_shape(name)[1:])).astype(np.float32)
    check_vs_captum(model, str(torchvision_onnx(name, exporter)), x, [7, -1], 1e-4, 0.0, f"{name}/{exporter}")


# ------------------------------------------------------------------------------------------- sigmoid / tanh MLP
class SigmoidTanhMLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act1 = nn.Linear(12, 16), nn.Sigmoid()
        self.fc2, self.act2 = nn.Linear(16, 16), nn.Tanh()
        self.fc3, self.act3 = nn.Linear(16, 8), nn.Softplus()
        self.fc4, self.act4 = nn.Linear(8, 8), nn.ELU()
        self.fc5, self.act5 = nn.Linear(8, 8), nn.LeakyReLU(0.1)
        self.fc6 = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act2(self.fc2(self.act1(self.fc1(x))))
        x = self.act5(self.fc5(self.act4(self.fc4(self.act3(self.fc3(x))))))
        return self.fc6(x)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_sigmoid_tanh_mlp_vs_captum(exporter, tmp_path):
    from model_zoo.zoo import export_onnx
    net = SigmoidTanhMLP().eval()
    path = str(tmp_path / f"mlp_{exporter}.onnx")
    x = np.random.default_rng(0).standard_normal((6, 12)).astype(np.float32)
    export_onnx(net, torch.tensor(x[:2]), path, exporter)
    base = np.random.default_rng(1).standard_normal(12).astype(np.float32) * 0.1
    check_vs_captum(net, path, x, [0, 1, 2, 3, 4, -1], 1e-3, 0.0, f"sigmoid_tanh_mlp/{exporter}")
    npy = tmp_path / "base.npy"
    np.save(npy, base)
    ref_model = captum_copy(net)
    out = xcompile.Explainer(xcompile.compile(path, "deeplift", baseline=str(npy))).explain(x, np.zeros(6, np.int64))
    ref, _ = captum_deeplift(ref_model, x, np.broadcast_to(base, x.shape).copy(), torch.zeros(6, dtype=torch.long))
    assert rel_err(out.relevance, ref) <= 1e-3


# ------------------------------------------------------------------------------------------- numpy Rescale reference
def _gelu(v):
    return 0.5 * v * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0)))


def _hardswish(v):
    return v * np.clip(v + 3.0, 0.0, 6.0) / 6.0


def _relu6(v):
    return np.clip(v, 0.0, 6.0)


def _rescale_reference(f, fprime, x, x_ref, w, target):
    """One elementwise f, then Flatten + MatMul(w): R = (x - x') * w[:, t] * (f(x) - f(x'))/(x - x')."""
    x64, r64 = x.astype(np.float64), x_ref.astype(np.float64)
    dx = x64 - r64
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(np.abs(dx) < 1e-10, fprime(x64), (f(x64) - f(r64)) / dx)
    head = w[:, target].T.reshape(x.shape)
    return dx * m * head


def _elementwise_models():
    """(name, nodes, inits, opset, f, f') -- ReLU6 as Clip, HardSwish op, GELU as the exporters write it
    (Div, Erf, Add, Mul, Mul: MobileNetV2/V3, ViT blocks) and as the opset-20 Gelu op."""
    s2 = math.sqrt(2.0)
    gelu_nodes = [helper.make_node("Div", ["x", "sqrt2"], ["a"], name="div"),
                  helper.make_node("Erf", ["a"], ["e"], name="erf"),
                  helper.make_node("Add", ["e", "one"], ["p"], name="add"),
                  helper.make_node("Mul", ["x", "p"], ["q"], name="mul"),
                  helper.make_node("Mul", ["q", "half"], ["y"], name="mul_half")]
    gelu_prime = lambda v: 0.5 * (1 + np.vectorize(math.erf)(v / s2)) + v * np.exp(-v * v / 2) / math.sqrt(2 * math.pi)
    return [
        ("relu6", [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="relu6")],
         [("lo", np.float32(0.0)), ("hi", np.float32(6.0))], 17, _relu6, lambda v: ((v > 0) & (v < 6)).astype(float)),
        ("hardswish", [helper.make_node("HardSwish", ["x"], ["y"], name="hardswish")], [], 17, _hardswish,
         lambda v: np.where(v < -3, 0.0, np.where(v <= 3, v / 3 + 0.5, 1.0))),
        ("gelu_erf", gelu_nodes, [("sqrt2", np.float32(s2)), ("one", np.float32(1.0)), ("half", np.float32(0.5))], 17,
         _gelu, gelu_prime),
        ("gelu_op", [helper.make_node("Gelu", ["x"], ["y"], name="gelu")], [], 20, _gelu, gelu_prime),
    ]


@pytest.mark.parametrize("case", _elementwise_models(), ids=lambda c: c[0])
def test_rescale_numpy_reference(case):
    name, nodes, inits, opset, f, fprime = case
    shape = (2, 3, 4)
    model, w = one_op_model(nodes, shape, shape, inits=inits, opset=opset)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((3, *shape)) * 4).astype(np.float32)
    x[0, 0, 0, :2] = 0.25  # equal to the baseline below: the gradient fallback
    base = 0.25
    target = np.array([0, 3, 4])
    out = xcompile.Explainer(xcompile.compile(model, "deeplift", baseline=base)).explain(x, target)
    for i, t in enumerate(target):
        ref = _rescale_reference(f, fprime, x[i:i + 1], np.full_like(x[i:i + 1], base), w, t)
        assert rel_err(out.relevance[i:i + 1], ref) <= 1e-4, name
    # completeness: the whole model is f followed by a linear head
    scores_ref = f(np.full_like(x, base, dtype=np.float64)).reshape(3, -1) @ w
    gap = out.relevance.reshape(3, -1).sum(1) - (out.scores[np.arange(3), target] - scores_ref[np.arange(3), target])
    assert np.abs(gap).max() <= 1e-4 * max(1.0, np.abs(out.relevance).sum(axis=(1, 2, 3)).max())
    assert np.abs(out.extras["completeness_gap"] - gap).max() <= 1e-3


# ------------------------------------------------------------------------------------------- options, completeness
def test_per_channel_baseline_and_several_references(tmp_path):
    """A per-channel list equals the same .npy; several references average (Captum's DeepLiftShap), `chunk`
    does not change the result."""
    x = digits_x(3)
    one = xcompile.Explainer(xcompile.compile(DIGITS, "deeplift", baseline="0.2")).explain(x, np.array([1, 2, -1]))
    listed = xcompile.Explainer(xcompile.compile(DIGITS, "deeplift", baseline=[0.2])).explain(x, np.array([1, 2, -1]))
    np.testing.assert_allclose(one.relevance, listed.relevance, atol=1e-6)
    refs = np.random.default_rng(0).uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "refs.npy", refs)
    a = xcompile.Explainer(xcompile.compile(DIGITS, "deeplift", baseline=str(tmp_path / "refs.npy"))).explain(x, np.array([1, 2, 3]))
    b = xcompile.Explainer(xcompile.compile(DIGITS, "deeplift", baseline=str(tmp_path / "refs.npy"), chunk=2)).explain(x, np.array([1, 2, 3]))
    np.testing.assert_allclose(a.relevance, b.relevance, atol=1e-5)
    singles = []
    for k in range(3):
        np.save(tmp_path / f"r{k}.npy", refs[k])
        singles.append(xcompile.Explainer(xcompile.compile(DIGITS, "deeplift", baseline=str(tmp_path / f"r{k}.npy")))
                       .explain(x, np.array([1, 2, 3])).relevance)
    np.testing.assert_allclose(a.relevance, np.mean(singles, axis=0), atol=1e-5)
    assert np.abs(a.extras["completeness_gap"]).max() < 1e-3


@pytest.mark.parametrize("value, message", [
    ("abc", "baseline"), ("1,2", "channels"), ("missing.npy", "no such .npy"),
])
def test_bad_baseline(value, message):
    with pytest.raises(xcompile.XCompileError, match=message):
        xcompile.compile(DIGITS, "deeplift", baseline=value)


def test_cli_compile_and_bad_option(tmp_path, capsys):
    from xcompile.cli import main
    out = tmp_path / "dl.onnx"
    with pytest.raises(SystemExit) as e:
        main(["compile", DIGITS, "-m", "deeplift", "--set", "baseline=0.1", "-o", str(out)])
    assert e.value.code == 0 and out.is_file()
    with pytest.raises(SystemExit) as e:
        main(["compile", DIGITS, "-m", "deeplift", "--set", "baseline=1,2,3", "-o", str(tmp_path / "bad.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "baseline" in err[0] and not (tmp_path / "bad.onnx").exists()


def test_deterministic_compile():
    a = xcompile.compile(DIGITS, "deeplift").SerializeToString()
    b = xcompile.compile(DIGITS, "deeplift").SerializeToString()
    assert a == b
