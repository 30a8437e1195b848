"""Token and time-series outputs: the HTML token heatmap (parsed, and once rendered by headless Chromium), the
token PNG, the time-series plot, vocabularies / tokenizers and word sums, `xcompile run` inputs for token-id
explainers, the shipped language identifier, and `xcompile demo --task text`.

Colour oracle (from the documented mapping, not from our code): a token of relevance r in a row with maximum
|R| = m has strength a = |r| / m; positive -> (255, round(255 (1 - a)), same), negative -> (same, same, 255)."""
import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from clirun import cli
from onnx import numpy_helper
from PIL import Image

import xcompile
from xcompile.errors import XCompileError
from xcompile.runtime.explainer import Explainer, Explanation
from xcompile.runtime.feeds import load_batch
from xcompile.runtime.io import Batch, write_results
from xcompile.runtime.sequences import save_timeseries_png, save_token_png, time_axis, token_html
from xcompile.runtime.tokens import load_vocabulary, plain_vocabulary, sum_words, words_of

DATA = Path(xcompile.__file__).parent / "data"
LANGID = DATA / "langid_cnn.onnx"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def has_token_core() -> bool:
    """The token-id explainer core (Explainer.token_input, dict inputs) is in this checkout."""
    return hasattr(Explainer, "token_input") or "token_input" in Explainer.__init__.__code__.co_names


needs_tokens = pytest.mark.skipif(not has_token_core(), reason="token-id explainers (Explainer.token_input) "
                                  "are not in this checkout yet")


class Spans(HTMLParser):
    """Every <span class="tok">: (text, title, data-r, (r, g, b))."""

    def __init__(self):
        super().__init__()
        self.spans, self._open = [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and a.get("class") == "tok":
            colour = a["style"].split("background-color:")[1].split(";")[0].strip().lstrip("#")
            self._open = ["", a["title"], float(a["data-r"]), tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))]

    def handle_data(self, data):
        if self._open is not None:
            self._open[0] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._open is not None:
            self.spans.append(tuple(self._open))
            self._open = None


def expected_colour(r, m):
    fade = round(255 * (1 - abs(r) / m))
    return (255, fade, fade) if r > 0 else (fade, fade, 255) if r < 0 else (255, 255, 255)


TOKENS = ["[CLS]", "the", "<b>", "a&b", "\"q\"", "un", "##believ", "##able", "[SEP]", "[PAD]", "[PAD]"]
REL = np.array([0.05, 0.8, -1.6, 0.4, 0.0, 1.2, -0.3, 0.1, 0.02, 0.7, -0.9])   # padding values must not count
SHOWN = np.array([True] * 9 + [False] * 2)


def test_html_heatmap_has_every_token_with_escaped_text_and_signed_colour():
    doc = token_html([("row 0: class 1", TOKENS, REL, SHOWN)])
    p = Spans()
    p.feed(doc)
    assert len(p.spans) == SHOWN.sum()                     # one span per shown token, padding left out
    m = np.abs(REL[SHOWN]).max()                          # 1.6: the padding -0.9 / 0.7 do not set the scale
    for (text, title, r, colour), tok, want in zip(p.spans, TOKENS, REL):
        assert text == tok and title.startswith(tok + ":")
        assert r == pytest.approx(want, rel=1e-5)
        assert colour == expected_colour(want, m), (tok, colour)
    assert "&lt;b&gt;" in doc and "a&amp;b" in doc and "<b>" not in doc.replace("&lt;b&gt;", "")
    assert "2 padding tokens not shown" in doc
    # strength ordering: the strongest positive token is the reddest
    reds = {t: c for t, _, _, c in p.spans if c[0] == 255 and c[1] < 255}
    assert min(reds, key=lambda t: reds[t][1]) == "un"


