"""BERT-family text models on the web page: `export-web --tokenizer tokenizer.json` (WordPiece) makes the page encode
typed text as Hugging Face `tokenizers` does and feed the attention mask and token types beside the ids. Oracles:
`tokenizers` (the ids of every test sentence: accents, CJK, punctuation, special tokens in the text, control and
zero-width characters, unknown and over-long words, truncation) and onnxruntime in Python (the page's relevance and
scores on those ids, 1e-5 of max). Needs /usr/bin/chromium, playwright and npm, as tests/serving/test_web.py."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import xcompile
from xcompile.write.writer import save

sys.path.insert(0, str(Path(__file__).parent))
from test_web import conformance, need  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
L = 16
SENTENCES = [
    "Hello, World! It's a café in Zürich.",
    "naïve façade – résumé; ÀÉÎÕÜ",
    "北京 is big; 東京 too",
    "unbelievably supercalifragilisticexpialidociousnessly long",
    "email: a.b@c.de (x+y)=z",
    "the [MASK] token and [SEP] inside",
    "tab\tand\nnewline  double  space\u200bzero-width",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
    "emoji 😀 and ümlaut",
    "",
]
CORPUS = ["hello world it is a cafe in zurich", "naive facade resume", "the token is inside the text",
          "one two three four five six seven eight nine ten", "big email long words", "北 京 東"] * 20


def _tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=20))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls),
                                                                                                ("[SEP]", sep)])
    tok.enable_truncation(L)
    tok.enable_padding(length=L, pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    tok.save(str(path))
    return tok


def _bert(vocab: int, path: Path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32, num_labels=3,
                                  attn_implementation="eager")
    m = transformers.BertForSequenceClassification(cfg).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
    ids = torch.ones(2, L, dtype=torch.long)
    buf = io.BytesIO()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(Logits(), (ids, ids, torch.zeros_like(ids)), buf, input_names=names, output_names=["logits"],
                      dynamic_axes={n: {0: "N"} for n in names}, opset_version=17, dynamo=False)
    path.write_bytes(buf.getvalue())


def test_wordpiece_page_matches_tokenizers_and_onnxruntime(tmp_path):
    need("chromium", "playwright", "npm")
    tok = _tokenizer(tmp_path / "tokenizer.json")
    _bert(tok.get_vocab_size(), tmp_path / "bert.onnx")
    explainers = []
    for method, kw in (("gradient", {}), ("lrp", {"rules": "attnlrp"})):
        path = tmp_path / f"bert_{method}.onnx"
        save(xcompile.compile(str(tmp_path / "bert.onnx"), method, **kw), path)
        explainers.append(path)
    (tmp_path / "texts.txt").write_text("\n".join(s.replace("\n", " ") for s in SENTENCES if s.strip()) + "\n")
    from xcompile.web.serve import serve_folder
    from xcompile.web.site import export_site
    site = tmp_path / "site"
    export_site(explainers, site, examples=[tmp_path / "texts.txt"], n_examples=3, tokenizer=tmp_path / "tokenizer.json")
    manifest = json.loads((site / "manifest.json").read_text())
    assert [s["fill"] for s in manifest["explainers"][0]["side"]] == ["mask", "zeros"]
    server = serve_folder(site)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with conformance.browser() as b:
            page = b.new_page()
            page.set_default_timeout(300_000)
            first = conformance.page_results(page, f"{url}?example=0&ep=wasm")
            # the page's encoder on every sentence (the text box's path) against tokenizers
            got = page.evaluate("(texts) => texts.map((t) => encodeText(t, model().tokenizer, model().input.shape[0]))",
                                SENTENCES)
            want = [tok.encode(s).ids for s in SENTENCES]
            print(f"{len(SENTENCES)} sentences, {sum(len([i for i in w if i]) for w in want)} ids, "
                  f"{sum(w.count(tok.token_to_id('[UNK]')) for w in want)} unknown")
            for s, g, w in zip(SENTENCES, got, want):
                assert g == w, (s, [tok.id_to_token(i) for i in g], [tok.id_to_token(i) for i in w])
            results = [first] + [page.evaluate(f"window.xcompile.example({k})") for k in (1, 2)]
    finally:
        server.shutdown()
        server.server_close()
    worst = 0.0
    for res in results:
        assert set(res) == {"bert_gradient", "bert_lrp"}
        for name, r in res.items():
            ids = np.asarray(r["input"], np.int64)[None]
            mask = (ids != tok.token_to_id("[PAD]")).astype(np.int64)
            ex = xcompile.Explainer(str(site / "explainers" / f"{name}.onnx"))
            ref = ex.explain({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
            for key, want in (("relevance", ref.relevance), ("scores", ref.scores)):
                web = np.asarray(r[key], np.float64)
                err = np.abs(web - want.reshape(-1)).max() / np.abs(want).max()
                assert err <= 1e-5, (name, key, err)
                worst = max(worst, err)
    print(f"page vs onnxruntime (3 texts x 2 explainers): {worst:.1e}")


def test_tokenizers_the_page_cannot_reproduce_are_refused_in_one_line(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from xcompile.web.wordpiece import describe_tokenizer
    bpe = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.save(str(tmp_path / "bpe.json"))
    wp = _tokenizer(tmp_path / "wp.json")
    raw = json.loads(wp.to_str())
    raw["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    (tmp_path / "metaspace.json").write_text(json.dumps(raw))
    (tmp_path / "bad.json").write_text("{not json")
    for name, needle in (("bpe.json", "model type 'BPE'"), ("metaspace.json", "pre-tokenizer 'Metaspace'"),
                         ("bad.json", "not a readable tokenizer.json")):
        with pytest.raises(xcompile.XCompileError) as e:
            describe_tokenizer(tmp_path / name)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    good = describe_tokenizer(tmp_path / "wp.json")
    assert good["before"] == [wp.token_to_id("[CLS]")] and good["after"] == [wp.token_to_id("[SEP]")]
    assert good["vocab"][good["unk_id"]] == "[UNK]" and good["lowercase"] and good["strip_accents"]
