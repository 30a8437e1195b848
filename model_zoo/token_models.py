"""Token classifiers for the tests: a transformers model (or any module over token tensors) seen as ids -> logits,
and its ONNX export. Imports torch: import it after ``pytest.importorskip("torch")``."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import torch


class TokenLogits(torch.nn.Module):
    """Positional inputs in ``names`` order, passed to ``m`` as keywords -> logits (a transformers model's output
    ``.logits``; a plain tensor as it is)."""

    def __init__(self, m, names=("input_ids", "attention_mask")):
        super().__init__()
        self.m, self.names = m, list(names)

    def forward(self, *args):
        out = self.m(**dict(zip(self.names, args)))
        return out if isinstance(out, torch.Tensor) else out.logits


def export_token_classifier(module, args, path=None, *, names=("input_ids", "attention_mask"),
                            dynamic_logits: bool = True, grad: bool = False, exporter: str = "legacy"):
    """Export ``module(*args)`` (eval mode) with ONNX inputs ``names`` and output ``logits``, the batch axis
    symbolic ("N"). ``exporter``: "legacy" (opset 17; the logits' batch axis symbolic too unless
    ``dynamic_logits=False``: the output then keeps the example's batch size, which the explainer must still run
    past) or "dynamo" (batch 1..64; ``path`` required). ``grad=True`` exports with autograd on
    (nn.TransformerEncoder's fused fast path does not export under no_grad). -> ``path``, or the model's bytes
    when ``path`` is None."""
    names, args = list(names), tuple(args)
    dest = io.BytesIO() if path is None else str(path)
    module.eval()
    with torch.set_grad_enabled(grad), warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            axes = {k: {0: "N"} for k in [*names, *(["logits"] if dynamic_logits else [])]}
            torch.onnx.export(module, args, dest, dynamo=False, opset_version=17, input_names=names,
                              output_names=["logits"], dynamic_axes=axes)
        elif exporter == "dynamo" and path is not None:
            n = torch.export.Dim("N", min=1, max=64)
            torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=["logits"],
                              dynamic_shapes=(tuple({0: n} for _ in names),), verbose=False).save(dest)
        else:
            raise ValueError(f"exporter {exporter!r} (with path {path!r}): use 'legacy', or 'dynamo' with a path")
    module.eval()  # the exporter restores the module's training mode onto every submodule
    return dest.getvalue() if path is None else Path(path)
