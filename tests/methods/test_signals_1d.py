"""1-D signal classifiers (ECG-like [N, 1, 256] time series): Conv1d / BatchNorm1d / MaxPool1d / AvgPool1d /
AdaptiveAvgPool1d, exported by both PyTorch exporters. Gradient and input x gradient vs PyTorch autograd (float64,
tie-aware: model_zoo/tie_oracle.py) <= 1e-4 of max; LRP epsilon-plus-flat vs Zennit's EpsilonPlusFlat composite
with SequentialMergeBatchNorm (the BatchNorm folded exactly, as the exporter folds it) <= 1e-3 of max."""
from __future__ import annotations

import copy

import lrp_helpers as LH
import numpy as np
import pytest
import torch
from oracle import rel_err

import xcompile
from model_zoo.tie_oracle import ProbedExplainer, TieAware
from model_zoo.zoo import export_onnx

SLOW = pytest.mark.slow
L, CLASSES = 256, 4


def ecg_net(head: str = "global", seed: int = 0):
    """A small ECG-style CNN. head: 'global' (AdaptiveAvgPool1d(1)) or 'pooled' (AdaptiveAvgPool1d(4) + Linear)."""
    torch.manual_seed(seed)
    nn = torch.nn
    layers = [nn.Conv1d(1, 8, 7, padding=3), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
              nn.Conv1d(8, 16, 5, padding=2, stride=2), nn.BatchNorm1d(16), nn.ReLU(), nn.AvgPool1d(2),
              nn.Conv1d(16, 16, 3, padding=1), nn.ReLU()]
    if head == "global":
        layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, CLASSES)]
    else:
        layers += [nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, CLASSES)]
    model = nn.Sequential(*layers)
    with torch.no_grad():  # calibrated BatchNorm statistics (not the identity of a fresh module)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def signal(n=2, seed=0):
    """ECG-like rows: a periodic spiky beat plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(L) / L
    beat = np.exp(-((t * 4 % 1 - 0.5) ** 2) / 0.002)
    return (beat[None, None] + 0.2 * rng.standard_normal((n, 1, L))).astype(np.float32)


_cache: dict = {}


def compiled(tmp_path_factory, head, exporter, method, **params):
    key = (head, exporter)
    if key not in _cache:
        path = tmp_path_factory.mktemp("signals") / f"{head}_{exporter}.onnx"
        export_onnx(ecg_net(head), torch.tensor(signal()), path, exporter)
        _cache[key] = str(path)
    return _cache[key], xcompile.compile(_cache[key], method, **params)


CASES = [("global", "legacy"), ("global", "dynamo"), ("pooled", "legacy"), pytest.param("pooled", "dynamo", marks=SLOW)]


@pytest.mark.parametrize("head,exporter", CASES)
def test_gradient_vs_autograd(tmp_path_factory, head, exporter):
    x = signal(3, seed=1)
    target = np.array([0, 3, 1])
    m64 = copy.deepcopy(ecg_net(head)).double()
    errs = {}
    for method in ("gradient", "input_x_gradient"):
        _, ex = compiled(tmp_path_factory, head, exporter, method)
        out, decisions = ProbedExplainer(ex).explain(x, target)
        with TieAware(decisions) as tie:
            xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            s = m64(xt)
            g, = torch.autograd.grad(s[torch.arange(3), torch.as_tensor(target)].sum(), xt)
        tie.check()
        ref = g.numpy() * (x if method == "input_x_gradient" else 1)
        errs[method] = rel_err(out.relevance, ref)
        assert rel_err(out.scores, s.detach().numpy()) < 1e-5
    print(head, exporter, errs)
    assert max(errs.values()) <= 1e-4, errs


@pytest.mark.parametrize("head,exporter", CASES)
def test_lrp_epsilon_plus_flat_vs_zennit(tmp_path_factory, head, exporter):
    from zennit.canonizers import SequentialMergeBatchNorm
    path, _ = compiled(tmp_path_factory, head, exporter, "gradient")
    x = signal(3, seed=2)
    scores, ours, decisions = LH.our_relevance(path, x, "epsilon-plus-flat", decisions=True)
    model = ecg_net(head)
    with TieAware(decisions) as tie:
        # SequentialMergeBatchNorm with exact identities (lrp_helpers._ExactIdentityBN): the merged model computes
        # the same function as the exported one, whose BatchNorm is folded into the conv
        _, ref = LH.zennit_relevance(model, x, "epsilon-plus-flat", "ecg", exact_bn=True)
    tie.check()
    err, r = LH.compare(ours, ref)
    print(head, exporter, "err", err, "pearson", r, tie.summary())
    assert issubclass(LH.canonizers_for("ecg")[0].__class__, SequentialMergeBatchNorm)
    assert err <= 1e-3 and r >= 0.9999, (err, r)
