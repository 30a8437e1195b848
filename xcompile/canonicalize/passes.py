"""Canonicalization: small, named graph passes that run before any method sees the graph.

ONE pass protocol: ``pass(model_or_index, decisions=None) -> int``: a pass edits the graph in place through the
shared `GraphIndex` (`rewrite.py`; a ModelProto is indexed on the spot), appends a `Decision` per node it
considered when it declines or applies a rule, and returns a short count of what it did. Passes preserve the
model's function (up to float rounding) and the names of graph inputs/outputs. One module per pass; the rewrite
passes (identity removal, BatchNorm folding, recurrent unrolling) are match -> check -> rewrite rules that record
why they declined a node (`xcompile inspect` shows it)."""
from __future__ import annotations

from typing import Optional

import onnx

from .batchnorm import FoldBatchNorm, fold_batchnorm  # noqa: F401 - re-exported
from .constants import constants_to_initializers, fold_constants, remove_unused_initializers  # noqa: F401
from .defaults import explicit_defaults  # noqa: F401 - re-exported
from .identity import DropIdentity, drop_identity  # noqa: F401 - re-exported
from .maxpool import expose_maxpool_indices  # noqa: F401 - re-exported
from .recurrent import UnrollRecurrent, unroll_recurrent  # noqa: F401 - re-exported
from .rewrite import Decision, GraphIndex, MatchResult, RewriteRule, apply_rules  # noqa: F401 - re-exported
from .scores import find_explained_scores  # noqa: F401 - re-exported
from .shapes import freeze_shape_arithmetic  # noqa: F401 - re-exported

PASSES = [explicit_defaults, constants_to_initializers, drop_identity, fold_constants, unroll_recurrent, fold_batchnorm,
          expose_maxpool_indices]


def canonicalize(model: onnx.ModelProto, passes=None, decisions: Optional[list] = None) -> dict:
    """Run the passes in order on one shared GraphIndex; returns {pass name: count}."""
    gi = GraphIndex(model)
    return {p.__name__: p(gi, decisions) for p in passes or PASSES}
