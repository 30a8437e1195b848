"""Text-model benchmark: BERT-base shape (random weights, legacy export) — the onnxruntime forward, the compiled
gradient and AttnLRP explainers, and PyTorch's own forward + backward at the embedding (what LXT's AttnLRP costs:
one autograd pass through its modified backward), timed INTERLEAVED in one process so that the load of a shared
machine hits them alike.

    python tools/bench_text.py --batch 4 --length 128 --threads 2 --rounds 5
    python tools/bench_text.py --lengths 64,128,256,512 --batch 4 --rounds 3      # sequence-length scaling
    python tools/bench_text.py --batches 1,8,64 --length 128 --rounds 3          # batch scaling
    python tools/bench_text.py --before /path/to/other/checkout ...              # + that checkout's explainers

Models and explainers are cached in model_zoo/build/bench_text (delete after_L* / before_L* after a code change). `--before DIR` compiles the same
explainers with the xcompile of another checkout (a child process with that checkout on sys.path) and times them
in the same rounds: a before / after table from one run."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "model_zoo" / "build" / "bench_text"
NAMES = ["input_ids", "attention_mask", "token_type_ids"]
METHODS = {"gradient": ("gradient", None), "attnlrp": ("lrp", "attnlrp")}


def build_torch(layers: int = 12, hidden: int = 768, heads: int = 12, seed: int = 0):
    """BERT-base (bert-base-uncased's configuration), random weights, eager attention, 2 labels."""
    import torch
    import transformers as T
    torch.manual_seed(seed)
    cfg = T.BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                       intermediate_size=4 * hidden, num_labels=2, attn_implementation="eager")
    m = T.BertForSequenceClassification(cfg).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


