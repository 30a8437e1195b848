"""Triton model repository export: config.pbtxt parses into Triton's own ModelConfig protobuf and its
tensor names / dtypes / dims match the ONNX file; drop-in explainers (keep_outputs) keep the model's
output names and positions."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import xcompile
from xcompile.serving.triton import TRITON_DTYPES, export_triton
from xcompile.write.writer import save

pytest.importorskip("tritonclient")
DIGITS = Path(xcompile.__file__).parent / "data" / "digits_cnn.onnx"

# tritonclient.grpc's protobuf modules clash with MLServer's (duplicate inference.* symbols) when both
# land in one process: parse in a fresh interpreter.
PARSE = r"""
import json, sys
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
cfg = text_format.Parse(open(sys.argv[1]).read(), model_config_pb2.ModelConfig())
print(json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)))
"""


def parse_config(path) -> dict:
    r = subprocess.run([sys.executable, "-c", PARSE, str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def tiny_two_output_model(path):
    """Conv+Relu+Flatten+Gemm -> 'logits', Softmax -> 'probs'; outputs in the order (probs, logits)."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "W"),
             nh.from_array(np.zeros(4, np.float32), "B"),
             nh.from_array((rng.standard_normal((10, 144)) * 0.1).astype(np.float32), "G"),
             nh.from_array(np.zeros(10, np.float32), "C")]
    nodes = [h.make_node("Conv", ["image", "W", "B"], ["c"], name="conv"),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("Flatten", ["r"], ["f"], name="flat"),
             h.make_node("Gemm", ["f", "G", "C"], ["logits"], transB=1, name="fc"),
             h.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax")]
    g = h.make_graph(nodes, "tiny", [h.make_tensor_value_info("image", T.FLOAT, ["batch", 1, 8, 8])],
                     [h.make_tensor_value_info("probs", T.FLOAT, ["batch", 10]),
                      h.make_tensor_value_info("logits", T.FLOAT, ["batch", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    onnx.save(m, str(path))
    return path


@pytest.fixture(scope="module")
def explainer_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("triton")
    src = DIGITS if DIGITS.is_file() else tiny_two_output_model(d / "tiny.onnx")
    p = d / "digits_gradient.onnx"
    save(xcompile.compile(src, "gradient"), p)
    return p


def onnx_specs(path):
    m = onnx.load(str(path))
    def spec(vi):
        t = vi.type.tensor_type
        return vi.name, t.elem_type, [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return [spec(i) for i in m.graph.input], [spec(o) for o in m.graph.output]


def check_tensors(cfg_list, onnx_list):
    assert [c["name"] for c in cfg_list] == [n for n, _, _ in onnx_list]
    for c, (name, elem, dims) in zip(cfg_list, onnx_list):
        assert dims[0] == -1, f"{name}: batch dim must be dynamic"
        assert c["data_type"] == TRITON_DTYPES[elem], name
        per_row = [int(d) for d in c["dims"]]
        if len(dims) == 1:  # [N] -> dims [1] + reshape []
            assert per_row == [1] and c.get("reshape") == {}, (name, c)
        else:
            assert per_row == dims[1:], (name, per_row, dims)


def test_config_parses_into_modelconfig_and_matches_onnx(explainer_path, tmp_path):
    folder = export_triton(explainer_path, tmp_path / "repo", "digits_explainer", max_batch=32)
    assert folder == tmp_path / "repo" / "digits_explainer"
    model_file = folder / "1" / "model.onnx"
    assert model_file.read_bytes() == explainer_path.read_bytes()
    cfg = parse_config(folder / "config.pbtxt")
    assert cfg["name"] == "digits_explainer"
    assert cfg["backend"] == "onnxruntime"
    assert int(cfg["max_batch_size"]) == 32
    assert "dynamic_batching" in cfg
    assert cfg["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]
    ins, outs = onnx_specs(model_file)
    check_tensors(cfg["input"], ins)
    check_tensors(cfg["output"], outs)
    assert [c["name"] for c in cfg["input"]][-1] == "target" and cfg["input"][-1]["data_type"] == "TYPE_INT64"
    assert [c["name"] for c in cfg["output"]][:2] == [outs[0][0], "relevance"]
    assert cfg["input"][0]["data_type"] == "TYPE_FP32"


def test_gpu_and_no_batching(explainer_path, tmp_path):
    folder = export_triton(explainer_path, tmp_path / "repo", "gpu_model", max_batch=0, gpu=True)
    cfg = parse_config(folder / "config.pbtxt")
    assert cfg["instance_group"][0]["kind"] == "KIND_GPU"
    assert int(cfg.get("max_batch_size", 0)) == 0 and "dynamic_batching" not in cfg
    ins, outs = onnx_specs(folder / "1" / "model.onnx")
    for c, (name, _, dims) in zip(cfg["input"] + cfg["output"], ins + outs):  # full dims, batch = -1
        assert [int(d) for d in c["dims"]] == dims, name


def test_dropin_explainer_keeps_output_names_and_positions(tmp_path):
    """keep_outputs=true: the explainer replaces the served model (same outputs, same order) + relevance."""
    model = tiny_two_output_model(tmp_path / "tiny.onnx")
    p = tmp_path / "tiny_explainer.onnx"
    save(xcompile.compile(model, "gradient", output="probs", keep_outputs=True), p)
    folder = export_triton(p, tmp_path / "repo", "tiny")
    cfg = parse_config(folder / "config.pbtxt")
    assert [c["name"] for c in cfg["output"]] == ["probs", "logits", "relevance", "explained_class"]
    assert [c["name"] for c in cfg["input"]] == ["image", "target"]
    # outputs are the original model's values
    import onnxruntime as ort
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    orig = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    ex = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
        None, {"image": x, "target": np.full(3, -1, np.int64)})
    np.testing.assert_allclose(ex[0], orig[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ex[1], orig[1], rtol=1e-6, atol=1e-7)
    assert ex[2].shape == x.shape


def test_cli_export_triton(explainer_path, tmp_path):
    from xcompile.cli import main
    with pytest.raises(SystemExit) as e:
        main(["export-triton", str(explainer_path), "--repo", str(tmp_path / "repo"), "--name", "d", "--max-batch", "8"])
    assert e.value.code == 0
    cfg = parse_config(tmp_path / "repo" / "d" / "config.pbtxt")
    assert int(cfg["max_batch_size"]) == 8


def test_cli_export_triton_errors(tmp_path, capsys):
    from xcompile.cli import main
    not_explainer = tiny_two_output_model(tmp_path / "plain.onnx")
    for argv in (["export-triton", str(tmp_path / "missing.onnx"), "--repo", str(tmp_path / "r")],
                 ["export-triton", str(not_explainer), "--repo", str(tmp_path / "r")]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("xcompile: error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "plain").exists()
