"""Model-zoo coverage: does every exported torchvision model compile, run, and agree with an oracle?

    OMP_NUM_THREADS=1 python tools/coverage.py [--models resnet18,vgg11_bn] [--exporters legacy,dynamo]
                                              [--families gradient,lrp] [--out docs/coverage.md]
                                              [--timeout 900] [--skip-done] [--report-only]

Reads the exports of ``model_zoo/torchvision_zoo.py`` in ``--build`` (default model_zoo/build/torchvision):
``{name}_{exporter}.onnx`` + ``.npz`` (seeded batch-2 input ``x`` and PyTorch ``logits``) + ``.json`` (export
record: status, op types, export time). Every (model, exporter) pair runs in its own subprocess (memory isolation,
one at a time, one thread) and, per method family:

- ``gradient``: ``xcompile.compile(path, "gradient")`` -> ``Explainer(...).explain(x, target)`` with targets
  [7, argmax of row 1]; oracle = PyTorch autograd in float64 on ``model_zoo.zoo.torch_model(name).double()``
  (the very weights of the export). rel_err = max|ours - ref| / max|ref|; match if rel_err <= 1e-4 and the
  explainer's scores agree with the stored PyTorch logits to 1e-4 (relative to max|logits|).
- ``lrp``: ``xcompile.compile(path, "lrp", rules="epsilon")``; same targets. Where a Zennit oracle is practical
  (plain CNNs whose residual sums / tails are modules or can be canonized like tests/lrp_helpers.py does) the
  relevance is compared with Zennit's LRP-epsilon composite on the same float32 weights: match if
  max|ours - zennit| / max|zennit| <= 1e-3 and Pearson r >= 0.9999 (the thresholds of tests/lrp/test_lrp_zennit.py).
  Elsewhere the status is "runs (no oracle)" with the conservation ratio sum(relevance) / target score.

``--source timm``: the timm sweep of tools/coverage_timm.py (model_zoo/timm_zoo.py's selection, exported on demand,
same worker and oracles, gradient + lrp by default; Zennit for the plain timm ResNet family):

    OMP_NUM_THREADS=1 nice -n 15 python tools/coverage.py --source timm --skip-done [--n 150] [--models a,b]

Raw results are merged into ``docs/coverage.json`` (committed; other pairs already there are kept, so partial
runs accumulate across sessions and machines; each pair records the date it was measured) and the markdown report ``--out`` is regenerated from the whole file.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tools"))  # coverage_timm, also when this file is imported

BUILD = ROOT / "model_zoo" / "build" / "torchvision"
# committed next to the report: exports are rebuilt per machine, the measurements accumulate across sessions
RESULTS = ROOT / "docs" / "coverage.json"
DOC = ROOT / "docs" / "coverage.md"
FAMILIES = ("gradient", "lrp", "attnlrp")
# attnlrp (rules/attnlrp.toml) runs on models with LayerNorm; its oracle is the LXT-style Gradient x Input reference
# of tests/attnlrp_reference.py, written for torchvision's VisionTransformer
ATTN_OPS = {"LayerNormalization"}
EXPORTERS = ("legacy", "dynamo")
GRAD_TOL = 1e-4
LRP_TOL, LRP_R = 1e-3, 0.9999
FIXED_TARGET = 7

# ops that say little about a model (shown as a count only); the others are listed as "notable"
PLAIN_OPS = {"Conv", "Gemm", "Relu", "Add", "Flatten", "Reshape", "MaxPool", "GlobalAveragePool", "Identity",
             "Constant", "BatchNormalization", "Concat", "ReduceMean", "AveragePool", "Mul", "MatMul"}


# ------------------------------------------------------------------------------------------------ Zennit oracle
def zennit_plan(name: str):
    """(kind, reason): kind is the canonizer recipe for a Zennit LRP-epsilon reference, or None with the reason
    why no like-for-like reference exists."""
    if name.startswith(("resnet", "wide_resnet", "resnext")):
        return "resnet", None
    if name.startswith(("vgg", "alexnet", "squeezenet", "googlenet")):
        return "sequential", None
    if name.startswith("densenet"):
        return "densenet", None
    if name.startswith("mobilenet_v2"):
        return "mobilenet_v2", None
    if name.startswith("mnasnet"):
        return "mnasnet", None
    if name.startswith("shufflenet"):
        return "shufflenet", None
    if name.startswith("regnet_x"):
        return "regnet_x", None
    if name.startswith(("efficientnet", "mobilenet_v3", "regnet_y")):
        return None, "squeeze-excitation gate products: Zennit has no rule for functional products (gradient)"
    if name.startswith("inception"):
        return None, "functional F.avg_pool2d inside the Inception blocks (Zennit: gradient, xcompile: Norm)"
    if name.startswith(("convnext", "vit", "swin", "maxvit")):
        return None, "LayerNorm / attention / GELU: no Zennit rule set to compare with"
    return None, "no Zennit recipe for this family"


def timm_zennit_plan(rec: dict, model=None):
    """(kind, reason) for a timm export (see zennit_plan). The timm ResNet family (timm.models.resnet BasicBlock /
    Bottleneck) when its blocks have no squeeze-excitation gate, anti-aliasing or drop-block: their residual sum
    becomes a Zennit Sum module, every conv -> BatchNorm pair is folded as for torchvision."""
    if rec.get("family") != "resnet":
        return None, "timm: Zennit canonization written only for the plain timm ResNet family"
    import torch
    blocks = [m for m in (model.modules() if model is not None else [])
              if type(m).__name__ in ("BasicBlock", "Bottleneck") and type(m).__module__ == "timm.models.resnet"]
    for b in blocks:
        if b.se is not None or not isinstance(b.aa, torch.nn.Identity) or not isinstance(b.drop_block, torch.nn.Identity):
            return None, "timm ResNet with squeeze-excitation / anti-aliasing / drop-block: no like-for-like Zennit rule"
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)] if model else []
    if not blocks or any(list(m.children()) for m in bns) or any(
            type(m).__name__ not in ("Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
                                     "Linear", "Identity", "Flatten") for m in model.modules() if not list(m.children())):
        return None, "timm ResNet variant with modules beyond Conv / BN / ReLU / pools / Linear"
    return "timm_resnet", None


def zennit_model_and_canonizers(name: str, model, kind: str | None = None):
    """The zoo model, with functional tails / residual sums turned into modules (same function) so that Zennit
    applies the rules xcompile applies (Norm on residual sums and average pools, Pass on activations)."""
    import torch
    from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
    from zennit.layer import Sum
    from zennit.torchvision import ResNetCanonizer

    sys.path.insert(0, str(ROOT / "tests"))
    import lrp_helpers as H

    kind = kind or zennit_plan(name)[0]

    class ResidualSum(AttributeCanonizer):
        """`x + f(x)` of MobileNetV2 / MNASNet inverted residuals and RegNet bottlenecks -> a Sum module (Norm)."""

        def __init__(self):
            super().__init__(self._map)

        @classmethod
        def _map(cls, mname, module):
            t = type(module).__name__
            if t == "InvertedResidual" and getattr(module, "use_res_connect", False):
                return {"forward": (lambda m: lambda x: m.canonizer_sum(torch.stack([x, m.conv(x)], -1)))(module),
                        "canonizer_sum": Sum()}
            if t == "_InvertedResidual" and getattr(module, "apply_residual", False):
                return {"forward": (lambda m: lambda x: m.canonizer_sum(torch.stack([m.layers(x), x], -1)))(module),
                        "canonizer_sum": Sum()}
            if t in ("BasicBlock", "Bottleneck") and type(module).__module__ == "timm.models.resnet":
                def tfwd(x, m=module):  # timm.models.resnet's forward (eval: drop_path / drop_block identities)
                    if t == "BasicBlock":
                        y = m.bn2(m.conv2(m.act1(m.bn1(m.conv1(x)))))
                        act = m.act2
                    else:
                        y = m.bn3(m.conv3(m.act2(m.bn2(m.conv2(m.act1(m.bn1(m.conv1(x))))))))
                        act = m.act3
                    skip = x if m.downsample is None else m.downsample(x)
                    return act(m.canonizer_sum(torch.stack([y, skip], -1)))
                return {"forward": tfwd, "canonizer_sum": Sum()}
            if t == "ResBottleneckBlock":
                def fwd(x, m=module):
                    skip = x if m.proj is None else m.proj(x)
                    return m.activation(m.canonizer_sum(torch.stack([skip, m.f(x)], -1)))
                return {"forward": fwd, "canonizer_sum": Sum()}
            return None

        def copy(self):
            return ResidualSum()

    if kind in ("resnet", "sequential", "mobilenet_v2", "mnasnet", "shufflenet", "regnet_x", "timm_resnet"):
        model = fold_batchnorm(model)
    if kind == "timm_resnet":
        return model, [ResidualSum()]
    if kind == "resnet":
        return model, [ResNetCanonizer()]
    if kind == "sequential":
        return model, [SequentialMergeBatchNorm()]
    if kind == "densenet":  # the real conv -> BN pairs (module order is not data flow here), as lrp_helpers names them
        m = H._Tail(model.features, H.ModuleTail(relu=True), model.classifier).eval()
        pairs = [("features.conv0", "features.norm0")] + [(f"{n}.conv1", f"{n}.norm2") for n, mod in m.named_modules()
                                                          if type(mod).__name__ == "_DenseLayer"]
        return fold_batchnorm(m, pairs), []
    if kind == "mobilenet_v2":
        m = H._Tail(model.features, H.ModuleTail(relu=False), model.classifier).eval()
        return m, [SequentialMergeBatchNorm(), ResidualSum()]
    if kind == "mnasnet":  # layers -> x.mean([2, 3]) -> classifier
        m = H._Tail(model.layers, H.ModuleTail(relu=False), model.classifier).eval()
        return m, [SequentialMergeBatchNorm(), ResidualSum()]
    if kind == "shufflenet":  # conv1, maxpool, stages, conv5 -> x.mean([2, 3]) -> fc
        feats = torch.nn.Sequential(model.conv1, model.maxpool, model.stage2, model.stage3, model.stage4, model.conv5)
        m = H._Tail(feats, H.ModuleTail(relu=False), model.fc).eval()
        return m, [SequentialMergeBatchNorm()]
    if kind == "regnet_x":
        return model, [SequentialMergeBatchNorm(), ResidualSum()]
    raise ValueError(kind)


def fold_batchnorm(model, pairs=None):
    """Fold every BatchNorm2d that directly follows a Conv2d (module order, as SequentialMergeBatchNorm pairs them)
    into a copy of that conv (with a bias) and replace the BatchNorm by Identity: the same function, but Zennit then
    sees plain biased convs. Measured on the zoo's ResNet-18: with Zennit's own merge (ResNetCanonizer) its
    LRP-epsilon deviates 1.2e-2 from a float64 hand-written LRP-epsilon after two residual blocks, with the BNs
    folded beforehand it agrees to 6e-5 (and xcompile to 1e-4)."""
    import copy

    import torch

    model = copy.deepcopy(model)
    named = [(n, m) for n, m in model.named_modules() if len(list(m.children())) == 0]
    parents = dict(model.named_modules())

    def setmod(path, new):
        parent, _, leaf = path.rpartition(".")
        setattr(parents[parent] if parent else model, leaf, new)

    todo = list(zip(named, named[1:])) if pairs is None else [((c, parents[c]), (b, parents[b])) for c, b in pairs]
    for (cn, conv), (bn_name, bn) in todo:
        if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
                and conv.out_channels == bn.num_features and bn.track_running_stats):
            continue
        with torch.no_grad():
            sc = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            new = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                                  dtype=conv.weight.dtype)
            new.weight.copy_(conv.weight * sc.view(-1, 1, 1, 1))
            b0 = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new.bias.copy_((b0 - bn.running_mean) * sc + bn.bias)
        setmod(cn, new.eval())
        setmod(bn_name, torch.nn.Identity())
    return model.eval()


def zennit_epsilon(name, model, x, target, kind=None):
    import torch
    from zennit import composites as C
    from zennit.attribution import Gradient
    from zennit.layer import Sum
    from zennit.rules import Epsilon, Norm, Pass
    from zennit.types import Activation, AvgPool, BatchNorm, Linear

    model, canon = zennit_model_and_canonizers(name, model, kind)
    comp = C.LayerMapComposite([(Activation, Pass()), (Sum, Norm()), (AvgPool, Norm()), (BatchNorm, Pass()),
                                (Linear, Epsilon(epsilon=1e-6))], canonizers=canon)
    xt = torch.tensor(x)
    with torch.no_grad():
        scores = model(xt)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(target), scores.shape[1]).to(scores)
    with Gradient(model=model, composite=comp) as attributor:
        _, rel = attributor(xt, lambda y: onehot * y)
    return rel.detach().numpy()


# ------------------------------------------------------------------------------------------------ worker
def one_line(e: BaseException, n: int = 240) -> str:
    s = str(e).strip().splitlines()
    s = s[0] if s else ""
    return f"{type(e).__name__}: {s}"[:n]


def rel_err(a, b) -> float:
    import numpy as np
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()
                 / max(float(np.abs(np.asarray(b)).max()), 1e-12))


def worker(name: str, exporter: str, families: list[str], build: Path) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import xcompile
    from model_zoo.tie_oracle import ProbedExplainer, TieAware
    from model_zoo.zoo import torch_model as torchvision_model

    path = build / f"{name}_{exporter}.onnx"
    rec = json.loads((build / f"{name}_{exporter}.json").read_text())
    timm_src = rec.get("source") == "timm"

    def torch_model(name):  # the very weights of the export (timm: the build configuration it records)
        if not timm_src:
            return torchvision_model(name)
        from model_zoo.timm_zoo import timm_model
        return timm_model(name, rec["build"]["kwargs"], rec["build"]["size"])
    data = np.load(build / f"{name}_{exporter}.npz")
    x, logits = data["x"], data["logits"]
    target = np.array([FIXED_TARGET, int(logits[1].argmax())], np.int64)[: x.shape[0]]
    # static-batch exports (dynamo fallback) take one row per call
    batch_size = None if rec.get("dynamic_batch", True) else 1
    out: dict = {}
    tmodel = None
    for fam in families:
        if fam == "attnlrp" and not ATTN_OPS & set(rec.get("op_types") or []):
            continue  # no attention / LayerNorm: the family says nothing beyond lrp
        r: dict = {"status": "error"}
        out[fam] = r
        try:
            t0 = time.perf_counter()
            try:
                if fam == "gradient":
                    proto = xcompile.compile(str(path), "gradient")
                else:
                    proto = xcompile.compile(str(path), "lrp", rules="epsilon" if fam == "lrp" else "attnlrp")
            except xcompile.XCompileError as e:
                r.update(status="compile-fail", error=one_line(e))
                continue
            except Exception as e:  # noqa: BLE001  (a crash, not a clean refusal)
                r.update(status="compile-fail", error=one_line(e), crash=True,
                         traceback=traceback.format_exc()[-2000:])
                continue
            r["compile_s"] = round(time.perf_counter() - t0, 2)
            r["explainer_nodes"] = len(proto.graph.node)
            t0 = time.perf_counter()
            try:
                if fam == "gradient":  # a copy that also outputs its kink inputs, for the tie-aware oracle
                    res, decisions = ProbedExplainer(proto).explain(x, target, threads=1, batch_size=batch_size)
                else:
                    res = xcompile.Explainer(proto, threads=1).explain(x, target, batch_size=batch_size)
            except Exception as e:  # noqa: BLE001
                r.update(status="run-fail", error=one_line(e), traceback=traceback.format_exc()[-2000:])
                continue
            del proto
            r["run_s"] = round(time.perf_counter() - t0, 2)
            scores, rel = np.asarray(res.scores), np.asarray(res.relevance)
            r["score_err"] = rel_err(scores, logits)
            r["finite"] = bool(np.isfinite(rel).all())
            tscore = scores[np.arange(len(target)), target]
            r["conservation"] = [float(v) for v in rel.reshape(len(target), -1).sum(1) / tscore]
            t0 = time.perf_counter()
            if fam == "gradient":
                if tmodel is None:
                    tmodel = torch_model(name)
                # tie-aware float64 autograd (model_zoo/tie_oracle.py): at units within float32 rounding of a kink
                # the reference takes the explainer's branch; a differing unit beyond the near-tie bound fails.
                # A timm model whose forward cannot run in float64 (float32 constants made inside forward) is
                # compared with float32 autograd under the same tie-aware rule
                tie_aware = True
                for dtype in (torch.float64, torch.float32):
                    m64 = tmodel.to(dtype).requires_grad_(False)  # d/dx only: kinks off the input's path stay
                    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
                    try:
                        if tie_aware:
                            with TieAware(decisions) as tie:
                                y = m64(xt)
                                g, = torch.autograd.grad(y.gather(1, torch.tensor(target)[:, None]).sum(), xt)
                        else:
                            y = m64(xt)
                            g, = torch.autograd.grad(y.gather(1, torch.tensor(target)[:, None]).sum(), xt)
                        break
                    except AssertionError as e:
                        # the tie-aware oracle could not pair PyTorch's kinked units with the ONNX graph's (NASNet's
                        # branches apply ReLU to one tensor several times): plain float64 autograd, no unit forced
                        if not tie_aware or not str(e).startswith("tie-aware oracle:"):
                            raise
                        tie_aware, r["tie_error"] = False, one_line(e)
                        y = m64(xt)
                        g, = torch.autograd.grad(y.gather(1, torch.tensor(target)[:, None]).sum(), xt)
                        break
                    except Exception as e:  # noqa: BLE001
                        if dtype == torch.float32 or not timm_src:
                            raise
                        r["f64_error"] = one_line(e)
                tmodel = m64.float()
                del m64, y
                prec = "f64" if dtype == torch.float64 else "f32"
                r["oracle"] = f"autograd-{prec}-tie-aware" if tie_aware else f"autograd-{prec}"
                r["err"] = rel_err(rel, g.numpy())
                if tie_aware:
                    r["forced_units"] = tie.n_forced
                    r["forced"] = dict(tie.forced)
                    r["tie_worst"] = tie.worst
                    if tie.violations:
                        r["tie_violations"] = tie.violations[:3]
                violations = tie_aware and tie.violations
                ok = (r["err"] <= GRAD_TOL and r["score_err"] <= GRAD_TOL and r["finite"] and not violations)
                r["status"] = "match" if ok else "mismatch"
                if not ok and timm_src and dtype == torch.float64:
                    # diagnosis only (the status stays): PyTorch's own float32 gradient against the float64 one
                    xt32 = torch.tensor(x, requires_grad=True)
                    y32 = tmodel(xt32)
                    g32, = torch.autograd.grad(y32.gather(1, torch.tensor(target)[:, None]).sum(), xt32)
                    r["f32_noise"] = rel_err(g32.numpy(), g.numpy())
                    r["err_f32"] = rel_err(rel, g32.numpy())  # the explainer against PyTorch's own float32
                    r["torch_f32_score_err"] = rel_err(y32.detach().numpy(), logits)
            elif fam == "attnlrp":
                if timm_src or not name.startswith("vit_"):
                    r.update(oracle=None, status="runs (no oracle)" if r["finite"] else "non-finite",
                             why="no AttnLRP reference for this architecture (LXT maps torchvision's VisionTransformer)")
                else:
                    sys.path.insert(0, str(ROOT / "tests"))
                    import attnlrp_reference as AREF
                    if tmodel is None:
                        tmodel = torch_model(name)
                    _, ref = AREF.relevance(tmodel, x, target, "attnlrp")
                    r["oracle"] = "lxt-attnlrp-f64"
                    r["err"] = rel_err(rel, ref)
                    r["pearson"] = float(np.corrcoef(rel.ravel().astype(np.float64), ref.ravel())[0, 1])
                    r["ref_conservation"] = [float(v) for v in ref.reshape(len(target), -1).sum(1) / tscore]
                    ok = r["err"] <= LRP_TOL and r["pearson"] >= LRP_R and r["score_err"] <= GRAD_TOL
                    r["status"] = "match" if ok else "mismatch"
            else:
                if timm_src and tmodel is None:
                    tmodel = torch_model(name)
                kind, why = zennit_plan(name) if not timm_src else timm_zennit_plan(rec, tmodel)
                if kind is None:
                    r.update(oracle=None, status="runs (no oracle)" if r["finite"] else "non-finite", why=why)
                else:
                    if tmodel is None:
                        tmodel = torch_model(name)
                    ref = zennit_epsilon(name, tmodel.float(), x, target, kind)
                    a, b = rel.ravel().astype(np.float64), ref.ravel().astype(np.float64)
                    r["oracle"] = "zennit-epsilon"
                    r["err"] = rel_err(rel, ref)
                    r["pearson"] = float(np.corrcoef(a, b)[0, 1])
                    r["zennit_conservation"] = [float(v) for v in ref.reshape(len(target), -1).sum(1) / tscore]
                    within = r["err"] <= LRP_TOL and r["pearson"] >= LRP_R
                    if not within:
                        # the same float32 rule as the gradient family: Zennit in float64 on the same weights is the
                        # exact function; accept within tolerance of it, or within 3x Zennit's own float32 deviation
                        ref64 = zennit_epsilon(name, tmodel.double(), x.astype(np.float64), target, kind)
                        tmodel = tmodel.float()
                        r["err_f64"] = rel_err(rel, ref64)
                        r["pearson_f64"] = float(np.corrcoef(a, ref64.ravel())[0, 1])
                        r["f32_noise"] = rel_err(ref, ref64)
                        r["oracle"] = "zennit-epsilon-f32+f64"
                        within = ((r["err_f64"] <= LRP_TOL and r["pearson_f64"] >= LRP_R)
                                  or (r["err"] <= 3 * r["f32_noise"] and max(r["pearson"], r["pearson_f64"]) >= LRP_R))
                    r["status"] = "match" if within and r["score_err"] <= GRAD_TOL else "mismatch"
            r["oracle_s"] = round(time.perf_counter() - t0, 2)
        except Exception as e:  # noqa: BLE001
            r.update(status="oracle-fail", error=one_line(e), traceback=traceback.format_exc()[-2000:])
    return out


# ------------------------------------------------------------------------------------------------ driver
def pairs_available(build: Path, models, exporters):
    recs = {}
    for p in sorted(build.glob("*_*.json")):
        if p.name == "manifest.json":
            continue
        try:
            r = json.loads(p.read_text())
        except Exception:  # noqa: BLE001
            continue
        if "model" not in r or "exporter" not in r:
            continue
        if models and r["model"] not in models:
            continue
        if r["exporter"] not in exporters:
            continue
        recs[(r["model"], r["exporter"])] = r
    return recs


def run_pair(name, exporter, families, build, timeout):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as f:
        tmp = Path(f.name)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", name, exporter, ",".join(families), str(build),
                            str(tmp)], env=env, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
        if p.returncode == 0 and tmp.stat().st_size:
            res = json.loads(tmp.read_text())
        else:
            tail = " | ".join((p.stderr or "").strip().splitlines()[-2:])[:300]
            res = {fam: {"status": "crash", "error": f"worker rc={p.returncode}: {tail}"} for fam in families}
    except subprocess.TimeoutExpired:
        res = {fam: {"status": "timeout", "error": f"pair timed out after {timeout:.0f}s"} for fam in families}
    finally:
        tmp.unlink(missing_ok=True)
    return res, round(time.perf_counter() - t0, 1)


def load_results(path: Path) -> dict:
    if path.exists():
        try:
            return json.loads(path.read_text())
        except Exception:  # noqa: BLE001
            pass
    return {"results": {}}


def save_results(path: Path, db: dict):
    import platform

    import onnxruntime
    import torch
    import torchvision

    try:
        import timm
        db.setdefault("env", {})["timm"] = timm.__version__
    except ImportError:
        pass
    db["env"] = {**db.get("env", {}), "torch": torch.__version__, "torchvision": torchvision.__version__,
                 "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(db, indent=1, sort_keys=True) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma-separated model names (default: every export in --build)")
    ap.add_argument("--exporters", default=",".join(EXPORTERS))
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--out", default=str(DOC), help="markdown report (regenerated from all results)")
    ap.add_argument("--results", default=str(RESULTS), help="raw JSON results (merged, kept across runs)")
    ap.add_argument("--build", default="", help=f"exports (default {BUILD.relative_to(ROOT)}; timm: model_zoo/build/timm)")
    ap.add_argument("--source", choices=("torchvision", "timm"), default="torchvision",
                    help="timm: export and measure the timm selection of model_zoo/timm_zoo.py (tools/coverage_timm.py)")
    ap.add_argument("--n", type=int, default=150, help="timm: models in the selection")
    ap.add_argument("--keep-exports", action="store_true", help="timm: keep the .onnx files after measuring")
    ap.add_argument("--retry-exports", action="store_true", help="timm, with --skip-done: export failed pairs again")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per (model, exporter) pair")
    ap.add_argument("--skip-done", action="store_true", help="skip pairs/families already in --results")
    ap.add_argument("--report-only", action="store_true", help="measure nothing; rewrite --out from --results")
    ap.add_argument("--merge", default="", help="comma-separated result files of parallel runs to merge into --results "
                    "(their pairs/families win)")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        name, exporter, fams, build, dest = a.worker
        res = worker(name, exporter, fams.split(","), Path(build))
        Path(dest).write_text(json.dumps(res))
        return 0

    build = Path(a.build or BUILD)
    if a.source == "timm" and a.families == ",".join(FAMILIES):
        a.families = "gradient,lrp"
    families = [f for f in a.families.split(",") if f]
    for f in families:
        if f not in FAMILIES:
            ap.error(f"unknown family {f!r} (known: {', '.join(FAMILIES)})")
    exporters = [e for e in a.exporters.split(",") if e]
    models = [m for m in a.models.split(",") if m]
    db = load_results(Path(a.results))
    recs = pairs_available(build, models, exporters)
    for extra in [m for m in a.merge.split(",") if m]:
        for key, entry in load_results(Path(extra)).get("results", {}).items():
            mine = db["results"].setdefault(key, {"families": {}})
            for fr in entry.get("families", {}).values():  # provenance per family: a pair can mix two sweeps
                fr.setdefault("measured", entry.get("measured"))
            for fr in mine.get("families", {}).values():
                fr.setdefault("measured", mine.get("measured"))
            fams = {**mine.get("families", {}), **entry.get("families", {})}
            mine.update({k: v for k, v in entry.items() if k not in ("families", "source", "measured")})
            mine["families"] = fams
        save_results(Path(a.results), db)

    if a.source == "timm":
        import coverage_timm
        if not a.report_only:
            coverage_timm.sweep(a, db, families, exporters, lambda d: save_results(Path(a.results), d),
                                lambda d: write_report(Path(a.out), d, Path(BUILD)), _export_info)
            save_results(Path(a.results), db)
        write_report(Path(a.out), db, Path(BUILD))
        print("wrote", a.out, "and", a.results)
        return 0
    if not a.report_only:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        todo = []
        for (name, exporter), rec in sorted(recs.items()):
            key = f"{name}/{exporter}"
            if rec.get("status") != "ok" or not (build / f"{name}_{exporter}.onnx").exists():
                db["results"][key] = {"model": name, "exporter": exporter, "export": _export_info(rec),
                                      "families": {}}
                continue
            fams = families
            if a.skip_done and key in db["results"]:
                have = db["results"][key].get("families", {})
                fams = [f for f in families if f not in have or have[f].get("status") in ("timeout", "crash")]
            fams = [f for f in fams if f != "attnlrp" or ATTN_OPS & set(rec.get("op_types") or [])]
            if fams:
                todo.append((name, exporter, rec, fams))
        t_start = time.perf_counter()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("{task.fields[last]}")) as prog:
            task = prog.add_task("coverage", total=len(todo), last="")
            for name, exporter, rec, fams in todo:
                prog.update(task, description=f"{name} ({exporter})")
                res, secs = run_pair(name, exporter, fams, build, a.timeout)
                key = f"{name}/{exporter}"
                entry = db["results"].get(key) or {"families": {}}
                for fr in entry.get("families", {}).values():
                    fr.setdefault("measured", entry.get("measured"))
                for fr in res.values():
                    fr["measured"] = time.strftime("%Y-%m-%d")
                entry.update(model=name, exporter=exporter, export=_export_info(rec), seconds=secs)
                entry.pop("measured", None)
                entry.setdefault("families", {}).update(res)
                db["results"][key] = entry
                save_results(Path(a.results), db)
                write_report(Path(a.out), db, build)
                brief = " ".join(f"{f}={res[f]['status']}" for f in fams if f in res)
                prog.console.print(f"{name:22s} {exporter:6s} {secs:6.1f}s  {brief}")
                prog.update(task, advance=1, last=brief)
        print(f"measured {len(todo)} pairs in {time.perf_counter() - t_start:.0f}s")
        save_results(Path(a.results), db)
    write_report(Path(a.out), db, build)
    print("wrote", a.out, "and", a.results)
    return 0


def _export_info(rec: dict) -> dict:
    return {k: rec.get(k) for k in ("status", "error", "op_types", "n_nodes", "opset", "dynamic_batch",
                                    "total_seconds", "input_shape", "file_bytes")}


# ------------------------------------------------------------------------------------------------ report
def _cell(fr: dict | None) -> str:
    if not fr:
        return "-"
    s = fr.get("status", "?")
    if s == "match":
        if fr.get("err_ort_basic") is not None:
            return f"✅ match {fr['err_ort_basic']:.1e} at ORT basic opt. ({fr['err']:.1e} at ENABLE_ALL: near-tie)"
        if fr.get("f32_noise") is not None and fr["err"] > (GRAD_TOL if "pearson" not in fr else LRP_TOL):
            return f"✅ match {fr['err']:.1e} (f32 noise {fr['f32_noise']:.1e})"
        forced = f" ({fr['forced_units']} forced)" if fr.get("forced_units") else ""
        if fr.get("tie_error"):
            forced = " (plain float64 autograd: kinked units not paired)"
        return f"✅ match {fr['err']:.1e}{forced}"
    if s == "mismatch":
        if fr.get("tie_violations"):
            return f"❌ mismatch {fr.get('err', float('nan')):.1e} ({fr['tie_violations'][0]})"
        extra = f" r={fr['pearson']:.5f}" if "pearson" in fr else ""
        if fr.get("score_err", 0) > GRAD_TOL:
            extra += f" scores {fr['score_err']:.1e}"
        if fr.get("f32_noise") is not None:
            extra += f" (f32 noise {fr['f32_noise']:.1e})"
        if fr.get("err_f32") is not None:
            extra += f" ({fr['err_f32']:.1e} from PyTorch float32)"
        if fr.get("tie_error"):
            extra += " (plain float64 autograd: kinked units not paired)"
        return f"❌ mismatch {fr.get('err', float('nan')):.1e}{extra}"
    if s == "runs (no oracle)":
        c = fr.get("conservation") or []
        return "⚪ runs, no oracle (sum/score " + " / ".join(f"{v:.3f}" for v in c) + ")"
    return f"❌ {s}"


def _ops(exp: dict) -> str:
    ops = exp.get("op_types") or []
    notable = [o for o in ops if o not in PLAIN_OPS]
    return f"{exp.get('op_count') or len(ops)}" + (f": {', '.join(notable)}" if notable else "")


def write_report(out: Path, db: dict, build: Path):
    import coverage_timm
    rows = sorted((r for k, r in db.get("results", {}).items() if not k.startswith(coverage_timm.PREFIX)),
                  key=lambda r: (r["model"], r["exporter"]))
    rows_by = {(r["model"], r["exporter"]): r for r in rows}
    lines = ["# Model-zoo coverage", "",
             "Generated by `OMP_NUM_THREADS=1 python tools/coverage.py` (CPU, onnxruntime, one thread, one model at a time);",
             "raw results in `docs/coverage.json`. Models: torchvision classifiers with seeded random weights",
             "(`model_zoo/zoo.py`, input sizes per `input_shape`), exported by `model_zoo/torchvision_zoo.py` with the legacy",
             "(`dynamo=False`, opset 17) and the dynamo exporter. Input: the seeded batch of two N(0,1) images stored with the",
             f"export; targets: class {FIXED_TARGET} for row 0, the predicted class for row 1.", "",
             f"- **gradient**: `xcompile.compile(path, \"gradient\")` vs PyTorch autograd in float64 on the same weights,"
             " tie-aware (`model_zoo/tie_oracle.py`): where a ReLU / Clip / HardSwish input or a MaxPool window lies within"
             " float32 rounding of its kink (<= 2^-14 of the row's max), the reference takes the explainer's branch;"
             " '(n forced)' counts such units. A unit on the other branch beyond that bound is a mismatch."
             f" match = max|ours - ref| / max|ref| <= {GRAD_TOL:g} and explainer scores equal the PyTorch logits to {GRAD_TOL:g}.",
             f"- **lrp**: `xcompile.compile(path, \"lrp\", rules=\"epsilon\")` vs Zennit's LRP-epsilon composite (Pass on activations,"
             f" Norm on residual sums / average pools, epsilon=1e-6, BatchNorm merged) where the model can be canonized like for"
             f" like; match = relative max error <= {LRP_TOL:g} and Pearson r >= {LRP_R}. Elsewhere 'runs, no oracle' with the"
             " conservation ratio sum(relevance) / target score per row (1.000 = conservative; biases, epsilon and"
             " non-conservative layers make it drift).",
             "- **float32 rule** (lrp; gradient rows measured before 2026-12-02, on the zoo's earlier random BatchNorm"
             " statistics, used it too): where the float32 comparison misses, the oracle is also run in float64 and a pair"
             " matches if it is within tolerance of float64, or within 3x the oracle's own float32-vs-float64 deviation."
             " Such cells show that deviation as 'f32 noise'. Since 2026-12-02 the zoo calibrates BatchNorm statistics on"
             " seeded data (`model_zoo.zoo.calibrate_batchnorm`): rows are dated by their measurement.",
             "- **ops**: number of distinct ONNX op types in the export, then those beyond plain CNN ops.",
             "- **lrp (attnlrp)**: `rules=\"attnlrp\"` (rules/attnlrp.toml) on models with LayerNorm; for torchvision's"
             " VisionTransformer vs the AttnLRP reference of tests/attnlrp_reference.py (Gradient x Input in float64 with"
             " LXT's modified backward), same thresholds as lrp; '-' = not run (no LayerNorm) or not measured yet.",
             "- **compile s**: gradient / lrp (epsilon) [/ attnlrp] compile time.", ""]
    stats = {f: {"pairs": 0, "compile": 0, "run": 0, "match": 0, "oracle": 0, "f32": 0} for f in FAMILIES}
    worst = {f: (0.0, "") for f in FAMILIES}
    table = ["| model | exporter | ops | gradient | lrp (epsilon) | lrp (attnlrp) | worst err | compile s |",
             "|---|---|---|---|---|---|---|---|"]
    failures = []
    for r in rows:
        exp = r.get("export", {})
        fams = r.get("families", {})
        if exp.get("status") != "ok":
            continue
        errs = []
        for f in FAMILIES:
            fr = fams.get(f)
            if not fr:
                continue
            st = stats[f]
            st["pairs"] += 1
            s = fr.get("status")
            if s not in ("compile-fail", "timeout", "crash"):
                st["compile"] += 1
            if s in ("match", "mismatch", "runs (no oracle)", "oracle-fail"):
                st["run"] += 1
            if fr.get("oracle"):
                st["oracle"] += 1
            if s == "match":
                st["match"] += 1
                if fr.get("err", 0) > (GRAD_TOL if f == "gradient" else LRP_TOL):
                    st["f32"] += 1
            if "err" in fr and fr["err"] == fr["err"]:
                errs.append(fr["err"])
                if fr["err"] > worst[f][0]:
                    worst[f] = (fr["err"], f"{r['model']} ({r['exporter']})")
            if s not in ("match", "runs (no oracle)"):
                failures.append((r["model"], r["exporter"], f, s, fr.get("error") or _cell(fr)))
        comp = " / ".join(f"{fams[f]['compile_s']:.1f}" if fams.get(f, {}).get("compile_s") is not None else "-"
                          for f in FAMILIES if f != "attnlrp" or f in fams)
        table.append(f"| {r['model']} | {r['exporter']} | {_ops(exp)} | {_cell(fams.get('gradient'))} | "
                     f"{_cell(fams.get('lrp'))} | {_cell(fams.get('attnlrp'))} | "
                     f"{f'{max(errs):.1e}' if errs else '-'} | {comp} |")
    lines += ["## Summary", ""]
    for f in FAMILIES:
        st = stats[f]
        if not st["pairs"]:
            continue
        w = f"; worst err {worst[f][0]:.1e} ({worst[f][1]})" if worst[f][1] else ""
        noise = f", {st['f32']} of them only under the float32 rule" if st["f32"] else ""
        lines.append(f"- **{f}**: {st['compile']}/{st['pairs']} compile, {st['run']}/{st['pairs']} run, "
                     f"{st['match']}/{st['oracle']} match their oracle ({st['oracle']} of {st['pairs']} pairs have one"
                     f"{noise}){w}")
    try:
        from model_zoo.zoo import list_torchvision
        names = list_torchvision()
        both = [n for n in names if all(rows_by.get((n, e), {}).get("families") for e in EXPORTERS)]
        lines.append(f"- **models**: {len(both)}/{len(names)} torchvision classifiers measured with both exporters "
                     f"({sum(1 for r in rows if r.get('families'))} model x exporter pairs)")
    except Exception:  # noqa: BLE001
        pass
    dates = {}
    for r in rows:
        for fr in r.get("families", {}).values():
            d = fr.get("measured") or r.get("measured") or "?"
            dates[d] = dates.get(d, 0) + 1
    lines.append("- **measured on** (pair x family results): "
                 + ", ".join(f"{d}: {n}" for d, n in sorted(dates.items()))
                 + " (the 2026-11-22 results were re-read from that day's report, the raw file having been lost with"
                   " its machine; docs/coverage.json now keeps them)")
    lines += ["", "## Results", ""] + table + ["", "## Still missing", ""]
    # torchvision models with no export here
    missing = []
    try:
        from model_zoo.zoo import list_torchvision
        have = {r["model"] for r in rows if r.get("export", {}).get("status") == "ok"}
        exported_any = {p.name.rsplit("_", 1)[0] for p in build.glob("*_*.onnx")}
        missing = [n for n in list_torchvision() if n not in have and n not in exported_any]
        del have
    except Exception:  # noqa: BLE001
        pass
    if missing:
        lines.append(f"- **Not exported in this session** ({len(missing)}): " + ", ".join(missing))
    measured = {(r["model"], r["exporter"]) for r in rows if r.get("families")}
    unmeasured = sorted(k for k, rec in pairs_available(build, [], EXPORTERS).items()
                        if rec.get("status") == "ok" and k not in measured)
    if unmeasured:
        lines.append(f"- **Exported but not measured (time budget ran out)** ({len(unmeasured)} pairs): "
                     + ", ".join(f"{m} ({e})" for m, e in unmeasured))
    for r in rows:
        exp = r.get("export", {})
        if exp.get("status") != "ok":
            lines.append(f"- {r['model']} ({r['exporter']}): export failed: {(exp.get('error') or '')[:200]}")
    nooracle = sorted({(r["model"].rstrip("0123456789_"), fr.get("why")) for r in rows
                       for f, fr in r.get("families", {}).items() if fr.get("status") == "runs (no oracle)"})
    for fam, why in _group_why(rows):
        lines.append(f"- LRP without oracle: {fam}: {why}")
    for m, e, f, s, err in failures:
        lines.append(f"- {m} ({e}) {f}: **{s}**: {str(err)[:240]}")
    del nooracle
    timm_lines = coverage_timm.timm_section(db, _cell, _ops, GRAD_TOL)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the timm sweep beside the torchvision table, then the findings and the hand-measured sections (NOTES)
    out.write_text("\n".join(lines) + "\n" + "\n".join(timm_lines) + ("\n\n" if timm_lines else "") + NOTES)


def _group_why(rows):
    by = {}
    for r in rows:
        fr = r.get("families", {}).get("lrp", {})
        if fr.get("status") == "runs (no oracle)":
            by.setdefault(fr.get("why"), []).append(f"{r['model']}")
    return [(", ".join(sorted(set(v))), k) for k, v in sorted(by.items(), key=lambda kv: str(kv[0]))]


NOTES = """
## Findings (2026-12-02): a tie-aware oracle, calibrated BatchNorm

