"""A representative timm subset (issue 15 item 5): one tiny model per family, exported by PyTorch's exporters,
compiled to a gradient explainer and compared with float64 PyTorch autograd on the same weights (tie-aware at
ReLU / MaxPool kinks, model_zoo/tie_oracle.py). The full sweep over 150+ timm architectures is
``tools/coverage.py --source timm`` (docs/coverage.md).

Models: timm's own ``test_*`` configurations where timm registers one, else the family's class with a tiny
configuration (TResNet: anti-aliasing Pad reflect; VOLO: outlook attention, Col2Im; VGG at 32 px under dynamo:
its head's adaptive up-sampling, GatherND). Weights: ``torch.manual_seed(0)``, zero-initialised parameters redrawn and BatchNorm
calibrated (``model_zoo.timm_zoo.randomize``)."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

timm = pytest.importorskip("timm")
torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import xcompile  # noqa: E402
from model_zoo.tie_oracle import ProbedExplainer, TieAware  # noqa: E402
from model_zoo.timm_zoo import randomize  # noqa: E402
from model_zoo.zoo import export_onnx, op_types  # noqa: E402


def _tresnet():
    from timm.models.tresnet import TResNet
    return TResNet(layers=[1, 1, 1, 1], num_classes=10, width_factor=0.25)


def _volo():
    from timm.models.volo import VOLO
    return VOLO(layers=[1, 1, 1, 1], img_size=32, embed_dims=[32, 32, 32, 32], num_heads=[1, 1, 1, 1],
                stem_hidden_dim=8, num_classes=10, patch_size=8)


def _levit():
    from timm.models.levit import Levit
    return Levit(img_size=32, num_classes=10, embed_dim=(32,), key_dim=8, depth=(1,), num_heads=(2,))


def _vgg():
    from timm.models.vgg import VGG
    # 32 px -> 4x4 features: the head's ConvMlp up-samples them to its 7x7 kernel with adaptive average pooling,
    # which the dynamo exporter writes as GatherND (on the data path)
    return VGG(cfg=[8, "M", 16, "M", "M"], num_classes=10, mlp_ratio=1 / 512)


def _named(name, **kw):
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kw)


# id: (builder, input size, exporter, op types the export must contain)
CASES = {
    "resnet": (_named("test_resnet"), 32, "legacy", set()),
    "vision_transformer": (_named("test_vit", img_size=32), 32, "legacy", {"LayerNormalization", "Softmax"}),
    "convnext": (_named("test_convnext"), 32, "legacy", set()),
    "efficientnet": (_named("test_efficientnet"), 32, "legacy", {"Sigmoid"}),
    "byobnet": (_named("test_byobnet"), 32, "legacy", set()),
    "nfnet": (_named("test_nfnet"), 32, "legacy", set()),
    "mambaout": (_named("test_mambaout"), 32, "legacy", set()),
    "maxxvit": (_named("test_coatnet", img_size=32), 32, "legacy", set()),
    "vision_transformer_relpos": (_named("test_vit_relpos", img_size=32), 32, "legacy", set()),
    # 64 px: at 32 px this random LCNet's logits reach ~190 and PyTorch's own float32 gradient is 3.0e-4 from float64
    "mobilenetv3": (_named("lcnet_035"), 64, "legacy", {"HardSwish"}),
    "tresnet": (_tresnet, 32, "legacy", {"Pad"}),
    "volo": (_volo, 32, "dynamo", {"Col2Im"}),
    "levit": (_levit, 32, "legacy", {"HardSwish"}),
    "vgg": (_vgg, 32, "dynamo", {"GatherND"}),
}


def _check(case, tmp_path):
    builder, size, exporter, ops = CASES[case]
    torch.manual_seed(0)
    model = randomize(builder(), size)
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    path = tmp_path / f"{case}_{exporter}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, torch.from_numpy(x), path, exporter)
    assert ops <= set(op_types(path)), sorted(op_types(path))
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    target = np.array([7, int(logits[1].argmax())])
    res, decisions = ProbedExplainer(xcompile.compile(str(path), "gradient")).explain(x, target, threads=1)
    m64 = model.double().requires_grad_(False)  # the oracle differentiates w.r.t. the input only
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    with TieAware(decisions) as tie:
        y = m64(xt)
        g, = torch.autograd.grad(y.gather(1, torch.tensor(target)[:, None]).sum(), xt)
    assert not tie.violations, tie.violations[:3]
    ref = g.numpy()
    err = np.abs(np.asarray(res.relevance, np.float64) - ref).max() / np.abs(ref).max()
    assert np.abs(np.asarray(res.scores) - logits).max() <= 1e-4 * max(1.0, np.abs(logits).max())
    assert err <= 1e-4, f"{case}: gradient {err:.2e} off float64 autograd"


@pytest.mark.parametrize("case", list(CASES))
def test_timm_gradient_matches_autograd(case, tmp_path):
    _check(case, tmp_path)


def test_timm_resnet_lrp_epsilon_matches_zennit(tmp_path):
    """The sweep's Zennit oracle for the timm ResNet family (tools/coverage.py: residual sums as Zennit Sum
    modules, BatchNorm folded): LRP-epsilon of the compiled explainer agrees with it."""
    from clirun import tool
    cov = tool("coverage")
    torch.manual_seed(0)
    model = randomize(timm.create_model("test_resnet", pretrained=False, num_classes=10), 32)
    kind, why = cov.timm_zennit_plan({"family": "resnet"}, model)
    assert kind == "timm_resnet", why
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    path = tmp_path / "r.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, torch.from_numpy(x), path, "legacy")
    target = np.array([7, 3])
    rel = xcompile.Explainer(xcompile.compile(str(path), "lrp", rules="epsilon")).explain(x, target).relevance
    ref = cov.zennit_epsilon("test_resnet", model, x, target, kind)
    assert np.abs(rel - ref).max() / np.abs(ref).max() <= 1e-3
    assert np.corrcoef(np.ravel(rel), np.ravel(ref))[0, 1] >= 0.9999
