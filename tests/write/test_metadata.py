"""The explainer's metadata record (xcompile/metadata.py): written once by the compiler, read back the same way
from a file, a ModelProto or an API caller's Explainer; the conservation band is the compile-time one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import xcompile
from xcompile.lrp.rulesets import band_of, run_warning
from xcompile.metadata import ExplainerMeta

DIGITS = Path(xcompile.__file__).parent / "data" / "digits_cnn.onnx"


def _softmax_model():
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"], axis=1)]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 3])], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.metadata_props.add(key="class_names", value="cat, dog, bird")
    return m


def test_one_record_from_a_file_a_proto_and_an_api_explainer(tmp_path):
    proto = xcompile.compile(_softmax_model(), "gradient")
    path = tmp_path / "e.onnx"
    onnx.save(proto, str(path))
    from_proto, from_file = ExplainerMeta.of_model(proto), xcompile.Explainer(path).meta
    assert from_proto == from_file == xcompile.Explainer(proto).meta
    assert from_file.method == "gradient" and from_file.explained == "logits" and from_file.score_output == "p"
    assert from_file.class_names == ["cat", "dog", "bird"] and from_file.token_input is False
    # the latent bug: an Explainer an API caller builds from compile()'s result knows its scores are probabilities
    from xcompile.visualize import _outputs_probabilities
    assert _outputs_probabilities(xcompile.Explainer(proto))


def test_the_band_is_the_compile_time_one(tmp_path):
    rules = tmp_path / "narrow.toml"
    rules.write_text('[options]\nband = [0.99, 1.01]\n[[rule]]\nkind = "linear"\nrule = "epsilon"\n')
    ex = xcompile.Explainer(xcompile.compile(DIGITS, "lrp", rules=str(rules), verify="false"))
    rules.unlink()  # moved or deleted after compiling: the explainer still knows its band
    assert ex.meta.band == [0.99, 1.01] and band_of(ex.meta) == (0.99, 1.01)
    note = run_warning(ex.meta, np.ones((2, 1, 8, 8), np.float32), np.array([1.0, 3.0]))
    assert note is not None and "leaves [0.99, 1.01]" in note and "1 of 2 rows" in note
