"""Method ``treeshap``: exact path-dependent TreeSHAP (Lundberg et al. 2020, "From local explanations to global
understanding with explainable AI for trees", Algorithm 2) of an ai.onnx.ml tree ensemble, compiled into ai.onnx
operators (docs/tabular.md).

The explainer keeps the file's forward verbatim (its TreeEnsemble and post-processing, a ZipMap bypassed) and adds
the TreeSHAP part: ``relevance`` [N, F] for the explained class's raw score (before POST_TRANSFORM),
``explained_class``, ``conservation`` = (sum of relevance + expected value) / raw score; the expected value per class
in the metadata key ``xcompile.expected_value``. Node covers come from ``--set data=X.npy`` (rows routed through the
trees) or, where the file stores real ones, its hit rates."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...backward.builder import Builder
from ...canonicalize.outputs import choose_score_output
from ...errors import XCompileError
from ...graph import RELEVANCE, TARGET
from ...load.loader import default_opset, graph_inputs, prepare, read_model
from ...metadata import ExplainerMeta
from ...options import Param, check_memory
from ...version import __version__
from ...write.writer import CONSERVATION, EXPLAINED_CLASS, check
from ..base import Method, register
from .emit import conservation, emit_treeshap, expected_value
from .ensemble import TREE_OPS, count_covers, read_ensemble
from .paths import path_table

__all__ = ["TreeShap", "compile_treeshap", "tree_nodes", "refuse_gradients"]


def tree_nodes(model: onnx.ModelProto) -> list:
    return [n for n in model.graph.node if n.op_type in TREE_OPS and n.domain == "ai.onnx.ml"]


def refuse_gradients(model, method: str, where: str) -> None:
    """A tree ensemble is piecewise constant: gradient-based and propagation methods have nothing to differentiate.
    An ai.onnx.ml SVM is explained by the neuralized method (its kernel expansion is rebuilt in ai.onnx)."""
    svm = [n for n in model.graph.node if n.op_type in ("SVMClassifier", "SVMRegressor") and n.domain == "ai.onnx.ml"]
    if svm and method != "occlusion":
        raise XCompileError(f"{where}: node {svm[0].name!r} ({svm[0].op_type}): an SVM is explained by --method "
                            "neuralized (docs/neuralized.md) or --method occlusion")
    trees = tree_nodes(model)
    if trees and method not in ("treeshap", "occlusion"):
        raise XCompileError(f"{where}: node {trees[0].name!r} ({trees[0].op_type}) is a tree ensemble: piecewise "
                            f"constant, so --method {method} has no gradient to follow; use --method treeshap "
                            "(exact SHAP values) or --method occlusion")


def _load_rows(data, n_features: int, where: str, option: str = "data") -> np.ndarray | None:
    if data is None:
        return None
    if not isinstance(data, np.ndarray):
        try:
            data = np.load(str(data), allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise XCompileError(f"{where}: option {option}={data!s}: cannot read a .npy array ({type(e).__name__})") from None
    if data.ndim != 2 or data.shape[1] != n_features or not len(data):
        raise XCompileError(f"{where}: option {option}: rows of shape [M, {n_features}] expected, got {list(data.shape)}")
    return np.asarray(data, np.float32)


# per-feature preprocessing between the input and the trees: SHAP values of a feature do not change when each
# feature is mapped by its own function, so the trees' features are explained as the input's
_PER_FEATURE = ("Identity", "Cast", "Scaler", "Imputer")


def _tree_input(m: onnx.ModelProto, node: onnx.NodeProto, where: str) -> onnx.ValueInfoProto:
    producer = {o: n for n in m.graph.node for o in n.output}
    t = node.input[0]
    while t in producer and producer[t].op_type in _PER_FEATURE:
        t = producer[t].input[0]
    inp = next((i for i in graph_inputs(m) if i.name == t), None)
    if inp is None:
        raise XCompileError(f"{where}: node {node.name!r} ({node.op_type}) reads {node.input[0]!r}, computed from the "
                            "input by operators that mix features: treeshap explains trees that read the input (through "
                            f"{', '.join(_PER_FEATURE)} only)")
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise XCompileError(f"{where}: input {inp.name!r} is not float32; convert the model with a float32 input")
    dims = inp.type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise XCompileError(f"{where}: input {inp.name!r} must have shape [N, features] with a fixed feature count")
    return inp


def _preprocessed(m: onnx.ModelProto, inp: str, tree_x: str, rows: np.ndarray | None) -> np.ndarray | None:
    """`rows` as the trees see them (through the per-feature preprocessing), by the model's own forward."""
    if rows is None or tree_x == inp:
        return rows
    from ...sessions import session
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    del probe.graph.output[:]
    probe.graph.output.append(onnx.ValueInfoProto(name=tree_x))
    return np.asarray(session(probe).run([tree_x], {inp: rows})[0], np.float32)


