"""Every op an explainer contains must have a CUDA kernel in onnxruntime (README, "GPU"), so that the explainer runs
with ``session.disable_cpu_ep_fallback = "1"`` on the CUDA execution provider.

No GPU is needed: each compiled graph is checked statically against the CUDA kernel table of onnxruntime
(tests/cuda_kernels.py, transcribed from docs/OperatorKernels.md). A node passes when

* its domain is the default one ("" / "ai.onnx": nothing of ai.onnx.ml, com.microsoft, ...),
* its op has a CUDA kernel whose opset range covers the node's schema version (the newest version of the op
  <= the model's default-domain opset, which is how onnxruntime matches kernels), and
* where the op's dtypes are restricted on CUDA (tests/cuda_kernels.py: CUDA_TYPES) and the newest kernel
  applies, the element types of its inputs/outputs (from onnx type inference) are registered ones.

Each test lists all offenders at once: op type, node name, explainer, and why.
"""
from __future__ import annotations

import collections
import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from cuda_kernels import CUDA_KERNELS, CUDA_TYPES
from onnx import TensorProto, defs, helper, shape_inference

import xcompile
from xcompile.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "xcompile" / "data" / "digits_cnn.onnx"
HELDOUT = ROOT / "xcompile" / "data" / "digits_heldout.npz"
RULES = sorted((ROOT / "rules").glob("*.toml"))
DEFAULT_DOMAINS = ("", "ai.onnx")

# op types seen in all explainers checked in this session (printed by the last test with -s)
SEEN: collections.Counter = collections.Counter()
CHECKED: list = []


# ------------------------------------------------------------------------------------------ the check
def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return imp.version
    raise AssertionError("model has no default-domain opset_import")


def covered(ranges, version: int) -> bool:
    return any(lo <= version and (hi is None or version <= hi) for lo, hi in ranges)


