"""Unit tests of the core pieces: the Builder (naming, constant de-duplication, opset-aware helpers, the
stabilizer), the Engine (relevance paths, fan-in sums, unsupported-op collection) and rule-set matching
(op / name / name_regex / kind / position / layers, first entry wins)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from xcompile.backward.builder import Builder
from xcompile.backward.engine import Engine
from xcompile.errors import UnsupportedOperatorsError, XCompileError
from xcompile.graph import ForwardGraph
from xcompile.lrp import rulesets


# ------------------------------------------------------------------------------------------------ Builder
def test_builder_names_are_unique_readable_and_scoped():
    b = Builder(17, prefix="xc/lrp", reserved={"xc/lrp/conv/z"})
    with b.scope("conv"):
        z = b.op("Relu", ["x"], "z")
        z2 = b.op("Relu", ["x"], "z")
        with b.scope("inner"):
            w = b.op("Neg", ["x"])
    assert z == "xc/lrp/conv/z_1" and z2 == "xc/lrp/conv/z_2"   # the reserved (forward) name is never reused
    assert w == "xc/lrp/conv/inner/Neg"
    assert [n.name for n in b.nodes] == [z, z2, w] and b.op("Relu", ["x"]) == "xc/lrp/Relu"


def test_builder_deduplicates_constants_by_value():
    b = Builder(17)
    one, again = b.f32(1.0), b.f32(1.0)
    big1, big2 = b.const(np.arange(20, dtype=np.float32), hint="w"), b.const(np.arange(20, dtype=np.float32), hint="w")
    assert one == again and one.startswith("xc/const/float32")
    assert big1 == big2 and b.i64([1]) != b.f32([1.0])        # same value, other dtype: another constant
    assert len(b.initializers) == 3
    np.testing.assert_array_equal(b.value_of(big1), np.arange(20))
    assert b.value_of("not-a-constant") is None


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_builder_reduce_is_written_for_the_opset(opset):
    b = Builder(opset)
    b.reduce("ReduceMean", "x", [1])
    b.reduce("ReduceSum", "x", [1])
    mean, total = b.nodes
    assert len(total.input) == 2  # ReduceSum takes axes as an input since opset 13
    assert (len(mean.input) == 2) == (opset >= 18)
    assert any(a.name == "axes" for a in mean.attribute) == (opset < 18)


def _run(b: Builder, inputs: dict, out: str, opset: int = 17):
    vis = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inputs.items()]
    g = helper.make_graph(b.nodes, "t", vis, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          initializer=b.initializers)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run([out], inputs)[0]


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_builder_shape_helpers_run(opset):
    b = Builder(opset)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    t = b.transpose(b.reshape(b.unsqueeze("x", [0]), [2, 12]), [1, 0])
    s = b.squeeze(b.reduce("ReduceSum", t, [0], keepdims=1), [0])
    parts = b.split(s, [1, 1], axis=0)
    out = b.sum([b.slice(parts[0], [0], [1], [0]), parts[1]])
    np.testing.assert_allclose(_run(b, {"x": x}, out, opset), x.reshape(2, 12).sum(1)[:1] + x.reshape(2, 12).sum(1)[1:])


def test_stabilizer_sign_of_zero_is_plus_and_lrp0_guards_zero():
    b = Builder(17)
    z = np.array([[-2.0, 0.0, 3.0]], np.float32)
    plain = b.stabilize("z", 0.5)
    safe = b.stabilize("z", 0.0)
    scaled = b.stabilize("z", 0.1, norm_scale=True, rank=2)
    np.testing.assert_allclose(_run(b, {"z": z}, plain), [[-2.5, 0.5, 3.5]])
    np.testing.assert_allclose(_run(b, {"z": z}, safe), [[-2.0, 1.0, 3.0]])
    rms = np.sqrt((z ** 2).mean())
    np.testing.assert_allclose(_run(b, {"z": z}, scaled), z + 0.1 * rms * np.array([[-1, 1, 1]]), rtol=1e-6)


# ------------------------------------------------------------------------------------------------- Engine
def _graph(extra_nodes=()):
    """y = relu(x) + x * c  (x reaches y twice: a fan-in), plus a branch that never reaches y and a constant one."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Mul", ["x", "c"], ["m"], name="scale"),
             helper.make_node("Add", ["a", "m"], ["s"], name="add"),
             helper.make_node("Exp", ["x"], ["dead"], name="dead_end"),
             helper.make_node("Neg", ["c"], ["c_neg"], name="const_branch"),
             *extra_nodes]
    last = nodes[-1].output[0] if extra_nodes else "s"
    nodes.append(helper.make_node("Add", [last, "c_neg"], ["y"], name="out"))
    c = np.array([[0.5, -2.0, 3.0]], np.float32)
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
                           helper.make_tensor_value_info("dead", TensorProto.FLOAT, ["N", 3])],
                          initializer=[numpy_helper.from_array(c, "c")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    names = {o for n in nodes for o in n.output} | {"x"}
    shapes = {t: (None, 3) for t in names}
    return ForwardGraph(m, "x", "y", "y", shapes, {}), c


def test_engine_relevance_paths():
    g, _ = _graph()
    live, nodes = Engine(g, Builder(17)).paths()
    assert live == {"x", "a", "m", "s", "y"}                 # not the dead end, not the constant branch
    assert [n.name for n in nodes] == ["relu", "scale", "add", "out"]


def test_engine_sums_fan_in_and_computes_the_gradient():
    g, c = _graph()
    b = Builder(17, prefix="xc/gradient")
    grads = Engine(g, b).run("seed")
    sums = [n for n in b.nodes if n.op_type == "Sum"]
    assert len(sums) == 1 and "/fanin/" in sums[0].name and grads["x"] == sums[0].output[0]
    x = np.array([[-1.0, 2.0, 0.5], [3.0, -4.0, 1.0]], np.float32)
    seed = np.ones_like(x)
    model = helper.make_model(helper.make_graph(
        list(g.model.graph.node) + b.nodes, "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("seed", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info(grads["x"], TensorProto.FLOAT, None)],
        initializer=list(g.model.graph.initializer) + b.initializers), opset_imports=[helper.make_opsetid("", 17)])
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "seed": seed})[0]
    np.testing.assert_allclose(got, (x > 0) + c * seed)


