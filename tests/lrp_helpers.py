"""Shared by the LRP tests and tools/lrp_parity.py: seeded torchvision models, both ONNX exporters, and the Zennit
reference (composite + canonizers) for every built-in rule set."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
RULESETS = ["zero", "epsilon", "epsilon-plus", "epsilon-plus-flat", "epsilon-gamma-box",
            "epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat"]


class Broadcast7(torch.nn.Module):
    """AdaptiveAvgPool2d((7, 7)) on a 1x1 map (VGG at 32x32) is a broadcast; the legacy exporter refuses the
    adaptive pool there, so the test model uses this equivalent module (same function, same weights)."""

    def forward(self, x):
        assert x.shape[-2:] == (1, 1)
        return x.expand(-1, -1, 7, 7)


class ModuleTail(torch.nn.Module):
    """Replaces a functional `relu -> adaptive_avg_pool2d(1) -> flatten` tail (DenseNet, MobileNetV2) by modules,
    so that Zennit applies its Pass / Norm rules there (Zennit only hooks modules; functional calls get the plain
    gradient). The function is unchanged."""

    def __init__(self, relu: bool):
        super().__init__()
        self.relu = torch.nn.ReLU() if relu else torch.nn.Identity()
        self.pool = torch.nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x):
        return torch.flatten(self.pool(self.relu(x)), 1)


def torch_model(name: str, size: int = 224):
    import torchvision
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random BN statistics and biases, so BN merging and biases are exercised
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(torch.empty(mod.running_var.shape).uniform_(0.5, 1.5, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and mod.bias is not None:
                mod.bias.copy_(0.01 * torch.randn(mod.bias.shape, generator=g))
    if name.startswith("vgg") and size == 32:
        m.avgpool = Broadcast7()
    if name.startswith("densenet"):
        m = _Tail(m.features, ModuleTail(relu=True), m.classifier)
    if name.startswith("mobilenet_v2"):
        m = _Tail(m.features, ModuleTail(relu=False), m.classifier)
    return m.eval()


class _Tail(torch.nn.Module):
    def __init__(self, features, tail, classifier):
        super().__init__()
        self.features, self.tail, self.classifier = features, tail, classifier

    def forward(self, x):
        return self.classifier(self.tail(self.features(x)))


def export(model, x: torch.Tensor, path, exporter: str):
    path = str(path)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(model, x, path, dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["scores"], dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}})
        else:
            torch.onnx.export(model, (x,), path, dynamo=True, input_names=["input"], output_names=["scores"],
                              dynamic_shapes=({0: torch.export.Dim("N", min=1, max=1024)},), external_data=False)
    return path


# ------------------------------------------------------------------------------------------------ Zennit
def box_bounds(shape):
    low = torch.tensor((0 - MEAN) / STD, dtype=torch.float32).view(1, 3, 1, 1).expand(shape)
    high = torch.tensor((1 - MEAN) / STD, dtype=torch.float32).view(1, 3, 1, 1).expand(shape)
    return low, high


def zennit_composite(ruleset: str, canonizers, shape):
    from zennit import composites as C
    from zennit.rules import Epsilon, Norm, Pass
    from zennit.types import Activation, AvgPool, BatchNorm, Linear
    from zennit.layer import Sum

    if ruleset in ("zero", "epsilon"):
        eps = (lambda z: z + (z == 0).to(z)) if ruleset == "zero" else 1e-6
        return C.LayerMapComposite([(Activation, Pass()), (Sum, Norm()), (AvgPool, Norm()), (BatchNorm, Pass()),
                                    (Linear, Epsilon(epsilon=eps))], canonizers=canonizers)
    if ruleset == "epsilon-gamma-box":
        low, high = box_bounds(shape)
        return C.EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    cls = {"epsilon-plus": C.EpsilonPlus, "epsilon-plus-flat": C.EpsilonPlusFlat,
           "epsilon-alpha2-beta1": C.EpsilonAlpha2Beta1, "epsilon-alpha2-beta1-flat": C.EpsilonAlpha2Beta1Flat}[ruleset]
    return cls(canonizers=canonizers)


def canonizers_for(name: str, model=None):
    from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer
    if name.startswith("resnet"):
        return [ResNetCanonizer()]
    if name.startswith("efficientnet") and model is not None:
        # its convs (Conv2dStaticSamePadding) hold a padding child, so they are not leaves and
        # SequentialMergeBatchNorm misses every conv -> bn pair; name the pairs instead
        pairs = [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")]
        for bname, blk in model.named_modules():
            if type(blk).__name__ == "MBConvBlock":
                for c, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")):
                    if hasattr(blk, c):
                        pairs.append((f"{bname}.{c}", f"{bname}.{bn}"))
        return [NamedMergeBatchNorm([((c,), bn) for c, bn in pairs]), ResidualSumCanonizer()]
    if name.startswith("densenet"):
        # SequentialMergeBatchNorm follows module order, in which a dense layer's conv2 is followed by the NEXT
        # layer's norm1 (a concat lies between them in the data flow): it would merge them wrongly. The real
        # conv -> bn pairs are conv0 -> norm0 and each dense layer's conv1 -> norm2; the other (pre-activation)
        # BNs stay (Zennit: Pass; xcompile: per-channel Mul+Add, passed through).
        pairs = [(("features.conv0",), "features.norm0")]
        if model is not None:
            pairs += [((f"{n}.conv1",), f"{n}.norm2") for n, mod in model.named_modules()
                      if type(mod).__name__ == "_DenseLayer"]
        return [NamedMergeBatchNorm(pairs)]
    extra = []
    if name.startswith("mobilenet_v2"):
        extra = [ResidualSumCanonizer()]
    return [SequentialMergeBatchNorm()] + extra


def zennit_relevance(model, x: np.ndarray, ruleset: str, name: str, target=None):
    from zennit.attribution import Gradient
    xt = torch.tensor(x)
    comp = zennit_composite(ruleset, canonizers_for(name, model), xt.shape)
    with torch.no_grad():
        scores = model(xt)
    tgt = scores.argmax(1) if target is None else torch.as_tensor(target)
    onehot = torch.nn.functional.one_hot(tgt, scores.shape[1]).to(scores)
    with Gradient(model=model, composite=comp) as attributor:
        out, rel = attributor(xt, lambda y: onehot * y)
    return out.detach().numpy(), rel.detach().numpy()


# residual blocks outside ResNet: Zennit has no canonizer for them; this one does what ResNetCanonizer does
# (the `+` becomes a Sum module, which the composites give the Norm rule), so the comparison is like for like.
from zennit.canonizers import AttributeCanonizer  # noqa: E402
from zennit.layer import Sum  # noqa: E402


class ResidualSumCanonizer(AttributeCanonizer):
    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        try:
            from torchvision.models.mobilenetv2 import InvertedResidual
        except ImportError:  # pragma: no cover
            return None
        if isinstance(module, InvertedResidual) and module.use_res_connect:
            return {"forward": cls.forward_ir.__get__(module), "canonizer_sum": Sum()}
        if type(module).__name__ == "MBConvBlock" and hasattr(module, "_depthwise_conv"):
            return {"forward": _effnet_lite_forward(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward_ir(self, x):
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))

    def copy(self):
        return ResidualSumCanonizer()


def _effnet_lite_forward(module):
    original = type(module).forward

    def forward(inputs, drop_connect_rate=None):
        # the block adds `inputs` at the very end when id_skip and shapes match; recompute the block body without
        # the add, then add through the Sum module
        out = original(module, inputs, drop_connect_rate)
        a = module._block_args
        if module.id_skip and a.stride == 1 and a.input_filters == a.output_filters:
            body = out - inputs
            return module.canonizer_sum(torch.stack([inputs, body], dim=-1))
        return out
    return forward


def compare(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max|ours - ref| / max|ref|, Pearson r) over the whole batch."""
    err = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))
    a, b = ours.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    r = float(np.corrcoef(a, b)[0, 1])
    return err, r


