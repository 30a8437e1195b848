"""Token vocabularies for token-id explainers: id -> display string, text lines -> ids, sub-word pieces -> words.

Two kinds, behind one ``Vocabulary`` interface (``load_vocabulary(path)``):

* a Hugging Face ``tokenizer.json`` (the ``tokenizers`` package, extra ``xcompile[text]``): ``Tokenizer.encode``
  gives ids, the attention mask, token type ids and each token's word (``word_ids``), which the word-level
  heatmap sums over;
* a plain id -> string vocabulary: a JSON list of strings, or an object with a ``"vocab"`` list (and optionally
  ``pad_id``, ``unk_id``, ``"level": "char"`` and ``"lowercase"``, as ``xcompile/data/langid_cnn.json`` has),
  or an object mapping token -> id. Such a vocabulary shows token strings; it encodes text only when it is a
  character vocabulary (``"level": "char"``: one id per character).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import XCompileError

# markers sub-word tokenizers put on a token that starts a word: byte-level BPE (GPT-2, RoBERTa) and SentencePiece
WORD_START = ("\u0120", "\u2581")
PAD_NAMES = ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>")


@dataclass
class Encoded:
    """Text lines encoded to the explainer's length L: ids, attention mask, type ids [N, L] int64 and, per row,
    each token's word index (None: special or padding token) and the word strings."""
    ids: np.ndarray
    mask: np.ndarray
    type_ids: np.ndarray
    word_ids: list
    words: list


class Vocabulary:
    """id -> display string; ``pad_id`` (None if unknown); ``encode(lines, length)``; ``word_ids(ids)``."""
    pad_id: int | None = None
    size: int = 0

    def token(self, i: int) -> str:
        raise NotImplementedError

    def tokens(self, ids) -> list[str]:
        return [self.token(int(i)) for i in np.asarray(ids).reshape(-1)]

    def encode(self, lines: list[str], length: int, where: str) -> Encoded:
        raise NotImplementedError

    def word_ids(self, ids) -> list:
        """Each token's word index from the token strings alone (ids given without their text); None: special."""
        return [None] * len(ids)

    def check_ids(self, ids: np.ndarray, where: str) -> None:
        if self.size and ids.size and int(ids.max()) >= self.size:
            raise XCompileError(f"{where}: token id {int(ids.max())} is not in the vocabulary ({self.size} tokens)")


class PlainVocabulary(Vocabulary):
    def __init__(self, strings: list[str], pad_id=None, unk_id=None, char_level: bool = False,
                 lowercase: bool = False, where: str = "vocabulary"):
        if not strings or not all(isinstance(s, str) for s in strings):
            raise XCompileError(f"{where}: a vocabulary is a non-empty list of token strings")
        self.strings, self.size = list(strings), len(strings)
        self.pad_id, self.unk_id = pad_id, unk_id
        self.char_level, self.lowercase, self.where = char_level, lowercase, where
        self.index = {s: i for i, s in enumerate(self.strings) if i not in (pad_id, unk_id)}

    def token(self, i: int) -> str:
        return self.strings[i] if 0 <= i < self.size else f"<{i}>"

    def encode(self, lines, length, where):
        if not self.char_level:
            raise XCompileError(f"{where}: {self.where} is a plain vocabulary; encoding text needs a tokenizer.json "
                                "(or a character vocabulary with \"level\": \"char\"); give token ids as .npy instead")
        if self.pad_id is None or self.unk_id is None:
            raise XCompileError(f"{self.where}: a character vocabulary needs pad_id and unk_id to encode text")
        ids = np.full((len(lines), length), self.pad_id, np.int64)
        for r, line in enumerate(lines):
            text = line.lower() if self.lowercase else line
            row = [self.index.get(c, self.unk_id) for c in text[:length]]
            ids[r, :len(row)] = row
        mask = (ids != self.pad_id).astype(np.int64)
        word_ids = [[0 if m else None for m in row] for row in mask]  # one line = one word of characters
        return Encoded(ids, mask, np.zeros_like(ids), word_ids, [[line] for line in lines])


