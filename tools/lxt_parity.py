"""xcompile's `cp-lrp` rule set vs the real LXT package (AttnLRP's reference implementation) on the small
torchvision ViT of tests/lrp/test_lrp_transformers.py, both PyTorch exporters:

    pip install --no-deps lxt==2.1 && python tools/lxt_parity.py

LXT's package __init__ imports transformers (for its LLM maps), so the two modules used here,
lxt.efficient.rules / lxt.efficient.patches, are loaded under stub parent packages. LXT's torchvision ViT map is
CP-LRP: GELU identity rule, LayerNorm with the std detached, queries and keys detached; relevance = x * grad in
float64. (The CI test compares attnlrp and cp-lrp with tests/attnlrp_reference.py, which restates these rules.)"""
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "lrp"))  # test_lrp_transformers
sys.path.insert(0, str(ROOT))
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
from model_zoo.zoo import export_onnx  # noqa: E402

m = T.small_vit()
t = T._targets(m)
tmp = Path(tempfile.mkdtemp(prefix="lxt_parity_"))
for e in ("legacy", "dynamo"):  # export before LXT patches the torch classes
    export_onnx(m, torch.tensor(T.X), tmp / f"vit_{e}.onnx", e)
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
    res = xcompile.Explainer(xcompile.compile(tmp / f"vit_{e}.onnx", "lrp", rules="cp-lrp")).explain(T.X, T.TARGET)
    d = np.abs(res.relevance - ref).max() / np.abs(ref).max()
    print(f"LXT 2.1 cp_LRP (torchvision ViT) vs xcompile cp-lrp, {e}: rel max err {d:.2e}, "
          f"pearson {np.corrcoef(res.relevance.ravel(), ref.ravel())[0, 1]:.7f}")