def our_relevance(onnx_path, x, ruleset, target=None):
    import xcompile
    extra = {}
    if ruleset == "epsilon-gamma-box":
        extra = dict(low="0", high="1", mean=",".join(map(str, MEAN)), std=",".join(map(str, STD)))
    m = xcompile.compile(str(onnx_path), "lrp", rules=ruleset, **extra)
    ex = xcompile.Explainer(m)
    res = ex.explain(x, target if target is not None else -1)
    return res.scores, res.relevance


def vgg16_small(fold: bool = True):
    """VGG-16 at 32x32. fold: the 1x1 feature map broadcast to 7x7 then Linear(25088, 4096) equals Linear(512, 4096)
    with the weights summed over the 49 positions -- same function and, for the epsilon / LRP-0 rules that every
    built-in set uses on dense layers, the same relevance. CI uses it to keep the explainer small (35M weights)."""
    m = torch_model("vgg16", 32)
    if fold:
        lin = m.classifier[0]
        W = lin.weight.data.view(4096, 512, 49).sum(-1)
        new = torch.nn.Linear(512, 4096)
        new.weight.data.copy_(W)
        new.bias.data.copy_(lin.bias.data)
        m.avgpool = torch.nn.Flatten()
        m.classifier[0] = new
    return m.eval()