def compile_treeshap(model, *, data=None, output=None, background=None, where: str = "model") -> onnx.ModelProto:
    m = prepare(read_model(model), where, copy=isinstance(model, onnx.ModelProto))
    trees = tree_nodes(m)
    if len(trees) != 1:
        raise XCompileError(f"{where}: treeshap explains one TreeEnsembleClassifier / TreeEnsembleRegressor node; "
                            f"found {len(trees)}" + ("" if trees else ": use another --method"))
    node = trees[0]
    inp = _tree_input(m, node, where)
    F = inp.type.tensor_type.shape.dim[1].dim_value
    score = choose_score_output(m, output, where)
    ens = read_ensemble(node, F, where)
    tree_x = node.input[0]
    background = _preprocessed(m, inp.name, tree_x, _load_rows(background, F, where, "background"))
    if background is None:
        count_covers(ens, _preprocessed(m, inp.name, tree_x, _load_rows(data, F, where)), where)
    else:  # interventional: the background rows replace the covers
        if data is not None:
            raise XCompileError(f"{where}: options data= (path-dependent covers) and background= (interventional) "
                                "exclude each other")
        for tree in ens.trees:
            tree["cover"] = np.ones(len(tree["mode"]))
    tab = path_table(ens)
    if background is not None:
        check_memory(8.0 * 4 * len(background) * tab.feature.size * max(1, (tab.depth + 1) // 2),
                     f"{where}: interventional treeshap with {len(background)} background rows")
    taken = {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input}
    b = Builder(max(17, default_opset(m)), prefix="xc/treeshap", reserved=taken | {TARGET, RELEVANCE})
    out = emit_treeshap(b, tree_x, tab, background)
    outs = [(out["relevance"], RELEVANCE, TensorProto.FLOAT, ["N", F]),
            (out["explained_class"], EXPLAINED_CLASS, TensorProto.INT64, ["N"]),
            (conservation(b, out), CONSERVATION, TensorProto.FLOAT, ["N"])]
    nodes = list(m.graph.node) + b.nodes
    score_vi = next(o for o in m.graph.output if o.name == score)
    outputs = [score_vi]
    for src, name, et, shape in outs:
        nodes.append(helper.make_node("Identity", [src], [name], name=f"xc/out/{name}"))
        outputs.append(helper.make_tensor_value_info(name, et, shape))
    inputs = [i for i in graph_inputs(m)] + [helper.make_tensor_value_info(TARGET, TensorProto.INT64, ["N"])]
    for vi in inputs[:-1]:
        vi.type.tensor_type.shape.dim[0].Clear()
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    graph = helper.make_graph(nodes, m.graph.name or "xcompile", inputs, outputs,
                              initializer=list(m.graph.initializer) + b.initializers)
    opsets = [o for o in m.opset_import if o.domain not in ("", "ai.onnx")] + [helper.make_opsetid("", b.opset)]
    e = helper.make_model(graph, opset_imports=opsets, ir_version=max(8, m.ir_version), producer_name="xcompile",
                          producer_version=__version__)
    meta = {"method": "treeshap", "xcompile_version": __version__, "data_input": inp.name, "score_output": score,
            "expected_value": [float(v) for v in expected_value(tab, background)],
            "feature_perturbation": "tree_path_dependent" if background is None else "interventional", "paths": int(tab.n_paths), "path_depth": int(tab.depth),
            "covers": "background" if background is not None else "data" if data is not None else "file"}
    ExplainerMeta.record(e, **dict(sorted(meta.items())))
    return check(e, where)


@register
class TreeShap(Method):
    """Registry entry: the explainer is built from the tree tables, not by walking a backward graph."""
    name = "treeshap"
    seed = "score"
    summary = "exact path-dependent TreeSHAP of an ai.onnx.ml tree ensemble (LightGBM, XGBoost, scikit-learn)"
    params = {"data": Param(None, "rows (.npy, [M, features]) whose routing through the trees counts the node covers"),
              "background": Param(None, "rows (.npy, [B, features]): interventional TreeSHAP over them instead"),
              "output": Param(None, "name of the score output"),
              "input": Param(None, "name of the data input (the one the trees read)")}

    @classmethod
    def compile_model(cls, model, rules=None, where="model", **params):
        if rules is not None:
            raise XCompileError(f"{where}: --rules is not used by --method treeshap")
        values = cls.parse_params(params)
        return compile_treeshap(model, data=values["data"], output=values["output"], background=values["background"],
                                where=where)
