"""onnxruntime's com.microsoft fused ops, one node each, against PyTorch written from each op's documented maths
(onnxruntime docs/ContribOperators.md):

- the forward stays onnxruntime's fused kernel: the explainer's scores equal the file's own session and the torch
  reference (which checks our reading of the op's semantics: mask formats, defaults, rotary layouts);
- gradient: d score[target] / d x equals torch autograd through the reference;
- AttnLRP: the fused file's relevance equals the relevance of the UNFUSED file that torch.onnx exports from the same
  reference (LRP treats a fused op as the subgraph it fuses).

BiasAdd and BiasSplitGelu have CUDA kernels only in onnxruntime: on a machine without CUDA their file cannot run at all,
so there the explained file is the fused file with the node replaced by its expansion (load/contrib.py: exactly what
the backward walks) and the scores check is against torch only.

Each case is x [N, S, D] -> (a constant map to the op's inputs) -> the fused op -> Flatten -> MatMul: logits [N, 3]."""
from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

import xcompile  # noqa: E402

B, S, D, H, C = 2, 4, 8, 2, 3
RNG = np.random.default_rng(0)


def _w(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def t(a):
    return torch.tensor(a)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2.0)))


def rotary(x, cos, sin, interleaved):
    """x [.., r] rotated by cos / sin [.., r/2] (documented: first half real / second half imaginary, or pairs)."""
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).flatten(-2)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def mha(q, k, v, n, scale=None, masks=()):
    """Multi-head attention on [B, S, n*h] tensors, additive masks [B or 1, 1, S or 1, T]."""
    b, s, _ = q.shape
    h = q.shape[-1] // n
    kv = k.shape[-1] // h
    qh = q.reshape(b, s, n, h).transpose(1, 2)
    kh = k.reshape(b, k.shape[1], kv, h).transpose(1, 2).repeat_interleave(n // kv, 1)
    vh = v.reshape(b, v.shape[1], kv, v.shape[-1] // kv).transpose(1, 2).repeat_interleave(n // kv, 1)
    z = qh @ kh.transpose(-1, -2) * (scale if scale is not None else 1 / math.sqrt(h))
    for m in masks:
        z = z + m
    return (torch.softmax(z, -1) @ vh).transpose(1, 2).reshape(b, s, -1)


# ----------------------------------------------------------------------------------------------- the cases
class Case:
    """A fused node on x; `prep` the constant maps from x to the node's float inputs: [(onnx op, torch fn)] per
    input, `torch_op` the documented maths."""

    def __init__(self, name, op, inputs, torch_op, attrs=None, domain="com.microsoft", out_width=None, outputs=1,
                 combine=None, extra_inputs=()):
        self.name, self.op, self.inputs, self.torch_op = name, op, inputs, torch_op
        self.attrs, self.domain, self.outputs, self.combine = attrs or {}, domain, outputs, combine
        self.extra_inputs = extra_inputs  # [(name, TensorProto type, dims, values per batch row)]


def lin(width_in, width_out):
    return ("lin", _w(width_in, width_out))


def const(a):
    return ("const", a)


def build_onnx(case, head):
    """(ModelProto) x -> prepared inputs -> fused node -> [Flatten -> MatMul(head)]."""
    nodes, inits = [], [numpy_helper.from_array(head, "head")]
    names = []
    for k, spec in enumerate(case.inputs):
        if spec is None:
            names.append("")
        elif spec == "x":
            names.append("x")
        elif isinstance(spec, str):  # an extra (integer) graph input
            names.append(spec)
        elif spec[0] == "lin":
            inits.append(numpy_helper.from_array(spec[1], f"w{k}"))
            nodes.append(helper.make_node("MatMul", ["x", f"w{k}"], [f"in{k}"]))
            names.append(f"in{k}")
        else:
            inits.append(numpy_helper.from_array(spec[1], f"c{k}"))
            names.append(f"c{k}")
    outs = [f"y{k}" for k in range(case.outputs)]
    nodes.append(helper.make_node(case.op, names, outs, domain=case.domain, name="fused", **case.attrs))
    y = outs[0]
    if case.combine == "add_sum":  # SkipLayerNormalization's 4th output read too
        nodes.append(helper.make_node("Add", [outs[0], outs[3]], ["ysum"]))
        y = "ysum"
    nodes += [helper.make_node("Flatten", [y], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "head"], ["logits"])]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", S, D])]
    ins += [helper.make_tensor_value_info(n, ty, ["N"] + list(dims)) for n, ty, dims, _ in case.extra_inputs]
    g = helper.make_graph(nodes, case.name, ins, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C])],
                          initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