def _type_only_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with initializers turned into typed inputs: type inference without the weights (cheap)."""
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    g = m.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    names = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.name not in names:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


def elem_types(model: onnx.ModelProto) -> dict:
    """tensor name -> element type name ("float", "int64", "bool", ...), as far as type inference knows."""
    out = {}
    try:
        inferred = shape_inference.infer_shapes(_type_only_copy(model))
    except Exception:  # noqa: BLE001 - fall back to what the model declares
        inferred = model
    g = inferred.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()
    for t in model.graph.initializer:
        out[t.name] = TensorProto.DataType.Name(t.data_type).lower()
    return out


def _formal(params, j):
    """The formal parameter of the j-th actual input/output (the last one repeats when variadic)."""
    if j < len(params):
        return params[j]
    if params and params[-1].option == defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _nodes(graph: onnx.GraphProto):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _nodes(sub)


def cuda_offenders(model: onnx.ModelProto, label: str) -> list[str]:
    """Every node of `model` that onnxruntime could not place on the CUDA execution provider."""
    opset = model_opset(model)
    types = None
    bad = []
    for n in _nodes(model.graph):
        who = f"{label}: {n.op_type} node {n.name or n.output[0]!r}"
        SEEN[(n.domain or "", n.op_type)] += 1
        if n.domain not in DEFAULT_DOMAINS:
            bad.append(f"{who}: domain {n.domain!r} has no CUDA kernels")
            continue
        try:
            since = defs.get_schema(n.op_type, opset, "").since_version
        except Exception:  # noqa: BLE001 - onnx raises SchemaError
            bad.append(f"{who}: not an ai.onnx op at opset {opset}")
            continue
        ranges = CUDA_KERNELS.get(n.op_type)
        if ranges is None:
            bad.append(f"{who}: no CUDA kernel at all (model opset {opset})")
            continue
        if not covered(ranges, since):
            bad.append(f"{who}: model opset {opset} resolves to {n.op_type}-{since}; CUDA kernels only for "
                       f"opsets {ranges}")
            continue
        allowed = CUDA_TYPES.get(n.op_type)
        if allowed is None or since < ranges[0][0]:
            continue  # unrestricted dtypes, or an older kernel whose types are not transcribed
        if types is None:
            types = elem_types(model)
        schema = defs.get_schema(n.op_type, opset, "")
        wrong = {}  # type constraint -> the first offending tensor
        for kind, actual, formals in (("input", n.input, schema.inputs), ("output", n.output, schema.outputs)):
            for j, name in enumerate(actual):
                p = _formal(formals, j)
                if not name or p is None or p.type_str not in allowed or name not in types:
                    continue
                if types[name] not in allowed[p.type_str] and p.type_str not in wrong:
                    wrong[p.type_str] = f"{kind} {j} {name!r} is {types[name]}"
        for tc, what in wrong.items():
            bad.append(f"{who}: {what}; CUDA {n.op_type} {tc} = {allowed[tc]}")
    CHECKED.append(label)
    return bad


def assert_cuda(explainers: list) -> None:
    """explainers: [(label, ModelProto)]; one assertion listing every offender of every explainer."""
    bad = []
    for label, m in explainers:
        bad += cuda_offenders(m, label)
    assert not bad, f"{len(bad)} node(s) without a CUDA kernel:\n" + "\n".join(bad)


def compiled(label: str, model, method: str, **params):
    try:
        return label, xcompile.compile(model, method, **params)
    except Exception as e:  # noqa: BLE001 - a compile failure is not what this test is about
        pytest.fail(f"{label}: compile failed: {type(e).__name__}: {e}")


# ------------------------------------------------------------------------------------------ the table
def test_kernel_table_is_well_formed():
    for op, ranges in CUDA_KERNELS.items():
        assert ranges, op
        for lo, hi in ranges:
            assert lo >= 1 and (hi is None or hi >= lo), (op, ranges)
    for op, cons in CUDA_TYPES.items():
        assert op in CUDA_KERNELS, op
        assert all(isinstance(v, list) and v for v in cons.values()), op
    assert "ZipMap" not in CUDA_KERNELS and "TreeEnsembleClassifier" not in CUDA_KERNELS


def test_checker_flags_what_cuda_cannot_run():
    """The check itself: a CPU-only op, an op too new for its kernel, a bad dtype and a foreign domain."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.BOOL, [2, 3])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="ok"),
        helper.make_node("ArgMax", ["r"], ["a"], name="argmax13", axis=1),
        helper.make_node("HardSwish", ["r"], ["h"], name="hardswish"),
        helper.make_node("Where", ["c", "c", "c"], ["y"], name="where_bool"),
        helper.make_node("Normalizer", ["x"], ["z"], name="ml", domain="ai.onnx.ml"),
    ]
    g = helper.make_graph(nodes, "t", [x, c], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    seen = SEEN.copy()
    bad = cuda_offenders(m, "toy")
    CHECKED.pop()
    SEEN.clear()
    SEEN.update(seen)
    joined = "\n".join(bad)
    assert len(bad) == 4, joined
    assert "argmax13" in joined and "ArgMax-13" in joined
    assert "hardswish" in joined and "no CUDA kernel at all" in joined
    assert "where_bool" in joined and "is bool" in joined
    assert "ai.onnx.ml" in joined
    assert "'ok'" not in joined


# ------------------------------------------------------------------------------------------ digits CNN
DIGITS_PARAMS = {
    "gradient": [{}],
    "input_x_gradient": [{}],
    "guided_backprop": [{}, {"clip": True}],
    "deconvnet": [{}, {"clip": True}],
    "integrated_gradients": [{"steps": 4}],
    "smoothgrad": [{"samples": 2}],
    "gradcam": [{}],
    "occlusion": [{"window": 4, "stride": 4}],
    "deep_taylor": [{"low": 0, "high": 1}, {"first": "wsquare"}],
    "deeplift": [{}, {"baseline": 0.5}],
    # lrp: every rule set file (below); patternnet/patternattribution: fitted patterns (below)
}


@pytest.fixture(scope="module")
def digits_patterns(tmp_path_factory):
    from xcompile.patterns.fit import fit_file
    d = tmp_path_factory.mktemp("cuda_patterns")
    x = np.load(HELDOUT)["x"][:256]
    np.save(d / "x.npy", x)
    fit_file(str(DIGITS), str(d / "x.npy"), out=str(d / "p.npz"), batch_size=64, progress=False)
    return str(d / "p.npz")


def test_digits_every_method_runs_on_cuda(digits_patterns):
    exps = []
    for method in METHODS:
        if method == "neuralized":
            continue  # needs a scikit-learn model: test_neuralized_runs_on_cuda
        if method == "treeshap":
            continue  # needs a tree ensemble (tests/test_treeshap.py); refused on a CNN
        if method == "lrp":
            for rules in RULES:
                exps.append(compiled(f"digits/lrp[{rules.stem}]", str(DIGITS), "lrp", rules=str(rules),
                                     low=0, high=1))
            exps.append(compiled("digits/lrp[epsilon-plus-flat,maxpool=proportional,gate=split]", str(DIGITS),
                                 "lrp", rules="epsilon-plus-flat", maxpool="proportional", gate="split"))
            continue
        if method in ("patternnet", "patternattribution"):
            for kind in ("relu", "linear"):
                exps.append(compiled(f"digits/{method}[{kind}]", str(DIGITS), method, patterns=digits_patterns,
                                     pattern=kind))
            continue
        assert method in DIGITS_PARAMS, f"new method {method!r}: add its parameters to DIGITS_PARAMS"
        for params in DIGITS_PARAMS[method]:
            tag = ",".join(f"{k}={v}" for k, v in params.items())
            exps.append(compiled(f"digits/{method}[{tag}]", str(DIGITS), method, **params))
    assert_cuda(exps)


# ------------------------------------------------------------------------------------------ neuralized
def test_neuralized_runs_on_cuda():
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.svm import OneClassSVM
    rng = np.random.RandomState(0)
    X = (rng.randn(60, 5) + 3 * rng.randint(3, size=(60, 1))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km = skl2onnx.to_onnx(KMeans(3, n_init=1, random_state=0).fit(X), X[:1])
        oc = skl2onnx.to_onnx(OneClassSVM(gamma=0.2, nu=0.3).fit(X), X[:1])
    assert_cuda([compiled("sklearn/KMeans/neuralized", km, "neuralized"),
                 compiled("sklearn/OneClassSVM/neuralized", oc, "neuralized")])


# ------------------------------------------------------------------------------------------ torchvision
TV_METHODS = [
    ("gradient", {}),
    ("integrated_gradients", {"steps": 4}),
    ("smoothgrad", {"samples": 2}),
    ("gradcam", {}),
    ("occlusion", {}),
    ("lrp", {"rules": "epsilon-plus-flat"}),
]
TV_MODELS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "densenet121"]


def _torchvision(build, name: str, exporter: str, methods=TV_METHODS):
    path = build(name, exporter)  # exported once per session (tests/conftest.py zoo_build), shared with test_models
    base = onnx.load(str(path))
    exps = []
    for method, params in methods:
        exps.append(compiled(f"{name}_{exporter}/{method}", copy.deepcopy(base), method, **params))
    assert_cuda(exps)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", TV_MODELS)
def test_torchvision_runs_on_cuda(name, exporter, torchvision_onnx):
    _torchvision(torchvision_onnx, name, exporter)


@pytest.mark.slow  # ~10 s per explainer
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_vit_runs_on_cuda(exporter, torchvision_onnx):
    _torchvision(torchvision_onnx, "vit_b_16", exporter)
