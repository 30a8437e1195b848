"""Read an ai.onnx.ml ``TreeEnsembleClassifier`` / ``TreeEnsembleRegressor`` node into per-path tables for TreeSHAP
(docs/tabular.md): every root-to-leaf path as its unique features, each with the interval of values that follows the
path, where a missing value (NaN) goes, and its zero fraction (the product of the cover ratios of the path's splits
on that feature; Lundberg et al. 2020, Algorithm 2), plus the leaf's value per class (raw score, before
POST_TRANSFORM) and the node covers counted from data rows where the file has none."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import XCompileError
from ...graph import attrs

TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor", "TreeEnsemble")
_SUPPORTED_MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT")


@dataclass
class Ensemble:
    n_classes: int
    base: np.ndarray          # [C] raw-score offsets (base_values, and 1 for class 0 of a [1 - s, s] binary)
    sign: np.ndarray          # [C] +1 / -1: class 0 of a single-column binary classifier is the negated score
    column: np.ndarray        # [C] which stored weight column each class reads
    leaf_offset: np.ndarray   # [C] added to every leaf's value (class 0 of a [1 - s, s] binary: 1 / trees - w)
    trees: list               # per tree: dict of node arrays (see _trees)
    n_features: int


def _arr(a: dict, name: str, dtype):
    v = a.get(name)
    if v is None:
        v = a.get(f"{name}_as_tensor")
        if v is not None:
            v = numpy_helper.to_array(v)
    return None if v is None else np.asarray(v, dtype)


def read_ensemble(node: onnx.NodeProto, n_features: int, where: str) -> Ensemble:
    if node.op_type == "TreeEnsemble":
        raise XCompileError(f"{where}: node {node.name!r} (ai.onnx.ml TreeEnsemble, ml opset 5): treeshap reads "
                            "TreeEnsembleClassifier / TreeEnsembleRegressor; convert with ml opset <= 3")
    a = attrs(node)
    aggregate = a.get("aggregate_function", "SUM")
    if aggregate not in ("SUM", "AVERAGE"):
        raise XCompileError(f"{where}: node {node.name!r} ({node.op_type}) aggregates with {aggregate}: TreeSHAP "
                            "explains additive ensembles (SUM, AVERAGE)")
    modes = [m.decode() if isinstance(m, bytes) else m for m in a["nodes_modes"]]
    bad = sorted({m for m in modes if m != "LEAF" and m not in _SUPPORTED_MODES})
    if bad:
        raise XCompileError(f"{where}: node {node.name!r} ({node.op_type}) has {', '.join(bad)} splits (categorical): "
                            "treeshap supports threshold splits (BRANCH_LEQ / LT / GTE / GT); use --method occlusion")
    classifier = node.op_type == "TreeEnsembleClassifier"
    pre = "class" if classifier else "target"
    leaf_tree = _arr(a, f"{pre}_treeids", np.int64)
    leaf_node = _arr(a, f"{pre}_nodeids", np.int64)
    leaf_col = _arr(a, f"{pre}_ids", np.int64)
    leaf_w = _arr(a, f"{pre}_weights", np.float64)
    if classifier:
        labels = a.get("classlabels_int64s") or a.get("classlabels_strings") or []
        n_labels = len(labels)
    else:
        n_labels = int(a.get("n_targets", 1))
    n_cols = int(leaf_col.max()) + 1 if leaf_col.size else 1
    base_values = _arr(a, "base_values", np.float64)
    base_values = np.zeros(n_cols) if base_values is None or not base_values.size else base_values
    if classifier and n_labels == 2 and n_cols == 1:
        # onnxruntime's binary case: raw scores [-s, s], or [1 - s, s] where every weight is >= 0
        # ([1 - s, s]: 1 - s as the sum of the trees' 1 / trees - w, so that class 0 is explained leaf by leaf as shap
        # does, which differs from -phi where zero covers were replaced)
        offset = 1.0 if (leaf_w >= 0).all() else 0.0
        b = float(base_values[0])
        ens_base, sign, column = np.array([-b, b]), np.array([-1.0, 1.0]), np.array([0, 0])
        leaf_offset = np.array([offset / len(np.unique(_arr(a, "nodes_treeids", np.int64))), 0.0])
    else:
        C = max(n_labels, n_cols)
        ens_base = np.zeros(C)
        ens_base[: base_values.size] = base_values[:C]
        sign, column = np.ones(C), np.arange(C)
        leaf_offset = np.zeros(C)
    scale = 1.0
    tree_ids = _arr(a, "nodes_treeids", np.int64)
    if aggregate == "AVERAGE":
        scale = 1.0 / len(np.unique(tree_ids))
    nodes = dict(tree=tree_ids, id=_arr(a, "nodes_nodeids", np.int64), feature=_arr(a, "nodes_featureids", np.int64),
                 value=_arr(a, "nodes_values", np.float32), true=_arr(a, "nodes_truenodeids", np.int64),
                 false=_arr(a, "nodes_falsenodeids", np.int64), mode=np.array(modes),
                 hitrate=_arr(a, "nodes_hitrates", np.float64),
                 missing_true=_arr(a, "nodes_missing_value_tracks_true", np.int64))
    if nodes["missing_true"] is None:
        nodes["missing_true"] = np.zeros(len(modes), np.int64)
    if nodes["feature"].size and int(nodes["feature"].max()) >= n_features:
        raise XCompileError(f"{where}: node {node.name!r} splits on feature {int(nodes['feature'].max())} but the input "
                            f"has {n_features} features")
    trees = _trees(nodes, leaf_tree, leaf_node, leaf_col, leaf_w * scale, n_cols)
    return Ensemble(len(ens_base), ens_base, sign, column, leaf_offset, trees, n_features)


def _trees(nodes: dict, leaf_tree, leaf_node, leaf_col, leaf_w, n_cols: int) -> list:
    out = []
    node_order, leaf_order = np.argsort(nodes["tree"], kind="stable"), np.argsort(leaf_tree, kind="stable")
    tree_ids = np.unique(nodes["tree"])
    node_split = np.split(node_order, np.searchsorted(nodes["tree"][node_order], tree_ids[1:]))
    leaf_split = np.split(leaf_order, np.searchsorted(leaf_tree[leaf_order], tree_ids[1:]))
    for sel, leaves in zip(node_split, leaf_split):  # one tree each (node ids are local to their tree)
        local = {int(v): k for k, v in enumerate(nodes["id"][sel])}
        n = len(sel)
        tree = {k: nodes[k][sel] for k in ("feature", "value", "mode", "missing_true")}
        tree["true"] = np.array([local.get(int(v), -1) for v in nodes["true"][sel]])
        tree["false"] = np.array([local.get(int(v), -1) for v in nodes["false"][sel]])
        tree["hitrate"] = None if nodes["hitrate"] is None else nodes["hitrate"][sel]
        values = np.zeros((n, n_cols))
        rows = np.array([local[int(v)] for v in leaf_node[leaves]], np.int64)
        np.add.at(values, (rows, leaf_col[leaves]), leaf_w[leaves])
        tree["leaf_value"] = values
        branch = tree["mode"] != "LEAF"
        children = set(tree["true"][branch]) | set(tree["false"][branch])
        roots = [k for k in range(n) if k not in children]
        tree["root"] = roots[0] if roots else 0
        out.append(tree)
    return out


def goes_true(tree: dict, k: int, x: np.ndarray) -> np.ndarray:
    """onnxruntime's routing at node k for float32 rows x[:, f] (NaN: the true branch where missing values track it)."""
    v = x[:, tree["feature"][k]].astype(np.float32)
    t = tree["value"][k]
    mode = tree["mode"][k]
    cmp = {"BRANCH_LEQ": v <= t, "BRANCH_LT": v < t, "BRANCH_GTE": v >= t, "BRANCH_GT": v > t}[mode]
    return np.where(np.isnan(v), bool(tree["missing_true"][k]), cmp)


def count_covers(ens: Ensemble, data: np.ndarray | None, where: str) -> None:
    """Node covers: rows of `data` reaching each node; else the file's hit rates where they are real (not skl2onnx's
    1.0 everywhere). Zero covers become 1e-6, as shap's TreeExplainer does with data."""
    for tree in ens.trees:
        if data is not None:
            cover = np.zeros(len(tree["mode"]))
            stack = [(tree["root"], np.arange(len(data)))]
            while stack:
                k, rows = stack.pop()
                cover[k] = len(rows)
                if tree["mode"][k] == "LEAF" or not len(rows):
                    continue
                go = goes_true(tree, k, data[rows])
                stack += [(tree["true"][k], rows[go]), (tree["false"][k], rows[~go])]
        else:
            h = tree["hitrate"]
            if h is None or np.all(h == 1.0) or not np.all(np.isfinite(h)) or np.any(h < 0):
                raise XCompileError(f"{where}: the trees store no node covers (hit rates); path-dependent TreeSHAP "
                                    "needs them: give the training rows (or a sample) with --set data=X.npy")
            cover = h.astype(np.float64)
        cover[cover == 0] = 1e-6
        tree["cover"] = cover
