"""Which tensor is explained: the score output, or the logits before a trailing Softmax."""
from __future__ import annotations

import onnx

from .rewrite import GraphIndex


def find_explained_scores(model: onnx.ModelProto, score_output: str, keep_softmax: bool = False) -> str:
    """The tensor whose entries are explained: the score output, or the logits before a trailing
    Softmax/LogSoftmax (possibly behind Identity/Flatten/Reshape/Squeeze) unless keep_softmax. Behind a shape op the
    logits are taken only where they are [N, classes] already (rank 2), else the score output stays explained."""
    if keep_softmax:
        return score_output
    gi = GraphIndex(model)
    t, passed = gi.upstream(score_output, ("Identity", "Flatten", "Reshape", "Squeeze"))
    reshaped = any(op != "Identity" for op in passed)
    node = gi.producer.get(t)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        if not reshaped or gi.rank(node.input[0]) == 2:
            return node.input[0]
    return score_output