def test_token_png_wraps_at_a_fixed_width(tmp_path):
    short, long = tmp_path / "short.png", tmp_path / "long.png"
    save_token_png(short, TOKENS, REL, SHOWN, title="short")
    save_token_png(long, TOKENS * 12, np.tile(REL, 12), np.tile(SHOWN, 12), title="long")
    a, b = Image.open(short), Image.open(long)
    assert a.size[0] == b.size[0] == 800                   # 8 inches at 100 dpi
    assert 60 <= a.size[1] < b.size[1] and b.size[1] >= 4 * 30   # several wrapped lines
    px = np.asarray(b.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((px[:, 0] == 255) & (px[:, 2] < 100)).any()    # a strongly red box
    assert ((px[:, 2] == 255) & (px[:, 0] < 100)).any()    # a strongly blue box


@pytest.mark.parametrize("shape, axis", [((200,), 0), ((3, 200), 1), ((200, 3), 0), ((1, 8, 8), None),
                                         ((28, 28), None), ((12, 40), None), (("L",), None)])
def test_time_axis(shape, axis):
    assert time_axis(shape) == axis


def test_timeseries_plot_for_a_one_dimensional_input(tmp_path):
    t = np.linspace(0, 6, 120, dtype=np.float32)
    x = np.stack([np.sin(t), np.cos(t)])[None]             # [N=1, C=2, T=120]
    rel = x * 0.5
    res = Explanation(scores=np.array([[0.2, 0.8]], np.float32), relevance=rel.astype(np.float32))
    files = write_results(tmp_path / "out", ["sig"], x, [None], res)
    png = tmp_path / "out" / "sig_heatmap.png"
    assert png in files and (tmp_path / "out" / "_COMPLETE").is_file()
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[1] == 800 and img.shape[0] > 200       # the 8-inch line plot, one panel per channel
    red = (img[..., 0] > 200) & (img[..., 2] < 120)
    blue = (img[..., 2] > 200) & (img[..., 0] < 120)
    assert red.sum() > 500 and blue.sum() > 500             # the band shows both signs
    one = tmp_path / "one.png"
    save_timeseries_png(one, np.sin(t), np.cos(t), title="rank 1")
    assert Image.open(one).size[0] == 800


# ------------------------------------------------------------------ vocabularies, tokenizers, words
@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "##s", "un",
                                         "##believ", "##able", "<", "&", "."])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_tokenizer_encoding_words_and_word_sums(tokenizer_json):
    v = load_vocabulary(tokenizer_json)
    enc = v.encode(["the cats unbelievable < &", "the cat sat"], 12, "lines")
    assert enc.ids[0].tolist() == [2, 4, 5, 7, 8, 9, 10, 11, 12, 3, 0, 0]
    assert enc.mask[0].tolist() == [1] * 10 + [0] * 2 and enc.mask[1].sum() == 5
    assert enc.words[0] == ["the", "cats", "unbelievable", "<", "&"]
    assert v.tokens([5, 7]) == ["cat", "##s"] and v.pad_id == 0
    # the word of each token from the ids alone (a .npy input) equals the tokenizer's own word_ids
    assert v.word_ids(enc.ids[0]) == enc.word_ids[0]
    wid, words = words_of(v, enc.ids[0])
    assert words == ["the", "cats", "unbelievable", "<", "&"]
    rel = np.arange(12, dtype=np.float64)
    np.testing.assert_allclose(sum_words(rel, wid, len(words)), [1, 2 + 3, 4 + 5 + 6, 7, 8])


def test_plain_vocabularies():
    v = plain_vocabulary({"vocab": ["<pad>", "<unk>", "a", "b", "ä"], "pad_id": 0, "unk_id": 1,
                          "level": "char", "lowercase": True})
    enc = v.encode(["AbÄx"], 6, "w")
    assert enc.ids.tolist() == [[2, 3, 4, 1, 0, 0]] and enc.mask.tolist() == [[1, 1, 1, 1, 0, 0]]
    assert plain_vocabulary(["x", "y"]).tokens([1, 0, 7]) == ["y", "x", "<7>"]
    assert plain_vocabulary({"[PAD]": 0, "hi": 2}).tokens([2, 1]) == ["hi", "<1>"]
    with pytest.raises(XCompileError, match="needs a tokenizer.json"):
        plain_vocabulary(["x", "y"]).encode(["xy"], 4, "w")
    assert words_of(v, enc.ids[0]) is None                 # no word-level view without a tokenizer