class Ref(torch.nn.Module):
    def __init__(self, case, head):
        super().__init__()
        self.case, self.head = case, t(head)

    def forward(self, x, *extra):
        vals, e = [], iter(extra)
        for spec in self.case.inputs:
            if spec is None:
                vals.append(None)
            elif spec == "x":
                vals.append(x)
            elif isinstance(spec, str):
                vals.append(next(e))
            elif spec[0] == "lin":
                vals.append(x @ t(spec[1]))
            else:
                vals.append(t(spec[1]))
        y = self.case.torch_op(*vals)
        return y.flatten(1) @ self.head


def _attention(x, w, b, mask):
    q, k, v = (x @ w + b).split(D, -1)
    keep = torch.arange(S)[None, :] < mask[:, None]
    return mha(q, k, v, H, masks=[torch.where(keep, 0.0, -10000.0)[:, None, None, :]])


def _attention_raw_causal(x, w, b, mask):
    q, k, v = (x @ w + b).split([D, D, 4], -1)
    causal = torch.where(torch.arange(S)[None, :] <= torch.arange(S)[:, None], 0.0, -10000.0)
    return mha(q, k, v, H, scale=0.3, masks=[torch.where(mask == 1, 0.0, -10000.0)[:, None, None, :], causal])


def _mha(q, k, v, bias, mask):
    q, k, v = q + bias[:D], k + bias[D:2 * D], v + bias[2 * D:]
    return mha(q, k, v, H, masks=[torch.where(mask == 1, 0.0, -10000.0)[:, None, None, :]])


