"""A Hugging Face ``tokenizer.json`` of the WordPiece family (BERT, DistilBERT, ELECTRA, MiniLM, ...) as the page's
tokenizer: read here as JSON (no ``tokenizers`` package needed), checked, and reduced to what page/app.js's
``encodeWordPiece`` reproduces: BertNormalizer (clean text, CJK characters spaced, lower-casing, accent stripping),
BertPreTokenizer (whitespace and punctuation), greedy longest-match WordPiece with its continuation prefix and
unknown token, the ``[CLS] $A [SEP]`` template, special added tokens matched verbatim. Anything else (BPE, Unigram,
other normalizers) is refused in one line: a page that encoded text differently from the model's own tokenizer
would explain another input than the user typed."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import XCompileError

NORMALIZER_KEYS = ("clean_text", "handle_chinese_chars", "strip_accents", "lowercase")


def _fail(path: Path, why: str):
    raise XCompileError(f"--tokenizer {path}: {why}; the page encodes WordPiece tokenizer.json files (BERT family)")


def _normalizer(path: Path, norm) -> dict:
    if norm is None:
        return {"clean_text": False, "handle_chinese_chars": False, "strip_accents": False, "lowercase": False}
    if not isinstance(norm, dict) or norm.get("type") != "BertNormalizer":
        kind = norm.get("type") if isinstance(norm, dict) else type(norm).__name__
        _fail(path, f"normalizer {kind!r} is not BertNormalizer")
    out = {k: norm.get(k) for k in NORMALIZER_KEYS}
    if out["strip_accents"] is None:  # BERT's rule: accents go with lower-casing
        out["strip_accents"] = bool(out["lowercase"])
    return {k: bool(v) for k, v in out.items()}


def _template(path: Path, post, vocab: dict) -> tuple:
    """(ids before, ids after) the sequence in a single-sequence encoding."""
    if post is None:
        return [], []
    kind = post.get("type") if isinstance(post, dict) else None
    if kind == "BertProcessing":
        return [int(post["cls"][1])], [int(post["sep"][1])]
    if kind != "TemplateProcessing":
        _fail(path, f"post-processor {kind!r} is neither TemplateProcessing nor BertProcessing")
    before, after, seen = [], [], False
    specials = post.get("special_tokens") or {}
    for piece in post.get("single") or []:
        if "Sequence" in piece:
            seen = True
            continue
        name = piece.get("SpecialToken", {}).get("id")
        ids = (specials.get(name) or {}).get("ids") or ([vocab[name]] if name in vocab else None)
        if not ids:
            _fail(path, f"template token {name!r} has no id")
        (after if seen else before).extend(int(i) for i in ids)
    return before, after


def describe_tokenizer(path: Path) -> dict:
    """The page's tokenizer record (``level`` "wordpiece") from a tokenizer.json."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise XCompileError(f"--tokenizer {path}: not a readable tokenizer.json ({type(e).__name__})") from None
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        kind = model.get("type") if isinstance(model, dict) else None
        _fail(path, f"model type {kind!r}" if kind else "no tokenizer model in it")
    pre = raw.get("pre_tokenizer")
    if not (isinstance(pre, dict) and pre.get("type") == "BertPreTokenizer"):
        _fail(path, f"pre-tokenizer {pre.get('type') if isinstance(pre, dict) else pre!r} is not BertPreTokenizer")
    vocab = {str(k): int(v) for k, v in model["vocab"].items()}
    for t in raw.get("added_tokens") or []:
        vocab.setdefault(t["content"], int(t["id"]))
    size = max(vocab.values()) + 1
    by_id = [""] * size
    for token, i in vocab.items():
        by_id[i] = token
    unk = model.get("unk_token", "[UNK]")
    if unk not in vocab:
        _fail(path, f"unknown token {unk!r} is not in the vocabulary")
    pad = (raw.get("padding") or {}).get("pad_id")
    if pad is None:
        pad = vocab.get("[PAD]", 0)
    before, after = _template(path, raw.get("post_processor"), vocab)
    added = sorted({t["content"] for t in raw.get("added_tokens") or [] if t.get("special") and t["content"]},
                   key=len, reverse=True)
    return {"level": "wordpiece", "vocab": by_id, "unk_id": vocab[unk], "pad_id": int(pad),
            "prefix": model.get("continuing_subword_prefix") or "##",
            "max_chars": int(model.get("max_input_chars_per_word") or 100), **_normalizer(path, raw.get("normalizer")),
            "before": before, "after": after, "added": added}
