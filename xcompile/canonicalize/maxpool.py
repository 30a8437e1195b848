"""MaxPool gets its Indices output so the backward pass can reuse the forward switches."""
from __future__ import annotations

import onnx


def expose_maxpool_indices(model: onnx.ModelProto) -> int:
    """MaxPool gets its Indices output so the backward pass can reuse the forward switches."""
    n = 0
    for node in model.graph.node:
        if node.op_type == "MaxPool" and (len(node.output) < 2 or not node.output[1]):
            if len(node.output) < 2:
                node.output.append(f"{node.output[0]}/indices")
            else:
                node.output[1] = f"{node.output[0]}/indices"
            n += 1
    return n