def test_engine_collects_every_unsupported_op_at_once():
    g, _ = _graph([helper.make_node("FooOp", ["s"], ["f1"], name="foo", domain="custom"),
                   helper.make_node("BarOp", ["f1"], ["f2"], name="bar", domain="custom")])
    e = Engine(g, Builder(17))
    assert e.unsupported() == [("foo", "FooOp"), ("bar", "BarOp")]
    with pytest.raises(UnsupportedOperatorsError, match="foo") as err:
        e.run("seed")
    assert "bar" in str(err.value)


# ------------------------------------------------------------------------------------ rule-set matching
def _ruleset(tmp_path, text):
    p = tmp_path / "rs.toml"
    p.write_text(text)
    return rulesets.load(str(p))


def _info(op="Conv", name="layer", index=1, count=4):
    from xcompile.lrp.selectors import Site
    return Site(helper.make_node(op, ["x"], ["y"]), op, name, index, count, "conv" if op == "Conv" else "dense")


def test_rule_matching_first_entry_wins_and_selectors_combine(tmp_path):
    rs = _ruleset(tmp_path, """
[[rule]]
name_regex = "^head"
rule = "zero"
[[rule]]
position = "first"
rule = "flat"
[[rule]]
position = "last"
rule = "epsilon"
params = { epsilon = 0.25 }
[[rule]]
layers = [2, -2]
kind = "conv"
rule = "zplus"
[[rule]]
op = ["Gemm", "MatMul"]
name = ["fc", "proj"]
rule = "gamma"
[[rule]]
kind = "linear"
rule = "epsilon"
[[rule]]
op = "Add"
rule = "proportional"
""")
    pick = lambda **kw: rs.match(_info(**kw)).rule  # noqa: E731
    assert pick(name="head.0", index=1) == "zero"            # earlier entry beats position = "first"
    assert pick(index=1) == "flat"
    assert pick(index=4) == "epsilon" and rs.match(_info(index=4)).params == {"epsilon": 0.25}
    assert pick(index=2) == "zplus" and pick(index=3) == "zplus"
    assert pick(op="Gemm", index=2) == "epsilon"             # layers/kind = conv do not select a dense layer
    assert pick(op="Gemm", name="fc", index=2) == "gamma"    # op AND name
    assert pick(op="Conv", name="fc", index=2) == "zplus"
    # non-linear nodes only see entries that name a treatment without linear-only selectors
    assert rs.match(_info("Add", "add", index=0)).rule == "proportional"
    assert rs.match(_info("Relu", "head.relu", index=0)) is None


def test_negative_layer_ranges_count_from_the_end(tmp_path):
    rs = _ruleset(tmp_path, '[[rule]]\nlayers = [-2, -1]\nrule = "zero"\n[[rule]]\nrule = "epsilon"\n')
    assert [rs.match(_info(index=i, count=5)).rule for i in range(1, 6)] == ["epsilon"] * 3 + ["zero"] * 2


@pytest.mark.parametrize("text,match", [
    ('[[rule]]\nrule = "pass"\nparams = { epsilon = 1 }\n', "takes params: none"),
    ('[[rule]]\nrule = "maxpool-proportional"\n', "unknown rule"),
    ('[[rule]]\nposition = "middle"\nrule = "zero"\n', "position"),
    ('[[rule]]\nname_regex = "("\nrule = "zero"\n', "name_regex"),
])
def test_rule_file_errors_are_one_line(tmp_path, text, match):
    with pytest.raises(XCompileError, match=match):
        _ruleset(tmp_path, text)


# --------------------------------------------------------------------------------- rule objects, scores
def test_every_rule_is_an_object_with_emit_and_compatible():
    from xcompile.lrp.rules import RULES, LRPRule
    for name, cls in RULES.items():
        r = cls(weights=[1.0]) if name == "product" else cls()
        assert isinstance(r, LRPRule) and callable(r.emit) and callable(r.compatible), name
    relu, ln = helper.make_node("Relu", ["x"], ["y"]), helper.make_node("LayerNormalization", ["x", "s"], ["y"])
    assert RULES["std-constant"]().compatible(ln) and not RULES["std-constant"]().compatible(relu)
    assert RULES["epsilon"]().compatible(helper.make_node("Conv", ["x", "w"], ["y"])) and not RULES["epsilon"]().compatible(relu)
    assert RULES["pass"]().compatible(relu)


@pytest.mark.parametrize("logits_shape,expected", [([None, 3], "logits"), ([None, 3, 1, 1], "y")])
def test_explained_scores_behind_a_flatten(logits_shape, expected):
    from xcompile.canonicalize.passes import find_explained_scores
    nodes = [helper.make_node("Relu", ["x"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"], axis=1),
             helper.make_node("Flatten", ["p"], ["y"])]
    shape = ["N"] + logits_shape[1:]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert find_explained_scores(m, "y") == expected
    assert find_explained_scores(m, "y", keep_softmax=True) == "y"