def _fake_explainer(*inputs, data="input_ids"):
    """The attributes `xcompile run` reads from an Explainer, for a token model with these (name, type) inputs."""
    args = [SimpleNamespace(name=n, type=t, shape=["N", 12]) for n, t in inputs]
    args.append(SimpleNamespace(name="target", type="tensor(int64)", shape=["N"]))
    d = next(a for a in args if a.name == data)
    return SimpleNamespace(session=SimpleNamespace(get_inputs=lambda: args), data_input=d, sample_shape=(12,),
                           where="bert.xc.onnx", token_input=True)


def test_run_inputs_for_a_token_explainer(tokenizer_json, tmp_path):
    ex = _fake_explainer(("input_ids", "tensor(int64)"), ("attention_mask", "tensor(int64)"),
                         ("token_type_ids", "tensor(int32)"))
    text = tmp_path / "lines.txt"
    text.write_text("the cats unbelievable < &\n\nthe cat sat\n", encoding="utf-8")
    b = load_batch([str(text)], ex, None, tokenizer_json)
    assert b.names == ["lines_0", "lines_2"] and b.feeds["input_ids"].dtype == np.int64  # named by line (blank skipped)
    assert b.feeds["attention_mask"].sum(1).tolist() == [10, 5] and b.feeds["token_type_ids"].dtype == np.int32
    np.testing.assert_array_equal(b.shown, b.feeds["attention_mask"] != 0)
    assert b.words[1][1] == ["the", "cat", "sat"]

    ids = tmp_path / "ids.npy"
    np.save(ids, b.feeds["input_ids"].astype(np.int32))
    with pytest.raises(XCompileError, match="missing input 'attention_mask'"):
        load_batch([str(ids)], ex, None, tokenizer_json)
    mask = tmp_path / "mask.npy"
    np.save(mask, b.feeds["attention_mask"])
    np.save(tmp_path / "types.npy", b.feeds["token_type_ids"])
    b2 = load_batch([f"attention_mask={mask}", str(ids), f"token_type_ids={tmp_path / 'types.npy'}"], ex, None,
                    tokenizer_json)
    assert b2.feeds["input_ids"].dtype == np.int64         # integers stay integers, cast to the declared type
    np.testing.assert_array_equal(b2.feeds["input_ids"], b.feeds["input_ids"])
    assert b2.words[0][1] == ["the", "cats", "unbelievable", "<", "&"]

    np.save(tmp_path / "f.npy", b.feeds["input_ids"].astype(np.float32))
    np.save(tmp_path / "short.npy", b.feeds["input_ids"][:, :8])
    bad = {"token ids must be integers": [str(tmp_path / "f.npy")],
           "expects [N, 12]": [str(tmp_path / "short.npy")],
           "'labels' is not an input": [str(ids), "labels=x.npy"],
           "2 explained inputs": [str(ids), str(ids)],
           "a text file needs --tokenizer": [str(text)]}
    for fragment, specs in bad.items():
        with pytest.raises(XCompileError, match=re.escape(fragment)):
            load_batch(specs, ex, None, tokenizer_json if "text" not in fragment else None)


