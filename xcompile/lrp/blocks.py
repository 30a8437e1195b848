"""Block types of the nodes on the relevance path, read from graph structure alone, so that a rule file can choose a
rule per block (`block = "attention"`; rules/README.md) and `--rules auto` can apply the rule the literature gives
for each kind of block: Zennit's composites in CNNs, AttnLRP (Achtibat et al. 2024) for normalisations, softmax
attention and products of two activations, Arras et al. (2017) for gated cells (the gate is a constant weight).

Labels (one per node; `classify` returns {first output: Block}):

* ``cnn``: every node of a model that has none of the transformer-type blocks below (a pure CNN: the rule set's
  CNN entries apply, everything else keeps the built-in treatment).
* ``attention``: Softmax (also written as Exp / ReduceSum), a matrix product of two activations (q k^T, attention
  x value, XCiT's cross-covariance), an elementwise product or quotient with a softmax output.
* ``norm``: LayerNormalization / RMS / group / instance normalisation, and the parts of one written out (legacy
  exports, hand-written RMSNorm, L2 normalisation): the division or product by a statistic of the activations
  (its std, rms or norm: held constant, the signal takes all relevance) and the centering x - mean(x).
* ``gate``: a product whose one operand is a squashed gate (Sigmoid, HardSigmoid: SE blocks, recurrent cells):
  the gate is a constant weight and the signal takes all relevance (Arras et al. 2017).
* ``gating``: a product of two activations neither of which is a gate (SwiGLU, GEGLU, gMLP's spatial gating).
* ``activation``: a product x * f(x) (SiLU, GELU, HardSwish, Mish written out): relevance passes to x.
* ``token-mixer``: PoolFormer's pool(x) - x: relevance goes to the pooled operand (the mixer as the pooling it is
  a correction of; proportional shares would divide by the cancelling difference).
* ``residual``: a sum of several activations. ``bias``: an activation plus or minus a constant (bias, position
  embedding).
* ``cnn-stage``: in a model that is not a pure CNN, a convolution whose input is non-negative (value ranges:
  ReLU-fed).
* ``linear``: any other linear layer (Conv, Gemm, MatMul with a constant weight). ``other``: everything else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..kinds import LINEAR_OPS, SUM_OPS, linear_view
from .structure import Structure

LABELS = ("cnn", "attention", "norm", "gate", "gating", "activation", "token-mixer", "residual", "bias",
          "cnn-stage", "linear", "other")
# the labels that make a model more than a CNN: CNN rule sets were not designed for them (see `foreign`)
TRANSFORMER_LABELS = ("attention", "norm", "gating", "token-mixer")
NORM_OPS = frozenset({"LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
                      "SkipLayerNormalization", "GroupNormalization", "InstanceNormalization",
                      "MeanVarianceNormalization", "LpNormalization"})


@dataclass
class Block:
    label: str
    why: str = ""
    signal: Optional[int] = None      # products/sums: the input slot that takes all relevance (gate, norm, mixer)

    def __str__(self):
        return f"{self.label}: {self.why}" if self.why else self.label


def label(G: Structure, n) -> Block:
    op, ins = n.op_type, n.input
    live = G.live_in(n)
    if op == "Softmax":
        return Block("attention", "softmax")
    if op in NORM_OPS:
        return Block("norm", op)
    if op in LINEAR_OPS and linear_view(G.g, n, G.live) is not None:
        if op == "Conv" and G.nonneg(ins[linear_view(G.g, n, G.live).slot]):
            return Block("cnn-stage", "convolution of a non-negative input")
        return Block("linear", "constant weight")
    if op == "MatMul" and len(live) == 2:
        soft = [k for k in live if G.is_softmax(ins[k])]
        return Block("attention", "softmax x value" if soft else "product of two activations (q k^T)")
    if op in ("Mul", "Div") and len(live) == 2 and ins[0] != ins[1]:
        a, c = live
        if op == "Div" and G._is_softmax_div(n):
            return Block("attention", "softmax written as exp / sum(exp)")
        if op == "Div" and G.statistic(ins[1]):
            return Block("norm", "division by a statistic (std, rms, norm) held constant", signal=0)
        if op == "Mul":
            for sig, other in ((a, c), (c, a)):
                if G.self_gate(ins[other], ins[sig]):
                    return Block("activation", "x * f(x)", signal=sig)
            for sig, other in ((a, c), (c, a)):
                if G.statistic(ins[other]) and not G.statistic(ins[sig]):
                    return Block("norm", "product with a statistic (1/std, 1/rms) held constant", signal=sig)
        soft = [k for k in live if G.is_softmax(ins[k])]
        if soft:
            return Block("attention", "product with a softmax output")
        gates = [k for k in live if G.is_gate(ins[k], softmax=False)]
        if len(gates) == 1:
            return Block("gate", "sigmoid gate constant (Arras et al. 2017)",
                         signal=next(k for k in live if k != gates[0]))
        return Block("gating", "product of two activations")
    if op in SUM_OPS and len(live) >= 2:
        if op == "Sub" and len(live) == 2:
            if G.is_mean_of(ins[1], ins[0]):
                return Block("norm", "centering x - mean(x)")
            for sig, other in ((0, 1), (1, 0)):
                if G.is_pool_of(ins[sig], ins[other]):
                    return Block("token-mixer", "pool(x) - x", signal=sig)
        return Block("residual", "sum of activations")
    if op in ("Add", "Sub") and len(live) == 1:
        return Block("bias", "activation and a constant")
    return Block("other")


def classify(g, live, nodes, structure=None) -> tuple[dict, bool]:
    """{first output: Block} for the nodes on the relevance path, and whether the model is a pure CNN (then every
    node is labelled ``cnn``)."""
    G = structure or Structure(g, live)
    blocks = {n.output[0]: label(G, n) for n in nodes}
    foreign = [b for b in blocks.values() if b.label in TRANSFORMER_LABELS]
    if foreign:
        return blocks, False
    return {k: Block("cnn", f"pure CNN ({b.label})" if b.label != "other" else "pure CNN") for k, b in blocks.items()}, True


def foreign(blocks: dict, designed_for: str) -> Optional[tuple[str, str]]:
    """(label, node) of the first block a rule set designed for `designed_for` ("cnn", "transformer", "any") was
    not designed for, else None."""
    if designed_for != "cnn":
        return None
    return next(((b.label, k) for k, b in blocks.items() if b.label in TRANSFORMER_LABELS), None)
