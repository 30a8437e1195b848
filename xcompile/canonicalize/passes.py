"""Canonicalization: small, named graph passes that run before any method sees the graph.

Each pass takes a ModelProto, changes it in place, and returns a short count of what it did. They preserve the
model's function (up to float rounding) and the names of graph inputs/outputs. One module per pass; the rewrite
passes (identity removal, BatchNorm folding, shape freezing) are match -> check -> rewrite rules (`rewrite.py`)
that record why they declined a node (`xcompile inspect` shows it)."""
from __future__ import annotations

import inspect as _inspect
from typing import Optional

import onnx

from .batchnorm import FoldBatchNorm, fold_batchnorm  # noqa: F401 - re-exported
from .constants import constants_to_initializers, fold_constants, remove_unused_initializers  # noqa: F401
from .defaults import explicit_defaults  # noqa: F401 - re-exported
from .identity import DropIdentity, drop_identity  # noqa: F401 - re-exported
from .maxpool import expose_maxpool_indices  # noqa: F401 - re-exported
from .recurrent import UnrollRecurrent, unroll_recurrent  # noqa: F401 - re-exported
from .rewrite import Decision, MatchResult, RewriteRule, apply_rules  # noqa: F401 - re-exported
from .scores import find_explained_scores  # noqa: F401 - re-exported
from .shapes import freeze_shape_arithmetic  # noqa: F401 - re-exported

PASSES = [explicit_defaults, constants_to_initializers, drop_identity, fold_constants, unroll_recurrent, fold_batchnorm,
          expose_maxpool_indices]


def canonicalize(model: onnx.ModelProto, passes=None, decisions: Optional[list] = None) -> dict:
    """Run the passes in order; returns {pass name: count}. Rule passes append their Decisions to `decisions`."""
    report = {}
    for p in passes or PASSES:
        takes = decisions is not None and "decisions" in _inspect.signature(p).parameters
        report[p.__name__] = p(model, decisions) if takes else p(model)
    return report
