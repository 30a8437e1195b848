"""AttnLRP and CP-LRP on torchvision's VisionTransformer, as the reference implementation LXT computes them:
Gradient x Input in PyTorch autograd with the backward of a few modules modified (lxt.efficient.patches /
lxt.efficient.rules, re-stated here from the paper so that the tests need no transformers stack):

- LayerNorm: ``(x - mean) / std.detach() * weight + bias``            (LXT ``layer_norm_forward``)
- GELU: identity rule, backward ``g * y / (x + 1e-10)``                (LXT ``identity_rule_implicit``)
- attention: AttnLRP divides the gradient of q and k by 4 and of v by 2 (uniform rule on q k^T and attn x v,
  LXT ``wrap_attention_forward``); CP-LRP detaches q and k (LXT ``cp_multi_head_attention_forward``)
- everything else (linear layers, softmax, residual sums, the class token / position embedding) keeps its plain
  gradient, which in the Gradient x Input framework is LRP-0 with biases absorbing their share.

The relevance is ``x * d score_c / dx``. Nothing here shares code with xcompile."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, x):
        y = fn(x)
        ctx.save_for_backward(y / (x + 1e-10))
        return y

    @staticmethod
    def backward(ctx, g):
        return None, ctx.saved_tensors[0] * g


class _Divide(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g / ctx.factor, None


def _layer_norm(ln, x):
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean) ** 2).mean(-1, keepdim=True).add(ln.eps).sqrt()
    return (x - mean) / std.detach() * ln.weight + ln.bias


def _attention(mha, x, mode):
    n, t, e = x.shape
    h = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    if mode == "attnlrp":
        q, k, v = _Divide.apply(q, 4.0), _Divide.apply(k, 4.0), _Divide.apply(v, 2.0)
    else:  # cp-lrp
        q, k = q.detach(), k.detach()
    q, k, v = (z.reshape(n, t, h, e // h).transpose(1, 2) for z in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // h), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(n, t, e)
    return mha.out_proj(out)


def vit_forward(model, x, mode):
    """torchvision VisionTransformer.forward with the modified backward (eval mode: dropout is the identity)."""
    z = model._process_input(x)
    cls = model.class_token.expand(z.shape[0], -1, -1)
    z = torch.cat([cls, z], dim=1) + model.encoder.pos_embedding
    gelu = F.gelu
    for blk in model.encoder.layers:
        z = z + _attention(blk.self_attention, _layer_norm(blk.ln_1, z), mode)
        y = _layer_norm(blk.ln_2, z)
        lin1, lin2 = blk.mlp[0], blk.mlp[3]
        z = z + lin2(_Identity.apply(gelu, lin1(y)))
    z = _layer_norm(model.encoder.ln, z)
    return model.heads(z[:, 0])


def relevance(model, x, target, mode="attnlrp", dtype=torch.float64):
    """(scores, relevance) as numpy arrays; `target` one class per row."""
    model = model.to(dtype)
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    scores = vit_forward(model, xt, mode)
    sel = scores.gather(1, torch.as_tensor(target).view(-1, 1)).sum()
    g, = torch.autograd.grad(sel, xt)
    model.float()
    return scores.detach().numpy(), (xt * g).detach().numpy()