def _rotary(interleaved):
    def f(x, pos, cos, sin):
        xh = x.reshape(x.shape[0], S, H, D // H)
        c, s_ = cos[pos][:, :, None, :], sin[pos][:, :, None, :]
        return rotary(xh, c, s_, interleaved).reshape(x.shape)
    return f


GQA_HEAD = 16  # onnxruntime's CPU kernel wants a head size that is a multiple of 8 (16 with rotary)


def _gqa(rotate):
    def f(q, k, v, seqlens, cos=None, sin=None):
        hd = GQA_HEAD  # 2 query heads, 1 key/value head
        if rotate:
            c, s_ = cos[:S][None, :, None, :], sin[:S][None, :, None, :]
            q = rotary(q.reshape(-1, S, H, hd), c, s_, False).reshape(q.shape)
            k = rotary(k.reshape(-1, S, 1, hd), c, s_, False).reshape(k.shape)
        causal = torch.where(torch.arange(S)[None, :] <= torch.arange(S)[:, None], 0.0, float(np.finfo(np.float32).min))
        pad = torch.where(torch.arange(S)[None, :] <= seqlens[:, None], 0.0, float(np.finfo(np.float32).min))
        return mha(q, k, v, H, masks=[causal, pad[:, None, None, :]])
    return f


def _cache(width):
    inv = 1.0 / (10000 ** (np.arange(0, width, 2) / width))
    ang = np.arange(16)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


COS, SIN = _cache(D // H)
GCOS, GSIN = _cache(GQA_HEAD)
SEQLENS = ("seqlens", TensorProto.INT32, [], lambda n: np.full(n, S - 1, np.int32))
LENGTHS = ("mask", TensorProto.INT32, [], lambda n: np.array([S, S - 1] * n, np.int32)[:n])
RAW = ("mask", TensorProto.INT32, [S], lambda n: np.array([[1] * S, [1] * (S - 1) + [0]] * n, np.int32)[:n])
POS = ("pos", TensorProto.INT64, [S], lambda n: np.tile(np.arange(S, dtype=np.int64)[::-1], (n, 1)))

CASES = [
    Case("gelu", "Gelu", ["x"], gelu),
    Case("bias_gelu", "BiasGelu", ["x", const(_w(D))], lambda x, b: gelu(x + b)),
    Case("fast_gelu", "FastGelu", ["x", const(_w(D))],
         lambda x, b: 0.5 * (x + b) * (1 + torch.tanh(0.797885 * (x + b) + 0.035677 * (x + b) ** 3))),
    Case("quick_gelu", "QuickGelu", ["x"], lambda x: x * torch.sigmoid(1.5 * x), attrs={"alpha": 1.5}),
    Case("bias_add", "BiasAdd", ["x", const(_w(D)), lin(D, D)], lambda x, b, s: x + b + s),
    Case("bias_split_gelu", "BiasSplitGelu", [lin(D, 2 * D), const(_w(2 * D))],
         lambda x, b: (x + b)[..., :D] * gelu((x + b)[..., D:])),
    Case("skip_layer_norm", "SkipLayerNormalization", ["x", lin(D, D), const(_w(D) + 1), const(_w(D)), const(_w(D))],
         lambda x, s, g, be, b: torch.nn.functional.layer_norm(x + b + s, (D,), g, be, 1e-5) + (x + b + s),
         attrs={"epsilon": 1e-5}, outputs=4, combine="add_sum"),
    Case("skip_simplified_layer_norm", "SkipSimplifiedLayerNormalization", ["x", lin(D, D), const(_w(D) + 1), const(_w(D))],
         lambda x, s, g, b: (x + b + s) / torch.sqrt(((x + b + s) ** 2).mean(-1, keepdim=True) + 1e-6) * g,
         attrs={"epsilon": 1e-6}),
    Case("simplified_layer_norm", "SimplifiedLayerNormalization", ["x", const(_w(D) + 1)],
         lambda x, g: x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * g, attrs={"epsilon": 1e-6, "axis": -1},
         domain=""),
    Case("attention", "Attention", ["x", const(_w(D, 3 * D)), const(_w(3 * D)), "mask"], _attention,
         attrs={"num_heads": H}, extra_inputs=[LENGTHS]),
    Case("attention_raw_mask_unidirectional_qkv_sizes", "Attention", ["x", const(_w(D, 2 * D + 4)), const(_w(2 * D + 4)), "mask"],
         _attention_raw_causal, attrs={"num_heads": H, "unidirectional": 1, "qkv_hidden_sizes": [D, D, 4], "scale": 0.3},
         extra_inputs=[RAW]),
    Case("multi_head_attention", "MultiHeadAttention", [lin(D, D), lin(D, D), lin(D, D), const(_w(3 * D)), "mask"], _mha,
         attrs={"num_heads": H}, extra_inputs=[RAW]),
    Case("rotary_embedding", "RotaryEmbedding", ["x", "pos", const(COS), const(SIN)], _rotary(False),
         attrs={"num_heads": H}, extra_inputs=[POS]),
    Case("rotary_embedding_interleaved", "RotaryEmbedding", ["x", "pos", const(COS), const(SIN)], _rotary(True),
         attrs={"num_heads": H, "interleaved": 1}, extra_inputs=[POS]),
    Case("fused_matmul", "FusedMatMul", ["x", const(_w(D, D))], lambda x, b: 0.5 * x @ b.T,
         attrs={"transB": 1, "alpha": 0.5}),
    Case("group_query_attention", "GroupQueryAttention",
         [lin(D, 2 * GQA_HEAD), lin(D, GQA_HEAD), lin(D, GQA_HEAD), None, None, "seqlens", const(np.array(S, np.int32))],
         lambda q, k, v, p, pv, sl, tot: _gqa(False)(q, k, v, sl),
         attrs={"num_heads": H, "kv_num_heads": 1}, extra_inputs=[SEQLENS]),
    Case("group_query_attention_rotary", "GroupQueryAttention",
         [lin(D, 2 * GQA_HEAD), lin(D, GQA_HEAD), lin(D, GQA_HEAD), None, None, "seqlens",
          const(np.array(S, np.int32)), const(GCOS), const(GSIN)],
         lambda q, k, v, p, pv, sl, tot, c, s_: _gqa(True)(q, k, v, sl, c, s_),
         attrs={"num_heads": H, "kv_num_heads": 1, "do_rotary": 1}, extra_inputs=[SEQLENS]),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("contrib_ops")
    out = {}

    def get(case):
        if case.name not in out:
            width = 4 if case.attrs.get("qkv_hidden_sizes") else 2 * GQA_HEAD if case.op == "GroupQueryAttention" else D
            head = _w(S * width, C)
            m = build_onnx(case, head)
            path = d / f"{case.name}.onnx"
            onnx.save(m, path)
            ref = Ref(case, head)
            unfused = d / f"{case.name}_unfused.onnx"
            x = torch.tensor(RNG.standard_normal((B, S, D)).astype(np.float32))
            extra = [torch.tensor(v(B)) for _, _, _, v in case.extra_inputs]
            with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(None):
                warnings.simplefilter("ignore")
                torch.onnx.export(ref, (x, *extra), str(unfused), dynamo=False, opset_version=17,
                                  input_names=["x"] + [e[0] for e in case.extra_inputs], output_names=["logits"],
                                  dynamic_axes={k: {0: "N"} for k in ["x", "logits"] + [e[0] for e in case.extra_inputs]})
            out[case.name] = (path, unfused, ref, x, extra)
        return out[case.name]
    return get


def runnable(path):
    """The fused file, or (kernel on CUDA only, none here) the file with the fused node replaced by its expansion."""
    try:
        ort.InferenceSession(str(path))
        return path, True
    except Exception as e:  # noqa: BLE001
        if "NOT_IMPLEMENTED" not in str(e):
            raise
    from xcompile.graph import ForwardGraph
    from xcompile.load.contrib import unfused_view

    m = onnx.load(path)
    inf = onnx.shape_inference.infer_shapes(m)
    vis = list(inf.graph.value_info) + list(inf.graph.input) + list(inf.graph.output)
    shapes = {vi.name: tuple(None if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim) for vi in vis}
    g = ForwardGraph(m, "x", "logits", "logits", shapes, {k: np.dtype(np.float32) for k in shapes})
    g.virtual, g.virtual_consts = {}, {}
    unfused_view(g)
    assert not any(n.domain for n in g.nodes)
    graph = helper.make_graph(g.nodes, "expanded", list(m.graph.input), list(m.graph.output),
                              initializer=list(m.graph.initializer) + list(g.virtual_consts.values()))
    out = path.with_name(path.stem + "_expanded.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), out)
    return out, False


def _feeds(case, x, extra):
    f = {"x": x.numpy()}
    f.update({e[0]: v.numpy() for e, v in zip(case.extra_inputs, extra)})
    return f


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_op_gradient_matches_autograd(built, case):
    path, _, ref, x, extra = built(case)
    path, fused = runnable(path)
    assert (case.op in {n.op_type for n in onnx.load(path).graph.node}) == fused
    ex = xcompile.Explainer(xcompile.compile(path, "gradient", input="x"))
    res = ex.explain(_feeds(case, x, extra), np.array([0, 2]))
    own = ort.InferenceSession(str(path)).run(None, _feeds(case, x, extra))[0]
    if fused:
        assert np.array_equal(res.scores, own)  # the fused kernel's own scores
    else:  # (an ai.onnx file: onnxruntime's own fusions may differ by an ulp where the backward reads inner tensors)
        np.testing.assert_allclose(res.scores, own, rtol=1e-6, atol=1e-6)
    xr = x.clone().requires_grad_(True)
    logits = ref(xr, *extra)
    np.testing.assert_allclose(res.scores, logits.detach().numpy(), rtol=1e-4, atol=1e-4)  # our reading of the op
    g, = torch.autograd.grad(logits.gather(1, torch.tensor([[0], [2]])).sum(), xr)
    assert rel_err(res.relevance, g.numpy()) <= 1e-5


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_op_attnlrp_is_the_unfused_graphs(built, case):
    path, unfused, _, x, extra = built(case)
    path, _ = runnable(path)
    kw = dict(rules="attnlrp", input="x")
    fused = xcompile.Explainer(xcompile.compile(path, "lrp", **kw)).explain(_feeds(case, x, extra), np.array([0, 2]))
    plain = xcompile.Explainer(xcompile.compile(unfused, "lrp", **kw)).explain(_feeds(case, x, extra), np.array([0, 2]))
    assert np.isfinite(fused.relevance).all()
    assert rel_err(fused.relevance, plain.relevance) <= 1e-4


# ----------------------------------------------------------------------------------------------- refusals
def _one_node(tmp_path, node, inits, inputs):
    g = helper.make_graph([node, helper.make_node("Flatten", ["y"], ["flat"], axis=1),
                           helper.make_node("MatMul", ["flat", "head"], ["logits"])], "refused", inputs,
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C])],
                          initializer=inits + [numpy_helper.from_array(_w(S * D, C), "head")])
    path = tmp_path / "refused.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]),
              path)
    return path


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", S, D])