class TokenizerVocabulary(Vocabulary):
    def __init__(self, path: Path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise XCompileError(f"{path}: reading a tokenizer.json needs the 'tokenizers' package "
                                "(pip install 'xcompile[text]')") from None
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the Rust side raises plain Exceptions
            raise XCompileError(f"{path}: not a readable tokenizer.json ({' '.join(str(e).split())[:160]})") from None
        self.where, self.size = str(path), self.tok.get_vocab_size(with_added_tokens=True)
        pad = (self.tok.padding or {}).get("pad_id")
        if pad is None:
            pad = next((self.tok.token_to_id(n) for n in PAD_NAMES if self.tok.token_to_id(n) is not None), None)
        self.pad_id = pad
        self.special = {i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}
        self.prefix = getattr(self.tok.model, "continuing_subword_prefix", None)  # WordPiece "##"

    def token(self, i: int) -> str:
        s = self.tok.id_to_token(i)
        return s if s is not None else f"<{i}>"

    def encode(self, lines, length, where):
        tok = self.tok
        pad = self.pad_id if self.pad_id is not None else 0
        tok.enable_padding(length=length, pad_id=pad, pad_token=self.token(pad))
        tok.enable_truncation(max_length=length)
        try:
            enc = tok.encode_batch(lines)
        except Exception as e:  # noqa: BLE001
            raise XCompileError(f"{where}: the tokenizer {self.where} cannot encode it ({str(e)[:160]})") from None
        ids = np.asarray([e.ids for e in enc], np.int64).reshape(len(lines), length)
        mask = np.asarray([e.attention_mask for e in enc], np.int64).reshape(ids.shape)
        types = np.asarray([e.type_ids for e in enc], np.int64).reshape(ids.shape)
        word_ids, words = [], []
        for line, e in zip(lines, enc):
            spans: dict[int, list[int]] = {}
            for w, (a, b) in zip(e.word_ids, e.offsets):
                if w is not None:
                    spans.setdefault(w, [a, b])[1] = b
            n = max(spans, default=-1) + 1
            word_ids.append(list(e.word_ids))
            words.append([line[spans[w][0]:spans[w][1]] if w in spans else "" for w in range(n)])
        return Encoded(ids, mask, types, word_ids, words)

    def word_ids(self, ids) -> list:
        out, word = [], -1
        for i in np.asarray(ids).reshape(-1).tolist():
            s = self.token(i)
            if i in self.special or i == self.pad_id:
                out.append(None)
                continue
            continues = (s.startswith(self.prefix) if self.prefix
                         else not s.startswith(WORD_START) and out and out[-1] is not None)
            word = word if continues and word >= 0 else word + 1
            out.append(word)
        return out

    def piece(self, s: str) -> str:
        """A token's text inside its word (no continuation prefix, no word-start marker)."""
        if self.prefix and s.startswith(self.prefix):
            return s[len(self.prefix):]
        return s[1:] if s.startswith(WORD_START) else s


def load_vocabulary(path) -> Vocabulary:
    """A tokenizer.json (has a "model" entry) or a plain vocabulary JSON (see the module docstring)."""
    from ..guards import regular_file
    from ..options import check_memory
    path = regular_file(path, "--tokenizer")
    check_memory(path.stat().st_size * 20, f"--tokenizer {path}")  # parsed JSON takes ~10-20x its text
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise XCompileError(f"--tokenizer {path}: not a JSON file ({type(e).__name__})") from None
    if isinstance(data, dict) and "model" in data:
        return TokenizerVocabulary(path)
    return plain_vocabulary(data, where=str(path))


MAX_VOCAB = 10_000_000  # token ids; the largest real vocabularies have ~10^6 entries


def plain_vocabulary(data, where: str = "vocabulary") -> PlainVocabulary:
    """From a list of strings, {"vocab": [...], "pad_id", "unk_id", "level", "lowercase"}, or {token: id}."""
    if isinstance(data, dict) and "vocab" in data:
        return PlainVocabulary(data["vocab"], data.get("pad_id"), data.get("unk_id"), data.get("level") == "char",
                               bool(data.get("lowercase")), where)
    if isinstance(data, dict) and data and all(isinstance(v, int) and v >= 0 for v in data.values()):
        top = max(data.values())
        if top >= MAX_VOCAB or top >= 100 * len(data) + 1000:  # ids far beyond the entries: a table of placeholders
            raise XCompileError(f"{where}: token id {top} for {len(data)} tokens; ids must be below "
                                f"{min(MAX_VOCAB, 100 * len(data) + 1000)} (a vocabulary maps tokens to 0..size-1)")
        strings = [f"<{i}>" for i in range(max(data.values()) + 1)]
        for s, i in data.items():
            strings[i] = s
        pad = next((data[n] for n in PAD_NAMES if n in data), None)
        return PlainVocabulary(strings, pad, None, False, False, where)
    if isinstance(data, list):
        return PlainVocabulary(data, None, None, False, False, where)
    raise XCompileError(f"{where}: expected a tokenizer.json, a list of token strings, "
                        "an object with a \"vocab\" list, or an object mapping token -> id")


def words_of(vocab: Vocabulary | None, ids, word_ids=None, words=None):
    """-> (word index per token or None, word strings), or None without a tokenizer (no word-level view)."""
    if not isinstance(vocab, TokenizerVocabulary):
        return None
    ids = np.asarray(ids).reshape(-1)
    wid = list(word_ids) if word_ids is not None else vocab.word_ids(ids)
    if words is None:
        n = max((w for w in wid if w is not None), default=-1) + 1
        parts = [[] for _ in range(n)]
        for i, w in zip(ids.tolist(), wid):
            if w is not None:
                parts[w].append(vocab.piece(vocab.token(i)))
        words = ["".join(p) for p in parts]
    return wid, list(words)


def sum_words(relevance, word_ids, n_words: int) -> np.ndarray:
    """Word relevance = the sum of its pieces' relevance (tokens without a word are left out)."""
    out = np.zeros(n_words, np.float64)
    for r, w in zip(np.asarray(relevance, np.float64).reshape(-1), word_ids):
        if w is not None:
            out[w] += r
    return out