- **Oracle**: the gradient family is now compared with float64 autograd that takes the explainer's branch only where a
  ReLU / Clip / HardSwish input or a MaxPool window lies within float32 rounding of its kink (<= 2^-14 of the row's
  largest |value|; `model_zoo/tie_oracle.py`). The float32 rule (within 3x PyTorch's own float32 noise) and the
  ENABLE_BASIC recheck are gone for the gradient; a unit on the other branch beyond the bound is a mismatch.
- **Zoo**: `model_zoo.zoo.torch_model` calibrates every BatchNorm's statistics on seeded N(0, 1) images
  (`calibrate_batchnorm`). Before, the randomized statistics let random-weight networks lose the input signal stage
  by stage (|dlogit/dx| ~ 1e-15 on efficientnet_b0, now ~1): the checks now exercise the whole depth. Rows measured
  before 2026-12-02 were measured on the earlier weights (their date is in the table's families in coverage.json).
- **Re-measured** (gradient, both exporters, 2026-12-02): every pair that matched only under the float32 rule or the
  BASIC recheck, plus the previous mismatches densenet161, resnext101_32x8d, resnext101_64x4d and vgg11_bn (dynamo).
  All match at 4.9e-7 to 4.5e-5 with 0 to 27 forced units (VGG: 1-14 units, MaxPool winners among them), except
  **resnet152**, 1.4e-4 (both exporters), 35 units forced, one of them 8.6e-5 of the row max from its kink (over the
  6.1e-5 bound): its 152-layer float32 forward drifts from float64 by ~1e-4 at the deep end (the explainer's scores
  are 8.6e-5 off PyTorch float64 -- the model's own float32 forward, which xcompile keeps verbatim), so float32
  accumulation, not a branch, sets the error there (resnet101: 2.9e-5, 13 units); kept as a mismatch.

## Findings (2026-12-01)

- **The torchvision list, both exporters**: the rows of 2026-11-22 were re-read from that day's report (its raw
  JSON was in the ignored build folder and went with its machine; docs/coverage.json is now committed and
  accumulates across sessions: `--skip-done` continues from it). This session built and measured the 28 models
  missing then (VGG-13/16-BN/19, RegNet 8-128 GF, ResNeXt-101, Wide-ResNet, Swin-B, Swin-V2-B, EfficientNet-B7/V2,
  MNASNet, ViT-L/H) and the pairs left open. Not done: regnet_y_128gf's dynamo export (the exporter was OOM-killed),
  its legacy pair and vit_h_14's LRP / legacy gradient (OOM-killed, see below).
- **Models over 2 GiB** (vit_h_14 2.5 GB, regnet_y_128gf 2.6 GB of float32 weights): protobuf cannot serialize them,
  so every place that handed a ModelProto to onnxruntime or the checker now gets a weightless skeleton (the weights
  given to onnxruntime as arrays; no temporary copy on disk) and the writer streams the weights once into the data
  file (`xcompile/protobuf_limit.py`; tests/load/test_large_models.py lowers the limit to exercise that path on the
  digits CNN; compile time and peak RSS in docs/benchmarks.md "Huge models"). vit_h_14 (dynamo) gradient: compiles, runs, 1.3e-6 of autograd. Memory: a worker measuring one of
  them takes 12-20 GB RSS (LRP on vit_h_14 was OOM-killed at 20.5 GB); on this 24 GB machine they must run alone.
- **lrp (attnlrp)**: the AttnLRP rule set (rules/attnlrp.toml; docs/lrp_parity.md) on every model with LayerNorm;
  torchvision ViTs against the LXT-style reference. The comparison found and fixed a stabilizer bias in products of
  two activations (vit_b_16 1.1e-2 -> 4.5e-5).
- **onnxruntime ENABLE_ALL near-ties** (new evidence): resnext101_32x8d (dynamo) gradient, row 1, is 3.8e-4 off
  autograd with the default ENABLE_ALL optimizations and 8.4e-7 with the same explainer file at DISABLE_ALL or BASIC
  (PyTorch's own float32 is 8.7e-7 off float64); regnet_x_16gf (dynamo) 1.7e-3 vs 1.5e-6. The tool now re-runs a
  mismatching gradient at ORT_ENABLE_BASIC and counts the row as a match only when that run is within 1e-4. The
  legacy export of resnext101_32x8d stays 3.8e-4 at every level, also against autograd on weights whose BN was folded
  in float32 as the exporters do (so not the fold): recorded as a mismatch, a float32 near-tie suspected, not proven
  unit by unit. resnext101_64x4d (dynamo, 3.0e-3, PyTorch f32 noise 4.3e-4) was measured before the recheck existed.
- **float32 rule for LRP**: where the Zennit comparison misses, Zennit is also run in float64 on the same weights (as
  for the gradient). Re-measured with it: vgg11, wide_resnet101_2 (legacy), mnasnet0_75, regnet_x_8gf,
  regnet_x_16gf now match; the other VGG rows (vgg11_bn, vgg13*, vgg16*, vgg19*: PyTorch's own float32 gradient is
  2-4 % off float64 at 224 px there), ResNet-101/152, GoogLeNet and DenseNet were measured before it and still show
  the plain float32 comparison.
## Earlier findings (2026-11-22)

- **Compile gaps found by the first run, closed** (by general passes/emitters, not per model): batch-invariant
  run-time shape arithmetic is frozen to constants for the compiled sample shape (`freeze_shape_arithmetic`: Slice
  bounds of shufflenet_v2 legacy and swin legacy), Reshape targets computed from `Shape` become constants, a Gather
  whose indices depend on the batch size (dynamo's `as_strided` in convnext/swin) is scatter-added back with
  ScatterND, and ReduceL2 / ReduceSumSquare / Einsum got backward emitters (swin_v2 cosine attention, maxvit).
  Re-measured after the fixes: convnext_tiny dynamo, swin_t and swin_v2_t (both exporters), shufflenet_v2_x0_5
  legacy, maxvit_t (both), convnext_small/base/large dynamo all match autograd at <= 3e-6; every measured pair
  now compiles and runs for both families.
- **vgg11_bn dynamo gradient 1.2e-2 -- float32 conditioning, evidence**: the same explainer file gives row-0
  relevance that differs by 8.0e-2 between onnxruntime's ENABLE_ALL and DISABLE_ALL/BASIC/EXTENDED graph
  optimization levels (deterministic, independent of the thread count) while row 1 is bit-identical; the legacy
  export shows the same 8e-2 jump between levels. Exact algebra cannot move a linear backward pass by 8 %; a ReLU
  whose pre-activation is within float32 rounding of 0 (the smallest |z| of the first layers in float64 is 4e-8)
  can -- the forward of the explainer is computed with different kernels (Conv+Relu fusion is impossible there,
  the backward reads the pre-activation) and lands on the other side. The dynamo export carries the exporter's
  float32 BatchNorm fold, the legacy one ours (float64 then cast). Same class of issue as the ResNet-50 LRP-0
  near-tie analysed in docs/lrp_parity.md. densenet161 dynamo 2.9e-4 and densenet201 9.7e-4 are not analysed.
- **Zennit oracle fixed, not xcompile**: with the BNs folded before Zennit sees the model, ResNet-18/50,
  ResNeXt-50, MobileNetV2, MNASNet, RegNetX, ShuffleNetV2, SqueezeNet and AlexNet all match.
- DenseNet LRP rows: densenet121 was re-measured with the current recipe (BNs pre-folded); the densenet161/169/201
  LRP rows may come from the earlier recipe (Zennit's NamedMergeBatchNorm) -- rerun
  `python tools/coverage.py --models densenet161,densenet169,densenet201 --families lrp` to refresh them.
  LRP-epsilon through DenseNet's un-merged pre-activation BatchNorms is numerically degenerate on these random
  weights in both libraries (relevance sums of -23x to 135x the score).

## Notes

- The Zennit reference uses the zoo model's own float32 weights. Where torchvision calls a functional tail
  (`F.relu -> F.adaptive_avg_pool2d` in DenseNet, MobileNetV2; `x.mean([2, 3])` in MNASNet, ShuffleNetV2) it is
  wrapped in modules (same function) so Zennit applies Norm / Pass there, and residual sums outside ResNets
  (MobileNetV2, MNASNet, RegNetX) get a Sum-module canonizer as ResNetCanonizer does for ResNets (see
  `zennit_model_and_canonizers` in tools/coverage.py and tests/lrp_helpers.py). DenseNet uses the named conv ->
  BatchNorm pairs of tests/lrp_helpers.py.
- BatchNorm: for the Zennit reference every Conv2d -> BatchNorm2d pair (module order) is folded into a biased conv
  *before* Zennit sees the model (`fold_batchnorm`). With Zennit's own merge inside ResNetCanonizer, Zennit's
  LRP-epsilon on the zoo's ResNet-18 deviates by 1.2e-2 from an independent float64 implementation of the rule
  after only two residual blocks (its float32/float64 runs agree with each other); pre-folded, Zennit agrees with the
  float64 reference to 6e-5 and with xcompile to 1e-4. This is the "known ResNet-50 epsilon deviation" of
  docs/lrp_parity.md; MobileNetV2 (SequentialMergeBatchNorm) went from 6.5e-3 to a match the same way. The root
  cause inside Zennit's merge was not traced further. DenseNet folds the named conv -> BN pairs of
  tests/lrp_helpers.py (module order is not data-flow order there); its pre-activation BNs stay (Pass).
- DenseNet LRP-epsilon is ill-conditioned on these random-weight models: sum(relevance) / score is about -23 and
  85-135 (the pre-activation BatchNorm shifts and biases inject / absorb relevance), xcompile's legacy and dynamo
  explainers of the same weights differ from each other by a similar amount as from Zennit, while Pearson r stays
  >= 0.99996. Recorded as mismatch, not explained away.
- Scores: the explainer's first output is compared with the PyTorch float32 logits stored with the export.
- Static-batch exports (dynamo fallback when a dynamic batch failed) are explained one row per call.

## Recurrent and 1-D models

Measured 2026-12-02 (CPU) by `tests/load/test_recurrent.py` and `tests/methods/test_signals_1d.py`
(`python -m pytest -m "slow or not slow" -s tests/load/test_recurrent.py tests/methods/test_signals_1d.py` prints every figure).
`LSTM` / `GRU` / `RNN` nodes are unrolled at compile time over the sequence length of the model's input shape
(`xcompile/canonicalize/recurrent.py`); an input of another length is refused at run time with the usual one-line
shape error. Models: `[N, T=7, F=4]` → `nn.LSTM` / `nn.GRU` / `nn.RNN` (hidden 5) → last step, or (bidirectional)
also the final hidden states `h_n` → `Linear` → 3 logits, random weights. 12 configs per row: 1/2 layers ×
uni/bidirectional × h0 (c0) given as module parameters or absent, × last step / `h_n` for bidirectional.
Error = max|ours − ref| / max|ref| over a batch of 3, worst over the configs (gradient / input×gradient vs float64
autograd / Captum, tolerance 1e-4; integrated gradients, 8 steps, vs Captum, tolerance 1e-3, 1-layer configs).

| model | exporter | gradient | input_x_gradient | integrated_gradients | lrp (epsilon) |
|---|---|---|---|---|---|
| nn.LSTM | legacy | ✅ 7.0e-07 | ✅ 3.7e-07 | ✅ 1.4e-07 | ✅ Arras reference 1.8e-07 (no bias) / 3.5e-07 (bias); finite 12/12 |
| nn.LSTM | dynamo | ✅ 7.0e-07 | ✅ 3.7e-07 | ✅ 1.4e-07 | ✅ Arras reference 1.8e-07 / 3.5e-07; finite 12/12 |
| nn.GRU | legacy | ✅ 2.0e-07 | ✅ 9.0e-07 | ✅ 2.0e-07 | ✅ Arras reference 1.2e-07 / 5.6e-07; finite 12/12 |
| nn.GRU | dynamo | ✅ 2.0e-07 | ✅ 9.0e-07 | ✅ 2.0e-07 | ✅ Arras reference 1.2e-07 / 5.6e-07; finite 12/12 |
| nn.RNN (tanh) | legacy | ✅ 2.4e-07 | ✅ 5.2e-07 | ✅ 2.2e-07 | ⚪ no oracle; finite 12/12 |
| nn.RNN (tanh) | dynamo (torch decomposes it: no RNN node) | ✅ 3.4e-07 | ✅ 2.3e-07 | ✅ 2.6e-07 | ⚪ no oracle; finite 12/12, sum R / score −82…78 (legacy −21…22) |
| nn.RNN (relu) | legacy | ✅ 1.1e-07 | ✅ 1.8e-07 | ✅ 8.9e-08 | ⚪ no oracle; finite 12/12 |
| nn.RNN (relu) | dynamo (decomposed) | ✅ 1.1e-07 | ✅ 1.8e-07 | ✅ 8.9e-08 | ⚪ no oracle; finite 12/12 |
| one ONNX node (6 graphs): LSTM bidirectional + peepholes + given states; LSTM reverse, layout 1, no bias; GRU bidirectional (linear_before_reset 0) / forward, layout 1 (1); RNN reverse Relu / bidirectional layout 1 Tanh,Sigmoid | hand-made | ✅ ≤ 2.8e-07 vs autograd of the ONNX equations | - | - | - |
| ECG-like CNN [N, 1, 256]: Conv1d, BatchNorm1d, MaxPool1d, AvgPool1d, AdaptiveAvgPool1d(1) | legacy / dynamo | ✅ 1.2e-07 / 1.3e-07 | ✅ 8.3e-08 / 8.3e-08 | - | ✅ epsilon-plus-flat vs Zennit EpsilonPlusFlat 2.6e-07 / 3.4e-07 |
| same with AdaptiveAvgPool1d(4) + two Linear | legacy / dynamo | ✅ 1.6e-07 / 1.6e-07 | ✅ 2.1e-07 / 1.9e-07 | - | ✅ 2.7e-07 / 2.7e-07 |

- Scores: the explainer's scores equal PyTorch's logits (≤ 1e-5) and, for the one-node graphs, onnxruntime's own
  LSTM/GRU/RNN kernels (≤ 3.7e-07; layout 1, which onnxruntime's kernels lack, through a layout-0 twin). A float16
  GRU graph keeps its dtype: scores 4.9e-04, gradient 3.6e-04 from the float64 reference.
- LRP: the Arras et al. 2017 numpy reference (one-layer LSTM / GRU read at the last step) agrees element by element;
  with zero biases, zero initial states and ε = 1e-10, relevance is conserved (sum R / score within 9e-6 of 1) on
  uni- and bidirectional, 1- and 2-layer cells of all three kinds and both exporters (24/24 bias-free configs).
  With biases the ε rule lets them absorb their share: on these random small models (hidden size 5) sum R / score
  lies in −2.6…10 (LSTM), −0.9…8 (GRU), −21…22 (RNN, legacy; the extremes on rows whose score is ~1e-2), and the
  numpy reference gives the same numbers. Given initial states absorb what reaches them (Arras: not inputs).
- Exporter difference (nn.RNN, dynamo): torch writes the cell as MatMul + Add(b_ih) + MatMul + Add(b_hh) + Tanh, not
  an RNN node. Until 2026-12-03 LRP passed all relevance through the bias Adds, so where x·W ≈ 0 but x·W + b is not,
  the MatMul's ε rule divided by the cancelling x·W: one row of the 2-layer bidirectional `h_n` config reached
  max|R| 5e8 (sum R / score −2.7e5). A bias Add is now proportional (the bias absorbs its share, exactly the ε rule
  of a layer with its bias; docs/lrp_auto.md, mechanism 1): re-measured, the dynamo rows stay within sum R / score
  −82…78 (the extremes on rows whose score is ~1e-2), the same order as the legacy export's one-Gemm cell.
- Rule sets: use `--rules epsilon` for recurrent models; the CNN sets (default `epsilon-plus-flat`) run (finite) but
  put the flat rule on the first step's input map.
- Sequence length: fixed at compile time from the declared input shape; when the export leaves it symbolic,
  `--set input_shape=` chooses it (declared before canonicalization, so the unrolling uses it; e.g. an LSTM text
  classifier exported with symbolic N and L compiles at L = 10). A model with a symbolic length and no
  `input_shape` is refused with one line naming the node ("is not fixed").
- LSTM text classifier (token ids → Embedding → bidirectional LSTM): see the text table below.

## Keras / TensorFlow (tf2onnx)

Measured 2026-12-03 (CPU, tensorflow-cpu 2.21.0, keras 3.15.1, tf2onnx 1.17.0, onnxruntime 1.32.0) by
`tests/load/test_tf_keras.py` (`python -m pytest -m "slow or not slow" -s tests/load/test_tf_keras.py` prints every figure).
Keras 3 models on the TensorFlow backend, random weights (`weights=None`, 10 classes), every BatchNormalization
calibrated on 32 seeded N(0, 1) images (the explained rows among them) with a random scale/shift
(`model_zoo/tf_keras.py`), converted by `tf2onnx.convert.from_keras(..., opset=17)` and by Keras'
`model.export(path, format="onnx")` (TensorFlow backend, which runs tf2onnx at opset 15; xcompile converts it up to
17). Each model once ending in a Softmax (`classifier_activation="softmax"`) and once without it (its logits twin,
the same weights); xcompile explains the pre-softmax score of both. 4 rows, targets 0, 3, 6 and -1 (the argmax).
Oracle: `tf.GradientTape` on the logit through a float64 copy of the Keras model (the float32 weights cast up),
tie-aware: where a ReLU / ReLU6 input or a MaxPool window lies within 2^-14 of the row's max of its kink, the
float64 tape takes the explainer's branch (`model_zoo/tf_tie_oracle.py`, the rule of `model_zoo/tie_oracle.py`); a
differing unit beyond that bound fails. Scores: the explainer's first output vs the float64 Keras copy's own output
(probabilities for the Softmax model, logits for its twin). Error = max|ours − ref| / max|ref| over the batch,
tolerance 1e-4 for both. Identical numbers for the two converters and both heads where the table gives one.

| model | input | converter | softmax? | compiles / runs | scores | gradient: plain float64 tape | gradient: tie-aware (forced units) | TensorFlow's own float32 gradient | test |
|---|---|---|---|---|---|---|---|---|---|
| functional CNN (Conv2D+BN+ReLU, MaxPool, residual Add, Concatenate, GAP, Dense) | 32x32x3 | tf2onnx / export | yes / no | ✅ | 2.1e-07 / 2.0e-07 | 3.0e-07 | ✅ 3.0e-07 (0) | 3.1e-07 | default |
| MobileNetV2 (ReLU6 → Clip) | 32x32x3 | tf2onnx | yes / no | ✅ | 9.5e-06 / 2.0e-05 | 9.3e-07 | ✅ 9.3e-07 (0) | 1.5e-06 | default |
| MobileNetV2 | 64x64x3 | tf2onnx / export | yes / no | ✅ | 6.8e-06 / 9.6e-06 | 3.5e-04 | ✅ 7.4e-07 (1 ReLU6 unit, 1.1e-07 of the row max from 0) | 2.8e-03 | slow |
| EfficientNetB0 (Rescaling, Normalization, swish, SE Multiply) | 64x64x3 | tf2onnx / export | yes / no | ✅ | 2.3e-05 / 9.7e-06 | 8.1e-06 | ✅ 8.1e-06 (no kinks) | 2.2e-05 | slow |
| ResNet50 (ZeroPadding2D + MaxPool 3x3/2, residual Adds) | 32x32x3 | tf2onnx / export | yes / no | ✅ | 4.6e-05 / 4.6e-05 | 1.0e-06 | ✅ 1.0e-06 (0) | 1.9e-06 | slow |
| constructed float32 tie (two 1x1 Conv = (x+1)−1, ReLU, MaxPool 2x2, Dense) | 2x4x1 | tf2onnx | no | ✅ | - | 1.0 | ✅ 0.0 (per row 1 ReLU unit, 2 MaxPool windows) | 1.0 | default |

- **Fix found by these models**: Keras' `model.export(format="onnx")` of EfficientNetB0 keeps the Normalization
  layer's mean and variance as graph inputs `[1, 1, 1, 3]` after tf2onnx's constant folding replaced every use of
  them: onnxruntime requires feeds for them and xcompile refused the model ("several float inputs"). Graph inputs
  that no node reads are now dropped when loading (`xcompile/canonicalize/inputs.py`, a Decision that
  `xcompile inspect` prints; `tests/load/test_load.py::test_an_input_that_no_node_reads_is_dropped`). Nothing else
  needed changing: channels-last inputs with tf2onnx's Transposes (Reshapes where C = 1), BatchNorm fused into
  Conv by tf2onnx, Clip for ReLU6, Pad before MaxPool, Softmax heads and opset 15 all compiled as they were.
- **float32 conditioning**: MobileNetV2 at 64 px has one ReLU6 unit 1.1e-07 of its row's max from 0: float64 puts
  it on the other side, and the plain float64 gradient differs by 3.5e-4 (TensorFlow's own float32 gradient by
  2.8e-3); with the explainer's branch there it agrees to 7.4e-07. EfficientNetB0 at 32 px (its last stages 1x1)
  has no kink at all, and float32 itself misses: TensorFlow's own float32 gradient is 2.4e-4 from float64,
  onnxruntime's 1.4e-4 (ENABLE_ALL) to 2.7e-4 (BASIC); at 64 px both are ≤ 2.2e-5. Not counted as a mismatch of
  xcompile's (no kinked unit, the explainer's forward is the model's own float32 graph), but not excused either: the
  test runs EfficientNetB0 at 64 px. An earlier calibration (16 images, the explained rows not among them) left two
  of four ResNet50 rows 3.2e-2 from the float64 tape while 1.8e-6 from TensorFlow's float32 tape: the float32
  near-ties this oracle is for (not re-measured with the tie-aware tape; the current calibration has none).
- **Scores**: ResNet50's float32 forward drifts from float64 in opposite directions in onnxruntime (4.6e-5) and
  TensorFlow (7.3e-5): the two float32 outputs are 1.1e-4 apart, hence the comparison with the float64 copy.
- **Cost**: the default run's three tests take 72 s here on a loaded 2-core machine (cnn 21 s, MobileNetV2 34 s,
  constructed tie 17 s; most of it TensorFlow's import, model building and conversion in the subprocess); the slow
  ones 58 s (MobileNetV2 64 px), 90 s (EfficientNetB0), 138 s (ResNet50). tf2onnx's conversion of ResNet50 peaks at
  8.5 to 10.7 GB of memory: run that test alone on a 24 GB machine.
- Keras picks its backend once per process (tests/load/test_keras.py runs Keras on torch): every TensorFlow step runs
  in a subprocess (`python model_zoo/tf_keras.py`, `KERAS_BACKEND=tensorflow`) that hands arrays back as .npz.

## Text classifiers (token ids)

Measured 2026-12-03 (CPU, torch 2.14.1, transformers 5.24.0, captum 0.9.0, LXT 2.1, onnxruntime 1.32.0) by
`tests/methods/test_tokens.py` and `tests/load/test_recurrent.py`
(`python -m pytest -m "slow or not slow" -s tests/methods/test_tokens.py tests/load/test_recurrent.py -k "text or every_method or lxt or gradient_matches"`
prints every figure). Models built from small `transformers` configs (random weights, no download: 2 layers,
hidden 32, vocabulary 100, 3 classes; GPT-2 with its causal mask and last-token pooling; ALBERT with shared layers;
`+erf` = the exact-GELU variant, the plain GPT-2/ALBERT use tanh-GELU `gelu_new`), a text CNN (Embedding 16 →
Conv1d 8, k=3 → ReLU → max over time → Linear) and an LSTM text classifier (Embedding 4 → bidirectional
`nn.LSTM` 5, batch first → last step → Linear); inputs `input_ids` + `attention_mask` (+ `token_type_ids` for
BERT/ALBERT/ELECTRA), L = 12, the second row padded after 8 tokens. Both PyTorch exporters. The explained value is
the token-id embedding output E (the `Gather` of the ids): `embedding_relevance [N, L, D]` is compared element by
element, then `relevance [N, L]` (the sum over D; the L2 norm for gradient and SmoothGrad).
Error = max|ours − ref| / max|ref| over 2 rows, targets 1 and 2; tolerances 1e-4 (gradient, input×gradient,
SmoothGrad, occlusion), 1e-3 (IG, LRP). Oracles: float32 autograd at E (gradient, SmoothGrad with the same noise
draws fed to torch), Captum `LayerGradientXActivation` / `LayerIntegratedGradients` (8 steps, riemann_right,
baseline = the pad token) / `LayerDeepLift` on the embedding module, token-replacement occlusion in torch, LXT 2.1
(`lxt.efficient` rules patched into the same torch model: AttnLRP and CP-LRP), Zennit (text CNN rule sets), and a
numpy Arras et al. 2017 reference (LSTM). Scores equal the model's own logits (≤ 1e-5) on every row; padding
tokens (mask 0) get relevance ≤ 1e-6 of the row's max (exactly 0 in every run here).

| model | exporter | gradient (E / tokens) | input×gradient | IG (8 steps) | SmoothGrad (E / tokens) | occlusion | DeepLIFT | attnlrp vs LXT (E / tokens) | cp-lrp vs LXT (E / tokens) |
|---|---|---|---|---|---|---|---|---|---|
| BERT | legacy | ✅ 5.5e-07 / 4.8e-07 | ✅ 6.8e-07 | ✅ 2.3e-07 | ✅ 5.4e-07 / 2.9e-07 | ✅ 3.5e-06 | ⚪ runs, finite (gap 0.25) | ✅ 6.5e-07 / 6.3e-07 | ✅ 1.0e-06 / 1.7e-06 |
| BERT | dynamo | ✅ 1.8e-06 / 1.3e-06 | ✅ 1.5e-06 | ✅ 3.2e-07 | ✅ 7.1e-07 / 4.4e-07 | ✅ 3.5e-06 | ⚪ (gap 0.25) | ✅ 6.5e-07 / 6.3e-07 | ✅ 1.0e-06 / 1.7e-06 |
| DistilBERT | legacy | ✅ 6.0e-07 / 2.3e-07 | ✅ 9.6e-07 | ✅ 5.4e-07 | ✅ 3.7e-07 / 1.8e-07 | ✅ 1.2e-06 | ⚪ (gap 0.31) | ✅ 2.9e-07 / 9.8e-07 | ✅ 3.7e-07 / 1.3e-06 |
| DistilBERT | dynamo | ✅ 5.0e-07 / 2.3e-07 | ✅ 1.2e-06 | ✅ 4.3e-07 | ✅ 3.0e-07 / 2.4e-07 | ✅ 1.2e-06 | ⚪ (gap 0.31) | ✅ 2.9e-07 / 9.8e-07 | ✅ 3.7e-07 / 1.3e-06 |
| RoBERTa | legacy | ✅ 7.3e-07 / 1.9e-07 | ✅ 1.4e-06 | ✅ 3.9e-07 | ✅ 3.1e-07 / 1.8e-07 | ✅ 4.8e-06 | ⚪ (gap 0.19) | ✅ 6.0e-07 / 1.2e-06 | ✅ 1.6e-06 / 2.4e-06 |
| RoBERTa | dynamo | ✅ 7.5e-07 / 2.8e-07 | ✅ 1.7e-06 | ✅ 5.2e-07 | ✅ 3.1e-07 / 1.8e-07 | ✅ 2.6e-06 | ⚪ (gap 0.19) | ✅ 6.0e-07 / 1.2e-06 | ✅ 1.6e-06 / 2.4e-06 |
| ALBERT (tanh GELU) | legacy | ✅ 1.4e-06 / 7.3e-07 | ✅ 8.6e-07 | ✅ 2.6e-07 | ✅ 3.4e-07 / 1.6e-07 | ✅ 5.4e-06 | ⚪ (gap 0.17) | ✅ 3.9e-06 / 6.9e-06 | ✅ 2.8e-06 / 3.1e-06 |
| ALBERT (tanh GELU) | dynamo | ✅ 1.4e-06 / 7.3e-07 | ✅ 8.6e-07 | ✅ 2.6e-07 | ✅ 3.4e-07 / 1.6e-07 | ✅ 5.4e-06 | ⚪ (gap 0.17) | ✅ 3.9e-06 / 6.9e-06 | ✅ 2.8e-06 / 3.1e-06 |
| ALBERT + erf GELU | both | – | – | – | – | – | – | ✅ 1.9e-06 / 3.8e-06 | ✅ 1.3e-06 / 1.7e-06 |
| ELECTRA | legacy | ✅ 5.5e-07 / 3.1e-07 | ✅ 1.8e-07 | ✅ 1.2e-07 | ✅ 2.5e-07 / 2.5e-07 | ✅ 1.3e-06 | ⚪ (gap 0.18) | ✅ 3.2e-07 / 4.9e-07 | ✅ 2.4e-07 / 2.2e-07 |
| ELECTRA | dynamo | ✅ 4.9e-07 / 3.7e-07 | ✅ 2.9e-07 | ✅ 1.2e-07 | ✅ 2.0e-07 / 1.3e-07 | ✅ 1.3e-06 | ⚪ (gap 0.18) | ✅ 3.2e-07 / 4.9e-07 | ✅ 2.4e-07 / 2.2e-07 |
| GPT-2 (tanh GELU, causal, last token) | legacy | ✅ 7.4e-07 / 2.9e-07 | ✅ 2.4e-07 | ✅ 4.5e-07 | ✅ 3.2e-07 / 1.2e-07 | ✅ 7.3e-07 | ⚪ (gap 0.51) | ✅ 3.1e-07 / 9.6e-08 | ✅ 3.5e-07 / 2.3e-07 |
| GPT-2 (tanh GELU, causal, last token) | dynamo | ✅ 7.4e-07 / 2.9e-07 | ✅ 2.4e-07 | ✅ 4.5e-07 | ✅ 3.2e-07 / 1.2e-07 | ✅ 7.3e-07 | ⚪ (gap 0.51) | ✅ 3.1e-07 / 9.6e-08 | ✅ 3.5e-07 / 2.3e-07 |
| GPT-2 + erf GELU | both | – | – | – | – | – | – | ✅ 2.5e-07 / 1.3e-07 | ✅ 3.8e-07 / 1.2e-07 |
| text CNN | legacy / dynamo | ✅ 7.4e-08 / 7.0e-08 | ✅ 8.4e-08 | ✅ 1.6e-07 | ✅ 7.6e-08 / 8.4e-08 | ✅ 9.8e-07 | ✅ vs Captum 1.4e-07 | LRP ε / ε+ / ε+♭ / αβ vs Zennit ≤ 3.4e-07 | – |
| LSTM text classifier (bidirectional) | legacy / dynamo | ✅ 1.6e-07 / 1.3e-07 | ✅ tokens 1.6e-07 | ✅ 7.2e-08 / tokens 1.4e-07 | – | – | – | LRP ε vs Arras numpy: 9.2e-08 / 6.3e-08 (no bias; sum R / score within 3e-7 of 1), 1.9e-07 / 1.1e-07 (bias) | – |

- **DeepLIFT on transformers** has no element-wise oracle (Captum's DeepLift rescales none of GELU / LayerNorm /
  softmax attention and falls back to gradients there); what is reported is the completeness gap
  |ΣR − (F(E) − F(E_pad))| / Σ|R|, not asserted: 0.17–0.51. xcompile's DeepLIFT applies the Rescale rule on
  element-wise nonlinearities and the linear rule elsewhere, so the gap is the attention / LayerNorm share.
  On the text CNN (ReLU and max-over-time only) it equals Captum's `LayerDeepLift` element by element.
- **RoBERTa**'s classification head calls `torch.tanh` as a function, which LXT's module patches do not reach:
  the oracle applies LXT's identity rule to that function as well (tests/methods/test_tokens.py `lxt_rules`); without it
  the oracle itself differs by 0.2 from AttnLRP's identity rule on every activation.
- **Sequence length**: L is fixed at compile time, from the model's input shape or `--set input_shape=L` when the
  export leaves it symbolic (recurrent cells are unrolled over it; attention models would run with any L but the
  explainer's shapes are checked at that length). Ids of another length are refused at run time in one line; the
  CLI's text input pads/truncates to L with the tokenizer's pad id.
- **Refused with one line** on token ids (`method '…' does not apply to token-id inputs`): guided_backprop,
  deconvnet, gradcam, deep_taylor; occlusion without `--set baseline_token`; a `baseline_token` outside the
  vocabulary; `--set input=` naming an integer input that no Gather reads. At run time: ids of another length, ids
  out of range, a missing input, inputs with different row counts.
- Padding tokens (mask 0) get ≤ 1e-6 of the row's max relevance under every method above (asserted on every
  row of every test); the pad token is the baseline of IG, occlusion and DeepLIFT.
- AttnLRP / CP-LRP on **tanh-GELU** (`x · ½(1 + tanh(√(2/π)(x + 0.044715 x³)))`): the gate path through the
  Pow / Mul cube is now recognised as the input gating itself (a general path search, `Structure.self_gate`), so the
  whole GELU is one AttnLRP identity rule as in LXT (before, GPT-2 / ALBERT with `gelu_new` were an expected
  failure against LXT).

## timm sweep: findings (2026-12-03)

- 150 models (96 of 98 timm families), both exporters: 143 / 145 export, every export compiles except halonet_h1
  (dynamo: the worker's memory limit), gradient matches on 129 / 143 (legacy) and 131 / 145 (dynamo). The rest:
  float32 conditioning of random-weight models (PyTorch's own float32 gradient as far from float64 as ours), and
  three pairs the tie-aware oracle cannot pair (NASNet / PNASNet apply ReLU to one tensor in several branches).
- efficientvit_m1 (legacy, "beyond PyTorch's float32 deviation") re-checked by hand: PyTorch float32 is 3.1e-4 from
  float64; the explainer is 2.8e-4 at ORT_DISABLE_ALL / ENABLE_BASIC and 6.9e-4 at ENABLE_ALL (onnxruntime's
  level-3 fusions change the float32 rounding): conditioning, not a wrong derivative.
- legacy_xception matches (9.7e-7) now that the oracle's PoolAt returns a fresh tensor; where the tie pairing fails
  the worker falls back to plain float64 autograd and says so in the cell.
- convmixer_768_32: LRP-epsilon non-finite on both exporters (gradient matches): not fixed yet.
"""


if __name__ == "__main__":
    raise SystemExit(main())
