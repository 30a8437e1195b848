"""Guided backprop / DeconvNet on rectifying Clip nodes (ReLU6): default = Captum/Zennit behaviour (only ReLU is
modified), ``clip=true`` = the modified rule on Clip(x, 0, max) too. Oracle: autograd with a custom ReLU6."""
import numpy as np
import pytest
import torch
from oracle import rel_err

import xcompile


class _Relu6(torch.autograd.Function):
    mode = "guided"

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        r = g.clamp(min=0)
        return r * ((x > 0) & (x < 6)) if _Relu6.mode == "guided" else r


class _Net(torch.nn.Module):
    def __init__(self, act):
        super().__init__()
        self.conv, self.fc, self.act = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4 * 6 * 6, 5), act

    def forward(self, x):
        return self.fc(self.act(self.conv(x) * 3).flatten(1))


@pytest.fixture(scope="module")
def relu6_model(tmp_path_factory):
    torch.manual_seed(0)
    net = _Net(torch.nn.functional.relu6).eval()
    path = tmp_path_factory.mktemp("relu6") / "relu6.onnx"
    torch.onnx.export(net, torch.randn(2, 3, 8, 8), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    return net, path


@pytest.mark.parametrize("method,mode", [("guided_backprop", "guided"), ("deconvnet", "deconv")])
def test_clip_option_modifies_relu6(relu6_model, method, mode):
    net, path = relu6_model
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = np.array([2, 4])

    def grad(act):
        xt = x.clone().requires_grad_(True)
        net.act = act
        g, = torch.autograd.grad(net(xt).gather(1, torch.tensor(t)[:, None]).sum(), xt)
        return g.numpy()

    _Relu6.mode = mode
    modified, plain = grad(_Relu6.apply), grad(torch.nn.functional.relu6)
    ours = xcompile.Explainer(xcompile.compile(path, method, clip=True)).explain(x.numpy(), t).relevance
    assert rel_err(ours, modified) < 1e-5
    default = xcompile.Explainer(xcompile.compile(path, method)).explain(x.numpy(), t).relevance
    assert rel_err(default, plain) < 1e-5          # as Captum / Zennit: ReLU6 keeps its gradient
    assert rel_err(modified, plain) > 1e-2         # the two really differ on this model
