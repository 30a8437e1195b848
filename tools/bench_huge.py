"""Compile models over protobuf's 2 GiB limit and measure what it costs: compile + save time, peak RSS, and the
bytes of weights written to temporary files while compiling (docs/benchmarks.md, "Huge models").

    python tools/bench_huge.py --model vit_h_14 --image-size 56 --methods gradient,lrp-epsilon-plus-flat \
        --baseline /path/to/old/checkout --work /tmp/huge --md docs/benchmarks.md

Random weights (no download): the torchvision model is exported with the legacy (TorchScript) exporter, which writes
external data over 2 GB; its classification head is re-drawn (torchvision zeroes ViT's, which would make every
gradient 0). Every compile runs in its own process (``--baseline``: the same with that checkout first on the
path), watched: over ``--rss-cap-gb`` it is stopped and reported as such. ``--limit`` lowers
``protobuf_limit.SERIALIZE_LIMIT`` so that a smaller model (vit_b_16) takes the large-model path in both checkouts.
Then each explainer's first ``explain()`` of one row, and the gradient against PyTorch autograd on that row.
Before each heavy step the tool waits until ``--need-gb`` of memory is available (a shared machine)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_huge: begin -->", "<!-- bench_huge: end -->"


def available_gb() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) / 2**20
    return 0.0


def wait_for_memory(need: float) -> None:
    while available_gb() < need:
        time.sleep(10)


def _rss_kb(pid: int) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(args: list, code: Path, env_extra: dict, cap_gb: float, need_gb: float) -> dict:
    """Run ``bench_huge.py _<step> ...`` with ``code`` first on the path; its JSON lines (progress, RESULT) and, when
    it is stopped over ``cap_gb`` or fails, what it had reported up to then."""
    wait_for_memory(need_gb)
    env = {**os.environ, "PYTHONPATH": str(code), **env_extra}
    t0 = time.time()
    p = subprocess.Popen(["nice", "-n", "10", sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    peak, killed = 0, False
    import threading

    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    while p.poll() is None:
        # nice runs python in place (exec): the pid is the interpreter's
        peak = max(peak, _rss_kb(p.pid))
        if peak > cap_gb * 2**20 and not killed:
            p.terminate()
            killed = True
        time.sleep(0.2)
    reader.join()
    events = [json.loads(x[5:]) for x in lines if x.startswith("JSON ")]
    out = next((e for e in events if e.get("result")), {})
    out.update(writes=[e for e in events if e.get("write")], wall_s=round(time.time() - t0, 1),
               polled_peak_gb=round(peak / 2**20, 2), killed=killed, rc=p.returncode)
    if p.returncode and not killed:
        out["error"] = "".join(lines[-5:])[-600:]
    return out


def emit(**kw) -> None:
    print("JSON " + json.dumps(kw), flush=True)


def peak_gb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 2**20
    return 0.0


# ----------------------------------------------------------------------------------------------- child steps
def child_export(name: str, image_size: int, folder: str) -> None:
    import shutil

    import onnx
    import torch
    import torchvision

    torch.manual_seed(0)
    kw = {"image_size": image_size} if name.startswith("vit") else {}
    m = getattr(torchvision.models, name)(**kw).eval()
    head = m.heads.head if hasattr(m, "heads") else m.fc
    torch.nn.init.normal_(head.weight, std=0.02)
    torch.nn.init.normal_(head.bias, std=0.02)
    folder = Path(folder)
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(m, torch.randn(1, 3, image_size, image_size), str(raw / "m.onnx"), dynamo=False, opset_version=17,
                      input_names=["data"], output_names=["scores"], dynamic_axes={"data": {0: "N"}, "scores": {0: "N"}})
    torch.save(m.state_dict(), folder / f"{name}.pt")
    params = sum(p.numel() for p in m.parameters())
    del m
    model = onnx.load(str(raw / "m.onnx"))  # one data file beside the model (the exporter writes one per tensor)
    onnx.save(model, str(folder / f"{name}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{name}.onnx.data", size_threshold=1024)
    shutil.rmtree(raw)
    emit(result=True, params=params)


def child_compile(model: str, method: str, rules: str, out: str) -> None:
    import traceback

    from xcompile import protobuf_limit
    from xcompile.write import writer

    if os.environ.get("XC_LIMIT"):
        protobuf_limit.SERIALIZE_LIMIT = int(float(os.environ["XC_LIMIT"]))
    real = protobuf_limit.save_external

    def spy(m, path, location=None):
        real(m, path, location)
        data = Path(path).parent / (location or Path(path).name + ".data")
        via = [f.name for f in traceback.extract_stack()[:-1] if "xcompile" in f.filename]
        emit(write=True, bytes=data.stat().st_size if data.exists() else 0, final=via[-1:] == ["save"],
             via="/".join(via[-3:]), t=round(time.time() - t0, 1), rss_gb=round(_rss_kb(os.getpid()) / 2**20, 2))

    protobuf_limit.save_external = spy
    if hasattr(writer, "save_external"):
        writer.save_external = spy
    import xcompile

    t0 = time.time()
    exp = xcompile.compile(model, method, **({"rules": rules} if rules != "-" else {}))
    t1 = time.time()
    writer.save(exp, out)
    emit(result=True, compile_s=round(t1 - t0, 1), save_s=round(time.time() - t1, 1), peak_gb=round(peak_gb(), 2))


def child_explain(path: str, shape: str, rel_out: str) -> None:
    import numpy as np

    import xcompile

    x = np.random.default_rng(0).standard_normal((1, *map(int, shape.split("x")))).astype(np.float32)
    t0 = time.time()
    e = xcompile.Explainer(path)
    t1 = time.time()
    r = e.explain(x)
    np.save(rel_out, r.relevance)
    emit(result=True, load_s=round(t1 - t0, 1), explain_s=round(time.time() - t1, 1), peak_gb=round(peak_gb(), 2),
         predicted=int(r.predicted[0]))


def child_torch(name: str, image_size: int, folder: str, rel: str) -> None:
    import numpy as np
    import torch
    import torchvision

    kw = {"image_size": image_size} if name.startswith("vit") else {}
    m = getattr(torchvision.models, name)(**kw).eval()
    m.load_state_dict(torch.load(Path(folder) / f"{name}.pt", mmap=True), assign=True)
    x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size)).astype(np.float32)
    x = torch.tensor(x, requires_grad=True)
    y = m(x)
    y[0, int(y.argmax(1))].backward()
    g, r = x.grad.numpy(), np.load(rel)
    emit(result=True, max_abs_diff=float(np.abs(g - r).max()), rel_to_max=float(np.abs(g - r).max() / np.abs(g).max()))


# ----------------------------------------------------------------------------------------------- report
def gb(n) -> str:
    return f"{n / 1e9:.2f}"


def row(r: dict) -> str:
    temp = [w for w in r["writes"] if not w["final"]]
    temp_txt = f"{len(temp)} × {gb(temp[0]['bytes'])} GB = {gb(sum(w['bytes'] for w in temp))} GB" if temp else "0"
    if r.get("killed"):
        where = temp[-1]["via"] if temp else "?"
        return (f"| {r['code']} | {r['method']} | stopped at {r['wall_s']} s | > {r['polled_peak_gb']} (cap) | {temp_txt} "
                f"(then stopped; last write in {where}) |")
    if r.get("error"):
        return f"| {r['code']} | {r['method']} | failed | – | {temp_txt} |"
    return (f"| {r['code']} | {r['method']} | {r['compile_s']} + {r['save_s']} | {r['peak_gb']} | {temp_txt} |")


def markdown(res: dict, command: str) -> str:
    lines = [BEGIN, "", f"### Huge models: {res['model']}", "",
             "Generated by `tools/bench_huge.py` (random weights, legacy exporter):", "", "```", command, "```", "",
             f"{res['model']} (image size {res['image_size']}): {res['params'] / 1e6:.0f} M parameters, weights file "
             f"{gb(res['data_bytes'])} GB{res['limit_note']}; {res['machine']}.", "",
             "| code | method | compile + save s | peak RSS GiB | weights written to temporary files |", "|---|---|---|---|---|"]
    lines += [row(r) for r in res["compile"]]
    if res.get("explain"):
        lines += ["", "First `Explainer(path).explain()` of one row (a fresh process; onnxruntime reads the data file "
                  "itself):", "", "| method | session s | explain s | peak RSS GiB |", "|---|---|---|---|"]
        lines += [f"| {m} | {e.get('load_s', '–')} | {e.get('explain_s', '–')} | {e.get('peak_gb', '–')} |"
                  for m, e in res["explain"].items()]
    if res.get("torch"):
        t = res["torch"]
        lines += ["", f"Gradient vs PyTorch autograd on that row: max |difference| {t['max_abs_diff']:.3g} "
                  f"({t['rel_to_max']:.2g} of the largest gradient entry)."]
    if res.get("same"):
        lines += ["", "Relevance of the baseline's and this checkout's explainers on that row: " + res["same"] + "."]
    return "\n".join(lines + ["", END])


def write_md(path: Path, section: str, model: str) -> None:
    """Replace this model's section (or append it) between the markers; everything else is kept (tools/bench.py
    keeps the text below its notes marker)."""
    text = path.read_text() if path.exists() else ""
    blocks, rest, pos = [], [], 0
    while BEGIN in text[pos:]:
        a = text.index(BEGIN, pos)
        b = text.index(END, a) + len(END)
        rest.append(text[pos:a])
        blocks.append(text[a:b])
        pos = b
    rest.append(text[pos:])
    tag = f"### Huge models: {model}\n"
    blocks = [s for s in blocks if tag not in s] + [section]
    path.write_text("".join(rest).rstrip("\n") + "\n\n" + "\n\n".join(blocks) + "\n")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    steps = {"_export": child_export, "_compile": child_compile, "_explain": child_explain, "_torch": child_torch}
    if argv and argv[0] in steps:
        f = steps[argv[0]]
        conv = [int(a) if a.isdigit() else a for a in argv[1:]]
        f(*conv)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_h_14", help="a torchvision classifier (vit_h_14, regnet_y_128gf, vit_b_16)")
    ap.add_argument("--image-size", type=int, default=56)
    ap.add_argument("--methods", default="gradient,lrp-epsilon-plus-flat", help="method or lrp-<rule set>")
    ap.add_argument("--baseline", default=None, help="a checkout of the code to compare with (compiled first)")
    ap.add_argument("--limit", type=float, default=None, help="SERIALIZE_LIMIT in bytes for both checkouts")
    ap.add_argument("--work", default="/tmp/huge", help="model, explainers and relevance files (outside the repo)")
    ap.add_argument("--rss-cap-gb", type=float, default=14.0)
    ap.add_argument("--need-gb", type=float, default=14.0)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--md", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    work = Path(a.work) / a.model
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = work / f"{a.model}.onnx"
    params = None
    if not onnx_path.exists():
        r = run_child(["_export", a.model, str(a.image_size), str(work)], ROOT, {}, 64, a.need_gb)
        if not r.get("result"):
            raise SystemExit(f"export failed: {r}")
        params = r["params"]
    env = {"XC_LIMIT": str(a.limit)} if a.limit else {}
    res = {"model": a.model, "image_size": a.image_size, "params": params or 0, "compile": [], "explain": {},
           "data_bytes": (work / f"{a.model}.onnx.data").stat().st_size,
           "limit_note": f", SERIALIZE_LIMIT lowered to {a.limit:.0e} B" if a.limit else "",
           "machine": f"{os.cpu_count()} logical cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB "
                      "(shared)"}
    codes = ([("before", Path(a.baseline))] if a.baseline else []) + [("after", ROOT)]
    for tag, code in codes:
        for spec in a.methods.split(","):
            method, rules = ("lrp", spec[4:]) if spec.startswith("lrp-") else (spec, "-")
            out = work / f"{tag}__{spec}.onnx"
            r = run_child(["_compile", str(onnx_path), method, rules, str(out)], code, env, a.rss_cap_gb, a.need_gb)
            r.update(code=tag, method=spec, path=str(out))
            res["compile"].append(r)
            print(row(r), flush=True)
    shape = f"3x{a.image_size}x{a.image_size}"
    rels = {}
    for r in res["compile"]:
        if r.get("result") and not r.get("killed"):
            rel = work / f"rel_{r['code']}__{r['method']}.npy"
            e = run_child(["_explain", r["path"], shape, str(rel)], ROOT, {}, a.rss_cap_gb, a.need_gb)
            rels[(r["code"], r["method"])] = rel
            if r["code"] == "after":
                res["explain"][r["method"]] = e
            print("explain", r["code"], r["method"], {k: e.get(k) for k in ("load_s", "explain_s", "peak_gb")}, flush=True)
    if not params:
        import torch  # noqa: F401 - only the count: the state dict saved at export
        res["params"] = sum(v.numel() for v in torch.load(work / f"{a.model}.pt", mmap=True).values())
    if ("after", "gradient") in rels and not a.no_torch:
        t = run_child(["_torch", a.model, str(a.image_size), str(work), str(rels[("after", "gradient")])], ROOT, {},
                      a.rss_cap_gb, a.need_gb)
        if t.get("result"):
            res["torch"] = t
    pairs = [m for (c, m) in rels if c == "before" and ("after", m) in rels]
    if pairs:
        import numpy as np

        same = [m for m in pairs if np.array_equal(np.load(rels[("before", m)]), np.load(rels[("after", m)]))]
        res["same"] = (f"identical for {', '.join(same)}" if same else "") + \
            (f"; different for {', '.join(m for m in pairs if m not in same)}" if len(same) < len(pairs) else "")
    command = "python tools/bench_huge.py " + " ".join(argv)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    if a.md:
        write_md(Path(a.md), markdown(res, command), a.model)
    print(markdown(res, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
