"""Digest of every explainer a refactor must not change: compiles a fixed set of (model, method, options) cases with
the xcompile on sys.path and prints one line per case, the SHA-1 of the serialized explainer graph (nodes,
initializers, I/O; metadata excluded). Run it on two commits and diff the outputs: identical lines mean identical
explainers, so no number can have changed (docs/design-step-2.md used it for issue 32):

    git worktree add /tmp/before <commit>            # the code before
    python tools/explainer_digest.py --models /tmp/xd_models --export      # once: export the models
    PYTHONPATH=/tmp/before python tools/explainer_digest.py --models /tmp/xd_models > before.txt
    PYTHONPATH=$PWD python tools/explainer_digest.py --models /tmp/xd_models > after.txt
    diff before.txt after.txt

Models: the shipped digits and character CNNs, and random-weight models built from configs (seeded): torchvision
resnet18, timm DeiT / Swin / MobileViT-v2 / PoolFormer / gMLP (as tests/lrp/test_lrp_auto.py builds them), an
LSTM + GRU classifier and a CNN with InstanceNorm, a sigmoid gate and MaxPool; legacy exporter, opset 17."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "xcompile" / "data"
RULE_SETS = ["auto", "attnlrp", "cp-lrp", "epsilon", "zero", "epsilon-plus", "epsilon-plus-flat",
             "epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat"]
OTHER = [("lrp", {"rules": "auto", "gate": "split"}),
         ("lrp", {"rules": "epsilon", "gate": "signal", "maxpool": "proportional"}),
         ("lrp", {"rules": "epsilon-gamma-box", "low": "-1", "high": "1"}),
         ("lrp", {"rules": "auto", "low": "-1", "high": "1", "mean": "0.5", "std": "2"}),
         ("lrp", {"rules": "vgg16-overview", "low": "0", "high": "1"}),
         ("deep_taylor", {"low": "-1", "high": "1"}), ("deep_taylor", {"first": "wsquare"}),
         ("lrp", {"rules": "epsilon", "precision": "float16"}), ("deeplift", {})]
BUILT = ["resnet18", "deit", "swin", "mobilevit", "poolformer", "gmlp", "rnn", "se"]


def export(out: Path) -> None:
    import torch
    import torchvision
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "lrp")]
    from test_lrp_auto import _timm
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    def save(m, x, name):
        torch.onnx.export(m.eval(), x, str(out / f"{name}.onnx"), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["scores"],
                          dynamic_axes={"input": {0: "N"}, "scores": {0: "N"}})

    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.gru, self.fc = torch.nn.LSTM(4, 6, batch_first=True), torch.nn.GRU(6, 5, batch_first=True), \
                torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(self.gru(self.lstm(x)[0])[0][:, -1])

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 8)
            self.norm, self.head = torch.nn.InstanceNorm2d(8, affine=True), torch.nn.Linear(8, 4)

        def forward(self, x):
            y = self.norm(torch.relu(self.conv(x)))
            gate = torch.sigmoid(self.fc(y.mean((2, 3))))[:, :, None, None]
            return self.head(torch.nn.functional.max_pool2d(y * gate, 2).mean((2, 3)))

    torch.manual_seed(0)
    save(torchvision.models.resnet18(num_classes=5), torch.zeros(1, 3, 32, 32), "resnet18")
    for name in ["deit", "swin", "mobilevit", "poolformer", "gmlp"]:
        save(_timm(name), torch.zeros(1, 3, 64 if name == "mobilevit" else 32, 64 if name == "mobilevit" else 32), name)
    save(Recurrent(), torch.zeros(1, 7, 4), "rnn")
    save(Gated(), torch.zeros(1, 3, 12, 12), "se")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="folder of the exported models")
    ap.add_argument("--export", action="store_true", help="export the models into --models first")
    ap.add_argument("--only", default=None, help="one model name")
    a = ap.parse_args()
    if a.export:
        export(a.models)
    warnings.filterwarnings("ignore")
    from xcompile.compiler import compile as xcompile
    models = {"digits": DATA / "digits_cnn.onnx", "langid": DATA / "langid_cnn.onnx"}
    models.update({k: a.models / f"{k}.onnx" for k in BUILT})
    for name, path in models.items():
        if a.only and name != a.only:
            continue
        for method, kw in [("lrp", {"rules": r}) for r in RULE_SETS] + OTHER:
            try:
                e = xcompile(str(path), method, **kw)
                del e.metadata_props[:]
                digest = hashlib.sha1(e.SerializeToString(deterministic=True)).hexdigest()[:12]
            except Exception as ex:  # noqa: BLE001 - a refusal is a result too (it must not change either)
                digest = "ERR " + str(ex).splitlines()[0][:150]
            print(name, method, json.dumps(kw, sort_keys=True), digest, flush=True)


if __name__ == "__main__":
    main()