def test_token_results_are_written_as_npy_html_png_and_words(tokenizer_json, tmp_path):
    v = load_vocabulary(tokenizer_json)
    enc = v.encode(["the cats unbelievable < &"], 12, "lines")
    rel = np.linspace(-1, 1, 12, dtype=np.float32)[None]
    b = Batch(None, ["s"], [None], feeds={"input_ids": enc.ids}, ids=enc.ids, shown=enc.mask != 0, vocab=v,
              words=[words_of(v, enc.ids[0], enc.word_ids[0], enc.words[0])])
    res = Explanation(np.array([[0.1, 0.9]], np.float32), rel)
    write_results(tmp_path, b.names, None, b.images, res, b)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["_COMPLETE", "s_heatmap.html", "s_heatmap.png", "s_relevance.npy", "s_words.html", "scores.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "s_relevance.npy"), rel[0])
    p = Spans()
    p.feed((tmp_path / "s_words.html").read_text(encoding="utf-8"))
    want = sum_words(rel[0], enc.word_ids[0], 5)           # cats = R(cat) + R(##s), ...
    assert [s[0] for s in p.spans] == ["the", "cats", "unbelievable", "<", "&"]
    np.testing.assert_allclose([s[2] for s in p.spans], want, rtol=1e-5)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed")
def test_chromium_renders_the_html_heatmap(tmp_path):
    page = tmp_path / "tokens.html"
    page.write_text(token_html([("row 0", TOKENS * 3, np.tile(REL, 3), np.tile(SHOWN, 3))]), encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=800,300",
                    page.as_uri()], capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (300, 800) and img.std() > 5     # not blank
    red = (img[..., 0] > 240) & (img[..., 1] < 90) & (img[..., 2] < 90)      # "un": strength 0.75 red
    blue = (img[..., 2] > 240) & (img[..., 0] < 60) & (img[..., 1] < 60)     # "<b>": full-strength blue
    assert red.sum() > 50 and blue.sum() > 50


# ------------------------------------------------------------------ the shipped language identifier
def langid_heldout():
    meta = json.loads((DATA / "langid_cnn.json").read_text(encoding="utf-8"))
    held = np.load(DATA / "langid_cnn_heldout.npz")
    words = bytes(held["words_utf8"]).decode("utf-8").split("\n")
    return meta, words, held["y"].astype(np.int64)


def test_shipped_langid_model_reproduces_its_heldout_accuracy():
    import onnxruntime as ort
    meta, words, y = langid_heldout()
    assert sum((DATA / f"langid_cnn{s}").stat().st_size for s in (".onnx", ".json", "_heldout.npz")) < 300_000
    assert len(words) == len(y) == meta["heldout_words"] and meta["classes"] == ["en", "de", "fr", "es"]
    ids = plain_vocabulary(meta).encode(words, meta["max_len"], "held-out").ids
    sess = ort.InferenceSession(str(LANGID), providers=["CPUExecutionProvider"])
    scores = sess.run(None, {meta["input_name"]: ids})[0]
    acc = float((scores.argmax(1) == y).mean())
    assert abs(acc - meta["heldout_accuracy"]) <= 1.0 / len(y) and acc > 0.85
    table = numpy_helper.to_array(next(t for t in onnx.load(LANGID).graph.initializer if t.name == "embed.weight"))
    assert not table[meta["pad_id"]].any()                 # padding embeds to zero: no relevance at padding
    for lang, examples in meta["examples"].items():         # the example words are held-out and classified right
        for w in examples:
            k = words.index(w)
            assert meta["classes"][int(scores[k].argmax())] == lang == meta["classes"][y[k]]


def _langid_torch():
    """The shipped ONNX graph rebuilt in PyTorch from its initializers (autograd is the oracle)."""
    import torch
    w = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(LANGID).graph.initializer}

    def scores_from_embedding(e):                          # e [N, L, D]
        h = torch.relu(torch.nn.functional.conv1d(e.transpose(1, 2), w["conv.weight"], w["conv.bias"], padding=1))
        return h.amax(dim=2) @ w["fc.weight"].T + w["fc.bias"]
    return w["embed.weight"], scores_from_embedding


