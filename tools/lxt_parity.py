"""Cross-check with the real LXT 2.1 package (pip install --no-deps lxt==2.1; its package __init__ imports
transformers, so lxt.efficient.rules / patches are loaded with stub parent packages): LXT's torchvision ViT map
(CP-LRP: GELU identity, LayerNorm std detached, q/k detached) vs xcompile's cp-lrp rule set."""
import importlib.util, sys, types
from pathlib import Path
sys.path.insert(0, "tests"); sys.path.insert(0, ".")
root = Path(importlib.util.find_spec("lxt").submodule_search_locations[0])
for pkg in ("lxt", "lxt.efficient"):
    m = types.ModuleType(pkg); m.__path__ = [str(root / pkg.replace("lxt", "", 1).strip(".").replace(".", "/"))] if pkg != "lxt" else [str(root)]
    sys.modules[pkg] = m
sys.modules["lxt.efficient"].__path__ = [str(root / "efficient")]
from lxt.efficient import patches as P  # noqa
from functools import partial
import numpy as np, torch, xcompile
from torchvision.models import vision_transformer as VT
import test_lrp_transformers as T
m = T.small_vit(); t = T._targets(m)
cp_map = {VT.nn.GELU: partial(P.patch_method, P.non_linear_forward, keep_original=True),
          VT.nn.LayerNorm: partial(P.patch_method, P.layer_norm_forward),
          VT.nn.MultiheadAttention: partial(P.patch_method, P.cp_multi_head_attention_forward, keep_original=True)}
for cls, patch in cp_map.items():
    assert patch(cls)
m = m.double()
x = torch.tensor(T.X, dtype=torch.float64, requires_grad=True)
y = m(x)
g, = torch.autograd.grad(y.gather(1, torch.tensor(t)[:, None]).sum(), x)
ref = (x * g).detach().numpy()
for e in ("legacy", "dynamo"):
    res = xcompile.Explainer(xcompile.compile(f"/tmp/vit_{e}.onnx", "lrp", rules="cp-lrp")).explain(T.X, T.TARGET)
    d = np.abs(res.relevance - ref).max() / np.abs(ref).max()
    print(f"LXT 2.1 cp_LRP (torchvision ViT) vs xcompile cp-lrp, {e}: rel max err {d:.2e}, "
          f"pearson {np.corrcoef(res.relevance.ravel(), ref.ravel())[0, 1]:.7f}")
