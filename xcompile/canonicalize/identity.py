"""Identity and (inference) Dropout are removed; consumers read the input directly (onnx-ir's identity
elimination, as a rewrite rule: one pass over the nodes, each removal touching only its consumers)."""
from __future__ import annotations

from typing import Optional

from ..kinds import IDENTITY_OPS
from .rewrite import GraphIndex, MatchResult, RewriteRule, apply_rules


class DropIdentity(RewriteRule):
    name = "drop_identity"
    ops = IDENTITY_OPS

    def check(self, node, gi: GraphIndex) -> MatchResult:
        if not node.input or not node.input[0]:
            return MatchResult.fail("it has no input")
        if node.output[0] in gi.protected:
            return MatchResult.fail("its output is a graph output (or read by a subgraph)")
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            return MatchResult.fail("its mask output is used")
        return MatchResult()

    def rewrite(self, node, gi: GraphIndex, match: MatchResult) -> None:
        gi.replace_uses(node.output[0], node.input[0])
        gi.remove(node)


def drop_identity(model, decisions: Optional[list] = None) -> int:
    """Identity and (inference) Dropout are removed; consumers read the input directly."""
    return apply_rules(model, [DropIdentity()], decisions)