def test_refusals_name_the_fused_op_and_what_to_do(tmp_path):
    # a contrib op with no expansion on the data path
    path = _one_node(tmp_path, helper.make_node("BiasSoftmax", ["x", "bias"], ["y"], domain="com.microsoft", axis=-1),
                     [numpy_helper.from_array(_w(D), "bias")], [X])
    with pytest.raises(xcompile.XCompileError, match=r"\(BiasSoftmax\) have no backward \(supported contrib "
                       r"ops: Attention, .*FusionOptions"):
        xcompile.compile(path, "gradient")
    # a supported op in a mode that is not expanded: a KV cache
    past = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", H, 3, D // H]) for n in ("past_k", "past_v")]
    node = helper.make_node("MultiHeadAttention", ["x", "x", "x", "", "", "", "past_k", "past_v"], ["y", "pk", "pv"],
                            domain="com.microsoft", num_heads=H, name="att")
    path = _one_node(tmp_path, node, [], [X] + past)
    with pytest.raises(xcompile.XCompileError, match=r"'att' \(MultiHeadAttention: a past state \(KV cache\)\).*optimizer"):
        xcompile.compile(path, "gradient", input="x")


def test_refusal_names_what_reads_the_integer_input(tmp_path):
    """Token ids read by a look-up on an integer table that nothing dequantizes: the refusal says so."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", S])
    nodes = [helper.make_node("Gather", ["table", "ids"], ["q"], axis=0, name="lookup"),
             helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["y"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "head"], ["logits"])]
    g = helper.make_graph(nodes, "ints", [ids], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C])],
                          initializer=[numpy_helper.from_array(RNG.integers(-9, 9, (20, D)).astype(np.int8), "table"),
                                       numpy_helper.from_array(_w(S * D, C), "head")])
    path = tmp_path / "ints.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(xcompile.XCompileError, match=r"'ids' is read by Gather 'lookup' on int8 table \[20, 8\] not "
                       r"dequantized after the look-up.*--set input=NAME"):
        xcompile.compile(path, "gradient")