@needs_tokens
def test_run_explains_token_ids_with_the_langid_explainer(tmp_path):
    import torch
    meta, words, y = langid_heldout()
    vocab = plain_vocabulary(meta)
    explainer = tmp_path / "langid_ig.onnx"
    rc, _, err = cli("compile", LANGID, "-m", "integrated_gradients", "--set", "steps=16", "--set",
                     "baseline_token=0", "-o", explainer)
    assert rc == 0, err
    sample = words[:5]
    ids = vocab.encode(sample, 16, "w").ids
    np.save(tmp_path / "ids.npy", ids)
    rc, out, err = cli("run", explainer, "-i", tmp_path / "ids.npy", "--tokenizer", DATA / "langid_cnn.json",
                       "--out", tmp_path / "res")
    assert rc == 0, err
    for i in range(5):
        for suffix in ("_relevance.npy", "_heatmap.html", "_heatmap.png"):
            assert (tmp_path / "res" / f"ids_{i}{suffix}").stat().st_size > 0
    rel = np.stack([np.load(tmp_path / "res" / f"ids_{i}_relevance.npy") for i in range(5)])
    assert rel.shape == (5, 16)
    # oracle: IG in embedding space from the pad embedding (zero), right Riemann sum, autograd on the rebuilt model
    table, f = _langid_torch()
    e = table[torch.from_numpy(ids)]
    target = f(e).argmax(1)
    grads = torch.zeros_like(e)
    for k in range(1, 17):
        ek = (e * k / 16).requires_grad_(True)
        f(ek).gather(1, target[:, None]).sum().backward()
        grads += ek.grad / 16
    ref = (e * grads).sum(-1).numpy()
    err_max = np.abs(rel - ref).max() / np.abs(ref).max()
    print(f"langid IG (16 steps) vs autograd: max error {err_max:.2e} of max |R|")
    assert err_max <= 1e-3, err_max
    pad = ids == vocab.pad_id
    assert np.abs(rel[pad]).max() <= 1e-6 * np.abs(rel).max()
    p = Spans()
    p.feed((tmp_path / "res" / "ids_0_heatmap.html").read_text(encoding="utf-8"))
    assert "".join(s[0] for s in p.spans) == sample[0]     # characters as tokens, padding left out
    # the same words as a .txt file, encoded through the character vocabulary
    (tmp_path / "w.txt").write_text("\n".join(sample) + "\n", encoding="utf-8")
    rc, out2, err = cli("run", explainer, "-i", tmp_path / "w.txt", "--tokenizer", DATA / "langid_cnn.json",
                        "--out", tmp_path / "res2")
    assert rc == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "res2" / "w_0_relevance.npy"), rel[0], atol=1e-6)
    rc, _, err = cli("run", explainer, "-i", tmp_path / "w.txt", "--out", tmp_path / "res3")
    assert rc == 2 and "needs --tokenizer" in err and "Traceback" not in err


@needs_tokens
def test_demo_text_task_writes_token_heatmaps(tmp_path):
    import onnxruntime as ort
    meta, words, y = langid_heldout()
    rc, out, err = cli("demo", "--task", "text", "--out", tmp_path / "demo", "--n", "4")
    assert rc == 0, err
    acc, m = out.split("accuracy (explainer scores)")[1].split()[:3:2]
    ids = plain_vocabulary(meta).encode(words[:int(m)], meta["max_len"], "held-out").ids
    scores = ort.InferenceSession(str(LANGID), providers=["CPUExecutionProvider"]).run(None, {"chars": ids})[0]
    assert abs(float(acc) - float((scores.argmax(1) == y[:int(m)]).mean())) <= 1e-4   # the model's own scores
    heat = tmp_path / "demo" / "heatmaps"
    assert len(list(heat.glob("*_heatmap.html"))) == 4 and len(list(heat.glob("*_heatmap.png"))) == 4
    p = Spans()
    p.feed((tmp_path / "demo" / "langid_demo.html").read_text(encoding="utf-8"))
    shown = [w for group in zip(*meta["examples"].values()) for w in group][:4]
    assert "".join(s[0] for s in p.spans) == "".join(shown)
    assert html.escape(shown[0]) in out


