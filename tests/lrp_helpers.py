"""Shared by the LRP tests and tools/lrp_parity.py: seeded torchvision models, both ONNX exporters, and the Zennit
reference (composite + canonizers) for every built-in rule set."""
from __future__ import annotations

import contextlib
import copy
import io
import warnings

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
def box_bounds(shape, dtype=torch.float32):
    low = torch.tensor((0 - MEAN) / STD, dtype=dtype).view(1, 3, 1, 1).expand(shape)
    high = torch.tensor((1 - MEAN) / STD, dtype=dtype).view(1, 3, 1, 1).expand(shape)
    return low, high


def zennit_composite(ruleset: str, canonizers, shape, dtype=torch.float32):
    from zennit import composites as C
    from zennit.layer import Sum
    from zennit.rules import Epsilon, Norm, Pass
    from zennit.types import Activation, AvgPool, BatchNorm, Linear

    if ruleset in ("zero", "epsilon"):
        eps = (lambda z: z + (z == 0).to(z)) if ruleset == "zero" else 1e-6
        return C.LayerMapComposite([(Activation, Pass()), (Sum, Norm()), (AvgPool, Norm()), (BatchNorm, Pass()),
                                    (Linear, Epsilon(epsilon=eps))], canonizers=canonizers)
    if ruleset == "epsilon-gamma-box":
        low, high = box_bounds(shape, dtype)
        return C.EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    cls = {"epsilon-plus": C.EpsilonPlus, "epsilon-plus-flat": C.EpsilonPlusFlat,
           "epsilon-alpha2-beta1": C.EpsilonAlpha2Beta1, "epsilon-alpha2-beta1-flat": C.EpsilonAlpha2Beta1Flat}[ruleset]
    return cls(canonizers=canonizers)


class _ExactIdentityBN:
    """Zennit's MergeBatchNorm folds the BatchNorm into the linear layer and then makes the BatchNorm an "identity" by
    setting mean 0, var 1, weight 1, bias 0 -- but keeps its `eps`, so the module still scales by 1/sqrt(1 + eps)
    (1 - 5e-6 for eps = 1e-5). Over ResNet-50's 53 BatchNorms that perturbs the activations by up to ~1e-4 (relative):
    the reference explains a slightly different function than the model. This mixin also sets eps = 0 while merged
    (restored on remove), so the merged model computes the original function."""

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self._eps = batch_norm.eps
        batch_norm.eps = 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self._eps


def _exact_merges():
    from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm

    class ExactSequentialMergeBatchNorm(_ExactIdentityBN, SequentialMergeBatchNorm):
        pass

    class ExactNamedMergeBatchNorm(_ExactIdentityBN, NamedMergeBatchNorm):
        pass
    return ExactSequentialMergeBatchNorm, ExactNamedMergeBatchNorm


def canonizers_for(name: str, model=None, exact_bn: bool = False):
    """Zennit canonizers for `name`. exact_bn: merged BatchNorms become exact identities (see _ExactIdentityBN)."""
    from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer, ResNetCanonizer
    if exact_bn:
        SequentialMergeBatchNorm, NamedMergeBatchNorm = _exact_merges()  # noqa: N806
    if name.startswith("resnet"):
        if exact_bn:  # ResNetCanonizer = SequentialMergeBatchNorm + the two block canonizers
            return [SequentialMergeBatchNorm(), ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]
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


def zennit_relevance(model, x: np.ndarray, ruleset: str, name: str, target=None, dtype=torch.float32,
                     exact_bn: bool = False):
    """Zennit's scores and relevance (numpy). dtype=torch.float64 runs a float64 copy of the model (the model itself
    is left as it is); exact_bn: see canonizers_for."""
    from zennit.attribution import Gradient
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype).eval()
    xt = torch.tensor(x).to(dtype)
    comp = zennit_composite(ruleset, canonizers_for(name, model, exact_bn), xt.shape, dtype)
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


def folded_clone(model, onnx_path, dtype=torch.float64):
    """A copy of `model` that computes exactly the function of OUR canonicalized graph: every Conv / Linear gets the
    float32 weight and bias that xcompile's canonicalizer produced (BatchNorm folded in float64, cast to float32; for
    the legacy exporter, torch's own float32 fold), and every BatchNorm2d becomes an Identity. Zennit run on it in
    float64 is the float64 evaluation of the very function our float32 explainer computes (the ResNet-50 LRP-0 /
    epsilon reference: docs/lrp_parity.md, Known deviations). Linear layers are matched in order (forward order =
    module order for torchvision ResNets/VGG) and checked by shape and by the model output."""
    from onnx import numpy_helper

    from xcompile.canonicalize.passes import canonicalize
    from xcompile.load.loader import prepare, read_model
    m = prepare(read_model(str(onnx_path)), "model")
    canonicalize(m)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    params = [(inits[n.input[1]], inits[n.input[2]] if len(n.input) > 2 and n.input[2] else None)
              for n in m.graph.node if n.op_type in ("Conv", "Gemm")]
    clone = copy.deepcopy(model).eval()
    mods = [(k, v) for k, v in clone.named_modules() if isinstance(v, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(mods) == len(params), (len(mods), len(params))
    for (k, mod), (w, b) in zip(mods, params):
        assert tuple(mod.weight.shape) == w.shape, (k, tuple(mod.weight.shape), w.shape)
        if isinstance(mod, torch.nn.Conv2d):
            new = torch.nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                                  mod.dilation, mod.groups, bias=True, padding_mode=mod.padding_mode)
        else:
            new = torch.nn.Linear(mod.in_features, mod.out_features)
        with torch.no_grad():
            new.weight.copy_(torch.from_numpy(np.array(w)))
            new.bias.copy_(torch.from_numpy(np.array(b)) if b is not None else torch.zeros_like(new.bias))
        parent = clone.get_submodule(k.rsplit(".", 1)[0]) if "." in k else clone
        setattr(parent, k.rsplit(".", 1)[-1], new)
    for mod in list(clone.modules()):
        for cn, ch in list(mod.named_children()):
            if isinstance(ch, torch.nn.BatchNorm2d):
                setattr(mod, cn, torch.nn.Identity())
    clone = clone.to(dtype).eval()
    x = torch.randn((1,) + tuple(_input_shape(m)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(x).double(), clone(x.to(dtype)).double()
    assert float((a - b).abs().max() / a.abs().max()) < 1e-3, "folded clone does not reproduce the model"
    return clone


def _input_shape(m):
    return [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1:]


def compare(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max|ours - ref| / max|ref|, Pearson r) over the whole batch."""
    err = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))
    a, b = ours.ravel().astype(np.float64), ref.ravel().astype(np.float64)
    r = float(np.corrcoef(a, b)[0, 1])
    return err, r


def our_relevance(onnx_path, x, ruleset, target=None, decisions: bool = False):
    """Our scores and relevance; decisions=True also returns the branch taken at every kink of the explainer's
    forward (model_zoo/tie_oracle.py), for a tie-aware reference: ``with TieAware(d): zennit_relevance(...)``."""
    import xcompile
    from model_zoo.tie_oracle import ProbedExplainer
    extra = {}
    if ruleset == "epsilon-gamma-box":
        extra = dict(low="0", high="1", mean=",".join(map(str, MEAN)), std=",".join(map(str, STD)))
    m = xcompile.compile(str(onnx_path), "lrp", rules=ruleset, **extra)
    res, d = ProbedExplainer(m).explain(x, target if target is not None else -1)
    return (res.scores, res.relevance, d) if decisions else (res.scores, res.relevance)


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
