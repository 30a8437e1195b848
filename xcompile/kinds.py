"""Kinds of operators, defined once (after RelevancePropagation.jl's `layer_types.jl` and Zennit's `types.py`).

Op groups used by rule matching (LRP, Deep Taylor), pattern fitting and canonicalization, and the one view of
"a linear layer with a constant weight": ``linear_view(g, node, live)``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .graph import attr

# layers whose weight LRP rules / patterns modify (when the weight is a constant: see linear_view)
LINEAR_OPS = ("Conv", "Gemm", "MatMul")
# linear layers a BatchNormalization after them folds into
BN_FOLDABLE_OPS = ("Conv", "ConvTranspose", "Gemm")
# ops whose outputs never carry relevance (shape arithmetic, comparisons, indices)
NON_DIFFERENTIABLE = frozenset({
    "Shape", "Size", "ArgMax", "ArgMin", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
    "Not", "And", "Or", "Xor", "NonZero", "ConstantOfShape", "Range", "EyeLike", "RandomNormal",
    "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Constant", "IsNaN", "IsInf", "Sign",
    "Floor", "Ceil", "Round", "OneHot", "Mod", "BitShift", "Hardmax",
    "Binarizer", "OneHotEncoder", "LabelEncoder",  # ai.onnx.ml: piecewise constant / categorical
})
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                        "Bernoulli"})
SHAPE_SOURCES = frozenset({"Shape", "Size"})
# removed by canonicalization (inference: Dropout is the identity)
IDENTITY_OPS = ("Identity", "Dropout")

# quantization ops (in the dequantized view of a quantized model, load/quantized.py): LRP passes relevance through
# them unchanged; their gradient is the clipped straight-through estimator (backward/ops/quantized.py)
QUANTIZATION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
NORMALIZATION_OPS = frozenset({"BatchNormalization", "LayerNormalization", "InstanceNormalization",
                               "GroupNormalization", "MeanVarianceNormalization", "LpNormalization", "LRN"})
# LRP: relevance passes through unchanged (Zennit `Pass`): activations, elementwise maps, unfolded normalisation
PASS_OPS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Gelu", "Erf", "Mish", "ThresholdedRelu", "Shrink",
    "Identity", "Dropout", "Cast", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Pow", "Sin", "Cos",
    "Scaler", "Imputer", "Normalizer",  # ai.onnx.ml per-feature preprocessing: relevance passes feature by feature
}) | NORMALIZATION_OPS | QUANTIZATION_OPS
# LRP: relevance in proportion to the inputs' contributions (Zennit `Norm`)
# (ConvTranspose: a linear layer no weight rule handles yet; proportional is its LRP-0 / z-rule)
PROPORTIONAL_OPS = frozenset({"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "CumSum",
                              "Col2Im", "ConvTranspose", "ReduceL1"})


def is_proportional(node) -> bool:
    """LRP: does the node sum its inputs' contributions (relevance in proportion to them)? PROPORTIONAL_OPS, and the
    scatters that add their updates into the data (with reduction "none" they route by position)."""
    if node.op_type in PROPORTIONAL_OPS:
        return True
    return node.op_type in ("ScatterND", "ScatterElements") and attr(node, "reduction", "none") == "add"


# sums of several inputs: proportional when more than one carries relevance, else pass
SUM_OPS = ("Add", "Sum", "Sub", "Mean")
PRODUCT_OPS = ("Mul", "Div")
# a gate: an operand of a product that is a squashed activation
GATE_OPS = frozenset({"Sigmoid", "HardSigmoid", "Softmax"})
# elementwise maps that make a "gate" f(x) of x (with constants as the other operands)
SELF_GATE_OPS = frozenset({"Sigmoid", "HardSigmoid", "Tanh", "Erf", "Softplus", "Relu", "Clip", "Exp", "Neg", "Abs",
                           "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Identity", "Cast"})
SCALE_OPS = frozenset({"Mul", "Div", "Neg", "Identity", "Cast"})
# ops that only move or relabel values
ROUTE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Expand", "Identity", "Cast"})
# activations that gate a linear layer's output (patterns: "active" = this output > 0)
RELU_LIKE_OPS = ("Relu", "Clip", "LeakyRelu", "PRelu")
# elementwise affine maps with a constant operand
AFFINE_OPS = ("Add", "Sub", "Mul", "Div")
# what may lie between a ReLU and the linear layer it feeds, for Deep Taylor's "fed by a ReLU" test
RELU_TRANSPARENT_OPS = ROUTE_OPS | {"MaxPool", "AveragePool", "GlobalAveragePool", "Pad", "Concat", "ReduceMean"}


@dataclass
class LinearView:
    """A node seen as z = W a + b with a constant weight and one relevance-carrying input."""
    slot: int                    # the input slot of the activation a
    weight: np.ndarray           # the effective weight (Gemm's alpha folded in)
    bias: Optional[np.ndarray]   # the effective bias (Gemm's beta folded in), None when there is none
    weight_slot: int             # the input slot of the weight initializer
    alpha: float = 1.0           # Gemm's alpha (1 elsewhere)


def linear_view(g, node, live, need_const_bias: bool = True) -> Optional[LinearView]:
    """The node as a linear layer with constant parameters and ONE live input (`live`: the set of tensors that carry
    relevance), else None. Conv, Gemm (alpha/beta folded into W and C), MatMul with a constant 2-D weight on either
    side. ``need_const_bias=False`` accepts a computed Conv/Gemm bias (then `bias` is None) (the weight is what matters, e.g. for patterns)."""
    op = node.op_type
    ins = node.input

    def const(k):
        return g.const(ins[k]) if k < len(ins) else None

    def needs(k):
        return k < len(ins) and ins[k] in live

    if op == "Conv":
        W = const(1)
        if W is None or not needs(0) or needs(1):
            return None
        has_bias = len(ins) > 2 and bool(ins[2])
        bias = const(2) if has_bias else None
        if has_bias and bias is None and need_const_bias:
            return None
        return LinearView(0, W, bias, 1)
    if op == "Gemm":
        W = const(1)
        if W is None or not needs(0) or needs(1):
            return None
        C = None
        if len(ins) > 2 and ins[2]:
            C = const(2)
            if C is None and need_const_bias:
                return None
            C = None if C is None else C * attr(node, "beta", 1.0)
        alpha = attr(node, "alpha", 1.0)
        return LinearView(0, W if alpha == 1.0 else W * alpha, C, 1, float(alpha))
    if op == "MatMul":
        for slot in (0, 1):
            W = const(1 - slot)
            if W is not None and needs(slot) and not needs(1 - slot) and W.ndim == 2 and len(g.shape(ins[slot])) >= 2:
                return LinearView(slot, W, None, 1 - slot)
    return None