class Wrap:
    """Positional (input_ids, attention_mask, token_type_ids) -> logits (a torch.nn.Module made lazily)."""

    def __new__(cls, m):
        import torch

        class _W(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits
        return _W()


def inputs(batch: int, length: int, vocab: int = 30522, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, (batch, length)).astype(np.int64)
    mask = np.ones((batch, length), np.int64)
    if batch > 1:  # one padded row, as in real batches
        mask[-1, length // 2:] = 0
        ids[-1, length // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros((batch, length), np.int64)}


def export(path: Path, length: int):
    import torch
    path.parent.mkdir(parents=True, exist_ok=True)
    w = Wrap(build_torch())
    args = tuple(torch.from_numpy(v) for v in inputs(2, length).values())
    with torch.no_grad():
        torch.onnx.export(w, args, str(path), dynamo=False, opset_version=17, input_names=NAMES,
                          output_names=["logits"], dynamic_axes={k: {0: "N", 1: "L"} for k in NAMES} | {"logits": {0: "N"}})


def compile_all(root: Path, model: Path, length: int, dest: Path, methods=tuple(METHODS)) -> dict:
    """Compile `methods` with the xcompile found under `root` (a child process: another checkout's code)."""
    dest.mkdir(parents=True, exist_ok=True)
    code = (
        "import sys, json, time; sys.path.insert(0, sys.argv[1]); import xcompile; from xcompile.write.writer import save\n"
        "out = {}\n"
        "for name, (meth, rules) in json.loads(sys.argv[4]).items():\n"
        "    t = time.perf_counter(); m = xcompile.compile(sys.argv[2], meth, rules=rules, input_shape=int(sys.argv[3]))\n"
        "    out[name] = round(time.perf_counter() - t, 2); save(m, sys.argv[5] + '/' + name + '.onnx')\n"
        "print('@@' + json.dumps(out))\n")
    todo = {k: v for k, v in METHODS.items() if k in methods and not (dest / f"{k}.onnx").exists()}
    if not todo:
        return {}
    p = subprocess.run([sys.executable, "-c", code, str(root), str(model), str(length), json.dumps(todo), str(dest)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(root)))
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("@@")), None)
    if line is None:
        raise SystemExit(f"compiling with {root} failed:\n{p.stderr[-3000:]}")
    return json.loads(line[2:])


def ort_session(path, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def torch_fwd_bwd(threads: int):
    """PyTorch forward + backward to the embedding output (LXT's AttnLRP cost: one autograd pass)."""
    import torch
    torch.set_num_threads(threads)
    m = build_torch()
    words = m.get_input_embeddings()

    def call(feeds, target):
        ids, mask, tt = (torch.from_numpy(feeds[k]) for k in NAMES)
        e = words(ids).detach().requires_grad_(True)  # the token embeddings E, as xcompile explains them
        logits = m(inputs_embeds=e, attention_mask=mask, token_type_ids=tt).logits
        g, = torch.autograd.grad(logits.gather(1, torch.from_numpy(target)[:, None]).sum(), e)
        return (e * g).sum(-1).detach().numpy()
    return call


def measure(batch: int, length: int, threads: int, rounds: int, before: Path | None, torch_ref: bool,
            before_methods=tuple(METHODS), methods=tuple(METHODS)) -> dict:
    model = OUT / "bert_base.onnx"  # dynamic batch and length: one export for every length
    if not model.exists():
        export(model, length)
    comp = {"after": compile_all(ROOT, model, length, OUT / f"after_L{length}", methods)}
    if before is not None:
        comp["before"] = compile_all(before, model, length, OUT / f"before_L{length}", before_methods)
    feeds = inputs(batch, length)
    sessions = {"forward": ort_session(model, threads)}
    for tag in comp:
        for k in (methods if tag == "after" else before_methods):
            sessions[f"{k} {tag}"] = ort_session(OUT / f"{tag}_L{length}" / f"{k}.onnx", threads)
    target = np.argmax(sessions["forward"].run(None, feeds)[0], 1).astype(np.int64)
    calls = {"forward": lambda: sessions["forward"].run(None, feeds)}
    for k, s in sessions.items():
        if k != "forward":
            calls[k] = (lambda s=s: s.run(None, {**feeds, "target": target}))
    if torch_ref:
        ref = torch_fwd_bwd(threads)
        calls["pytorch forward+backward"] = lambda: ref(feeds, target)
    for f in calls.values():  # warm-up
        f()
    times = {k: [] for k in calls}
    for _ in range(rounds):
        for k, f in calls.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"batch": batch, "length": length, "threads": threads, "rounds": rounds, "median_s": med,
            "compile_s": comp, "loadavg": os.getloadavg()[0]}


def report(r: dict) -> str:
    med, fwd = r["median_s"], r["median_s"]["forward"]
    lines = [f"BERT-base b={r['batch']} L={r['length']} threads={r['threads']} rounds={r['rounds']} "
             f"load {r['loadavg']:.1f}"]
    for k, v in med.items():
        extra = ""
        if k.startswith("attnlrp") and "pytorch forward+backward" in med:
            extra = f"  PyTorch fwd+bwd / this {med['pytorch forward+backward'] / v:.2f}"
        lines.append(f"  {k:28s} {v:.3f} s  / forward {v / fwd:.2f}{extra}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", default=None, help="comma list: batch scaling at --length")
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--lengths", default=None, help="comma list: sequence-length scaling at --batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", default=None, help="another checkout whose xcompile compiles the 'before' explainers")
    ap.add_argument("--methods", default=",".join(METHODS), help="the explainers to time (fewer sessions: less memory)")
    ap.add_argument("--before-methods", default=",".join(METHODS),
                    help="the --before explainers to time (e.g. attnlrp where the gradient's graph is the same)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch forward+backward reference")
    ap.add_argument("--json", default=None, help="append the raw results to this JSON-lines file")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    before = Path(a.before).resolve() if a.before else None
    grid = ([(int(b), a.length) for b in a.batches.split(",")] if a.batches else
            [(a.batch, int(n)) for n in a.lengths.split(",")] if a.lengths else [(a.batch, a.length)])
    for batch, length in grid:
        r = measure(batch, length, a.threads, a.rounds, before, not a.no_torch, tuple(a.before_methods.split(",")),
                    tuple(a.methods.split(",")))
        print(report(r), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
