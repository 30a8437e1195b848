"""Last step before writing: rewrite the few standard operators that onnxruntime's CUDA EP has no kernel for
into equivalent ones that it has, so an explainer runs with CPU fallback disabled. Done after the backward pass
(a canonicalization-time rewrite would show LRP a product of two activations where the model has one op).

HardSwish(x)            = x * HardSigmoid(x; alpha=1/6, beta=1/2)                (ONNX's own definition)
Gelu(x)                 = 0.5 x (1 + erf(x / sqrt 2))                            (approximate = "none")
Gelu(x; "tanh")         = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper, numpy_helper

from ..graph import attr as _attr


def lower_for_cuda(nodes: list, initializers: list) -> tuple[list, int]:
    """Returns (nodes with HardSwish / default-domain Gelu rewritten, number rewritten); appends the constants it
    needs to ``initializers``. Output tensor names are kept, so everything downstream is unchanged."""
    consts = {}

    def const(value: float) -> str:
        name = f"xc/lower/const:{value:.17g}"
        if name not in consts:
            consts[name] = numpy_helper.from_array(np.array(value, np.float32), name)
        return name

    out, n = [], 0
    for node in nodes:
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("HardSwish", "Gelu"):
            out.append(node)
            continue
        x, y, p = node.input[0], node.output[0], f"{node.name or node.output[0]}/lowered"
        if node.op_type == "HardSwish":
            out += [helper.make_node("HardSigmoid", [x], [f"{p}/hsig"], name=f"{p}/hsig", alpha=1.0 / 6, beta=0.5),
                    helper.make_node("Mul", [x, f"{p}/hsig"], [y], name=p)]
        elif _attr(node, "approximate", "none") == "tanh":
            out += [helper.make_node("Mul", [x, x], [f"{p}/x2"], name=f"{p}/x2"),
                    helper.make_node("Mul", [f"{p}/x2", x], [f"{p}/x3"], name=f"{p}/x3"),
                    helper.make_node("Mul", [f"{p}/x3", const(0.044715)], [f"{p}/cx3"], name=f"{p}/cx3"),
                    helper.make_node("Add", [x, f"{p}/cx3"], [f"{p}/inner"], name=f"{p}/inner"),
                    helper.make_node("Mul", [f"{p}/inner", const(math.sqrt(2 / math.pi))], [f"{p}/arg"], name=f"{p}/arg"),
                    helper.make_node("Tanh", [f"{p}/arg"], [f"{p}/t"], name=f"{p}/t"),
                    helper.make_node("Add", [f"{p}/t", const(1.0)], [f"{p}/t1"], name=f"{p}/t1"),
                    helper.make_node("Mul", [x, f"{p}/t1"], [f"{p}/xt"], name=f"{p}/xt"),
                    helper.make_node("Mul", [f"{p}/xt", const(0.5)], [y], name=p)]
        else:
            out += [helper.make_node("Mul", [x, const(1 / math.sqrt(2))], [f"{p}/s"], name=f"{p}/s"),
                    helper.make_node("Erf", [f"{p}/s"], [f"{p}/e"], name=f"{p}/e"),
                    helper.make_node("Add", [f"{p}/e", const(1.0)], [f"{p}/e1"], name=f"{p}/e1"),
                    helper.make_node("Mul", [x, f"{p}/e1"], [f"{p}/xe"], name=f"{p}/xe"),
                    helper.make_node("Mul", [f"{p}/xe", const(0.5)], [y], name=p)]
        n += 1
    initializers.extend(consts.values())
    return out, n
