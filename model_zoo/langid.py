"""Train the shipped character-level language identifier (en / de / fr / es) on Debian's word lists.

    python model_zoo/langid.py [--out DIR] [--no-ship] [--epochs 12]

Data: /usr/share/dict/{american-english,ngerman,french,spanish} (Debian packages wamerican, wngerman, wfrench,
wspanish). Words are lower-cased; words with anything but letters (apostrophes, hyphens, digits), of fewer than 2
or more than 16 letters, and every word that occurs in more than one list ("radio", "taxi", "general") are
dropped; each language then contributes the same number of words (seeded sample), split 85 % / 15 % into
training and held-out words.

Model (a text CNN: every xcompile method, LRP included, has rules for its ops):
    ids [N, 16] int64 -> Embedding(V, 24, padding row 0 = zeros) -> Conv1d(24, 96, k=3, pad=1) -> ReLU
    -> max over time (ReduceMax) -> Linear(96, 4) -> scores (logits)
The padding embedding is the zero vector, so padding positions carry no relevance under input x gradient,
integrated gradients from baseline_token=0 and LRP (relevance at E is proportional to E).

Writes DIR/langid_cnn.onnx (legacy exporter, opset 17, input 'chars' int64 [N, 16], output 'scores' [N, 4]) and
ships (unless --no-ship) xcompile/data/langid_cnn.onnx, langid_cnn.json (vocabulary, classes, accuracy, how it was
trained, a few example words) and langid_cnn_heldout.npz (every held-out word: words_utf8 = the words joined by
"\\n" as UTF-8 bytes, y labels).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from model_zoo.zoo import BUILD, DATA, normalize_onnx, quiet, sha256  # noqa: E402

DICT = Path("/usr/share/dict")
LISTS = {"en": "american-english", "de": "ngerman", "fr": "french", "es": "spanish"}
CLASSES = list(LISTS)
MAX_LEN = 16
PAD, UNK = 0, 1
PER_CLASS = 24000   # words per language before the split (Spanish has ~70k usable words: every list has enough)
HELDOUT = 0.15
SEED = 0


def read_words(path: Path) -> set[str]:
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        w = line.strip().lower()
        if 2 <= len(w) <= MAX_LEN and w.isalpha():
            out.add(w)
    return out


def dataset(dict_dir: Path = DICT):
    """-> (words, labels) balanced over the four languages, words unique to one list, in a seeded order."""
    missing = [n for n in LISTS.values() if not (dict_dir / n).is_file()]
    if missing:
        raise SystemExit(f"{dict_dir}: missing word lists {missing} (apt-get install wamerican wngerman wfrench wspanish)")
    sets = {lang: read_words(dict_dir / name) for lang, name in LISTS.items()}
    seen: dict[str, int] = {}
    for s in sets.values():
        for w in s:
            seen[w] = seen.get(w, 0) + 1
    rng = np.random.default_rng(SEED)
    words, labels = [], []
    for k, lang in enumerate(CLASSES):
        unique = sorted(w for w in sets[lang] if seen[w] == 1)
        pick = rng.choice(len(unique), size=min(PER_CLASS, len(unique)), replace=False)
        words += [unique[i] for i in sorted(pick)]
        labels += [k] * len(pick)
        print(f"  {lang}: {len(sets[lang])} words, {len(unique)} in no other list, {len(pick)} used")
    order = rng.permutation(len(words))
    return [words[i] for i in order], np.asarray(labels, np.int64)[order]


def make_vocab(words, min_count: int = 20) -> list[str]:
    """Index 0 = padding, 1 = unknown, then every letter seen at least ``min_count`` times in training, sorted."""
    counts: dict[str, int] = {}
    for w in words:
        for c in w:
            counts[c] = counts.get(c, 0) + 1
    return ["<pad>", "<unk>"] + sorted(c for c, n in counts.items() if n >= min_count)


def encode(words, vocab) -> np.ndarray:
    index = {c: i for i, c in enumerate(vocab) if i > UNK}
    x = np.full((len(words), MAX_LEN), PAD, np.int64)
    for r, w in enumerate(words):
        ids = [index.get(c, UNK) for c in w[:MAX_LEN]]
        x[r, :len(ids)] = ids
    return x


def build_model(vocab_size: int):
    import torch
    from torch import nn

    class LangIdCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab_size, 24, padding_idx=PAD)
            self.conv = nn.Conv1d(24, 96, kernel_size=3, padding=1)
            self.fc = nn.Linear(96, len(CLASSES))

        def forward(self, chars):
            e = self.embed(chars).transpose(1, 2)          # [N, D, L]
            h = torch.relu(self.conv(e))
            return self.fc(h.amax(dim=2))                  # max over time

    return LangIdCNN()


def train(x, y, vocab_size: int, epochs: int, verbose: bool = False):
    import torch

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    model = build_model(vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(SEED)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        total = 0.0
        for i in range(0, len(xt), 256):
            idx = perm[i:i + 256]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        if verbose:
            print(f"    epoch {epoch + 1}: loss {total / len(xt):.4f}")
    return model.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(BUILD / "langid"))
    ap.add_argument("--no-ship", action="store_true", help="do not copy into xcompile/data")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    import onnx
    import onnxruntime as ort
    import torch

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    words, y = dataset()
    n_test = int(round(HELDOUT * len(words)))
    w_tr, y_tr, w_te, y_te = words[n_test:], y[n_test:], words[:n_test], y[:n_test]
    vocab = make_vocab(w_tr)
    x_tr, x_te = encode(w_tr, vocab), encode(w_te, vocab)
    print(f"vocabulary: {len(vocab)} symbols; {len(w_tr)} training, {len(w_te)} held-out words")
    model = train(x_tr, y_tr, len(vocab), args.epochs, args.verbose)
    with torch.no_grad():
        ref = model(torch.from_numpy(x_te)).numpy()
        acc_tr = float((model(torch.from_numpy(x_tr)).argmax(1).numpy() == y_tr).mean())
    acc = float((ref.argmax(1) == y_te).mean())
    per_class = {c: round(float((ref.argmax(1)[y_te == k] == k).mean()), 4) for k, c in enumerate(CLASSES)}
    print(f"accuracy: training {acc_tr:.4f}, held-out {acc:.4f} {per_class} ({time.perf_counter() - t0:.1f} s)")

    path = out / "langid_cnn.onnx"
    with quiet():
        torch.onnx.export(model, (torch.from_numpy(x_te[:2]),), str(path), dynamo=False, opset_version=17,
                          do_constant_folding=True, input_names=["chars"], output_names=["scores"],
                          dynamic_axes={"chars": {0: "N"}, "scores": {0: "N"}})
    normalize_onnx(path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    got = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"chars": x_te})[0]
    oacc = float((got.argmax(1) == y_te).mean())
    print(f"{path.name}: {path.stat().st_size} bytes, onnxruntime held-out accuracy {oacc:.4f}, "
          f"max |ort - torch| {np.abs(got - ref).max():.2e}, ops {sorted({n.op_type for n in onnx.load(str(path)).graph.node})}")
    assert abs(oacc - acc) <= 1.0 / len(y_te), (oacc, acc)

    if not args.no_ship:
        assert path.stat().st_size < 150_000
        shutil.copyfile(path, DATA / "langid_cnn.onnx")
        # words as one UTF-8 byte string ("\n"-separated): a quarter of the size of a unicode array, no pickle
        np.savez_compressed(DATA / "langid_cnn_heldout.npz", y=y_te.astype(np.int8),
                            words_utf8=np.frombuffer("\n".join(w_te).encode("utf-8"), np.uint8))
        # examples: the first held-out words of each language that the model classifies correctly
        pred = got.argmax(1)
        examples = {c: [w_te[i] for i in np.flatnonzero((y_te == k) & (pred == k))[:3]] for k, c in enumerate(CLASSES)}
        meta = {
            "input_name": "chars",
            "output_name": "scores",
            "input_shape": ["N", MAX_LEN],
            "classes": CLASSES,
            "class_names": {"en": "English", "de": "German", "fr": "French", "es": "Spanish"},
            "vocab": vocab,
            "pad_id": PAD,
            "unk_id": UNK,
            "max_len": MAX_LEN,
            "level": "char",
            "lowercase": True,
            "encoding": "lower-case the word, one id per character (vocab index; unknown characters -> unk_id), "
                        "truncate to max_len, pad with pad_id on the right",
            "heldout_accuracy": round(acc, 6),
            "heldout_accuracy_per_class": per_class,
            "heldout_words": len(w_te),
            "training_words": len(w_tr),
            "examples": examples,
            "source": "model_zoo/langid.py: Debian word lists (wamerican, wngerman, wfrench, wspanish), lower-cased "
                      "letters-only words of 2-16 characters found in exactly one list, 24000 per language "
                      f"(seed {SEED}), 15 % held out; Embedding(24) -> Conv1d(96, k=3) -> ReLU -> max over time -> "
                      f"Linear(4); Adam lr 3e-3, cosine schedule, {args.epochs} epochs, batch 256, torch seed {SEED}",
        }
        (DATA / "langid_cnn.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        for f in ("langid_cnn.onnx", "langid_cnn.json", "langid_cnn_heldout.npz"):
            print(f"shipped {DATA / f} ({(DATA / f).stat().st_size} bytes) sha256 {sha256(DATA / f)[:16]}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
