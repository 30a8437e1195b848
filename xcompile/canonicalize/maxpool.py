"""MaxPool gets its Indices output so the backward pass can reuse the forward switches."""
from __future__ import annotations

from .rewrite import GraphIndex


def expose_maxpool_indices(model, decisions=None) -> int:
    """MaxPool gets its Indices output so the backward pass can reuse the forward switches."""
    gi = GraphIndex.of(model)
    model = gi.model
    n = 0
    # a MaxPool on a quantized tensor (after a DequantizeLinear, or on uint8 in QOperator graphs) keeps its one
    # output, so that onnxruntime fuses it as in the quantized model; the dequantized view's copy gets the indices
    # (load/quantized.py)
    quantized = {o for nd in model.graph.node if nd.op_type in ("DequantizeLinear", "QuantizeLinear")
                 or nd.domain == "com.microsoft" or nd.op_type.startswith("QLinear") for o in nd.output}
    for node in model.graph.node:
        if node.op_type == "MaxPool" and node.input and node.input[0] in quantized:
            continue
        if node.op_type == "MaxPool" and (len(node.output) < 2 or not node.output[1]):
            if len(node.output) < 2:
                node.output.append(f"{node.output[0]}/indices")
            else:
                node.output[1] = f"{node.output[0]}/indices"
            gi.producer[node.output[1]] = node
            n += 1
    return n