@needs_tokens
def test_run_text_lines_through_a_tokenizer_on_a_two_input_bert(tokenizer_json, tmp_path):
    """attention_mask built from the tokenizer's encoding; input x gradient vs Captum LayerGradientXActivation on
    word_embeddings (summed over D); padding tokens get no relevance and are left out of the heatmap."""
    import torch
    import transformers
    from captum.attr import LayerGradientXActivation
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=3)
    bert = transformers.BertForSequenceClassification(cfg).eval()

    def logits(input_ids, attention_mask):
        return bert(input_ids=input_ids, attention_mask=attention_mask).logits

    from model_zoo.token_models import TokenLogits, export_token_classifier
    model = tmp_path / "bert.onnx"
    ids0, mask0 = torch.randint(4, 14, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    export_token_classifier(TokenLogits(bert), (ids0, mask0), model)
    explainer = tmp_path / "ixg.onnx"
    rc, _, err = cli("compile", model, "-m", "input_x_gradient", "-o", explainer)
    assert rc == 0, err
    lines = tmp_path / "lines.txt"
    lines.write_text("the cats sat.\nun believable < & the cat sat\n", encoding="utf-8")
    rc, out, err = cli("run", explainer, "-i", lines, "--tokenizer", tokenizer_json, "--out", tmp_path / "res")
    assert rc == 0, err
    enc = load_vocabulary(tokenizer_json).encode(lines.read_text().splitlines(), 12, "lines")
    ids, mask = torch.from_numpy(enc.ids), torch.from_numpy(enc.mask)
    target = logits(ids, mask).argmax(1)
    ref = LayerGradientXActivation(logits, bert.bert.embeddings.word_embeddings).attribute(
        ids, target=target, additional_forward_args=(mask,)).sum(-1).detach().numpy()
    for i in range(2):
        rel = np.load(tmp_path / "res" / f"lines_{i}_relevance.npy")
        err_max = np.abs(rel - ref[i]).max() / np.abs(ref[i]).max()
        print(f"BERT row {i}: input x gradient vs Captum: max error {err_max:.2e} of max |R|")
        assert err_max <= 1e-4
        assert np.abs(rel[enc.mask[i] == 0]).max(initial=0) <= 1e-6 * np.abs(rel).max()
        p = Spans()
        p.feed((tmp_path / "res" / f"lines_{i}_heatmap.html").read_text(encoding="utf-8"))
        assert len(p.spans) == enc.mask[i].sum()
        assert (tmp_path / "res" / f"lines_{i}_words.html").is_file()


@needs_tokens
def test_run_float_signal_with_an_extra_input(tmp_path):
    """[N, 2, 32] signal times a second input s [N, 1, 1] -> linear scores: `run -i x.npy -i s=s.npy` feeds both,
    relevance = x s W[:, c] (numpy reference), and the heatmap is the time-series plot."""
    from onnx import TensorProto, helper
    w = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["a"]), helper.make_node("Flatten", ["a"], ["f"]),
                           helper.make_node("MatMul", ["f", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 32]),
                           helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                          [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    x = np.stack([np.sin(np.linspace(0, 9, 64)), np.cos(np.linspace(0, 5, 64))]).astype(np.float32).reshape(2, 2, 32)
    s = np.array([1.0, -2.0], np.float32).reshape(2, 1, 1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "s.npy", s)
    rc, _, err = cli("compile", tmp_path / "m.onnx", "-m", "input_x_gradient", "--set", "input=x", "-o", tmp_path / "e.onnx")
    assert rc == 0, err
    rc, out, err = cli("run", tmp_path / "e.onnx", "-i", tmp_path / "x.npy", "-i", f"s={tmp_path / 's.npy'}",
                       "--out", tmp_path / "r")
    assert rc == 0, err
    c = ((x * s).reshape(2, 64) @ w).argmax(1)
    for i in range(2):
        ref = x[i] * s[i] * w[:, c[i]].reshape(2, 32)
        np.testing.assert_allclose(np.load(tmp_path / "r" / f"x_{i}_relevance.npy"), ref, rtol=1e-5, atol=1e-6)
        img = np.asarray(Image.open(tmp_path / "r" / f"x_{i}_heatmap.png").convert("RGB"))
        assert img.shape[1] == 800                       # the line plot, not the 3-inch image heatmap
    rc, _, err = cli("run", tmp_path / "e.onnx", "-i", tmp_path / "x.npy", "--out", tmp_path / "r2")
    assert rc == 2 and "missing input 's'" in err and len(err.strip().splitlines()) == 1
