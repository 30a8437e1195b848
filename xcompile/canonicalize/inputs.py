"""Graph inputs that no node reads: dropped.

Converters leave such inputs behind: Keras 3's ``model.export(format="onnx")`` (TensorFlow backend, tf2onnx) keeps
the Normalization layer's mean and variance of EfficientNet as graph inputs [1, 1, 1, 3] after its constant
folding has replaced every use of them. onnxruntime still requires a feed for each (the model's own callers must
pass dummy arrays without a batch dimension), and a second float input makes the explained input ambiguous. An
input that nothing reads cannot change a score or a relevance, so the explainer does not declare it, as unused
initializers declared as inputs are already dropped (``remove_unused_initializers``); each drop is a Decision that
``xcompile inspect`` prints."""
from __future__ import annotations

import onnx

from .rewrite import Decision, subgraph_reads


def drop_unread_inputs(model: onnx.ModelProto, decisions: list | None = None) -> int:
    g = model.graph
    inits = {t.name for t in g.initializer}
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output} | subgraph_reads(g)
    unread = [i.name for i in g.input if i.name not in read and i.name not in inits]
    if len(unread) == len([i for i in g.input if i.name not in inits]):
        return 0  # nothing reads any input: leave it to the input checks to say so
    for name in unread:
        if decisions is not None:
            decisions.append(Decision("drop_unread_input", name, True, "no node reads it"))
    keep = [i for i in g.input if i.name not in unread]
    del g.input[:]
    g.input.extend(keep)
    return len(unread)
