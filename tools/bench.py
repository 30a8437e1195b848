"""Throughput benchmark: compiled xcompile explainers vs the ONNX forward pass, Zennit, Captum and DIANNA.

    python tools/bench.py                                   # the full grid (hours on a small CPU)
    python tools/bench.py --models resnet50,mobilenet_v2,efficientnet_lite0 --batches 1,8 --threads 2
    python tools/bench.py --device cuda --threads 8         # GPU: Explainer(device="cuda"), torch .cuda()
    python tools/bench.py --quick                           # one small model, batch 1, few repeats
    python tools/bench.py --models digits_cnn --frameworks ort,xcompile   # any ONNX file: name=path.onnx

Every measurement runs in its own child process (so the peak-memory numbers do not mix, and one failure or
out-of-memory kill does not end the run): load, warm up, then time `--repeats` calls (fewer when a call is slow,
see `--budget`) and keep the median. Memory: VmRSS before the first call and the peak VmHWM over the warm-up
and the timed calls (the kernel's high-water mark is reset first through /proc/self/clear_refs); on CUDA the
device memory (torch.cuda.max_memory_allocated for PyTorch; used device memory before/after for onnxruntime,
whose arena keeps its peak).

Frameworks, per (model, batch, method):
  ort       forward-only onnxruntime session of the original model (method "forward")
  xcompile  xcompile.Explainer(explainer.onnx, threads=N, device=...).explain(x, target)
  zennit    PyTorch eager + Zennit: Gradient / SmoothGrad / IntegratedGradients attributors; LRP through the
            EpsilonPlusFlat / EpsilonGammaBox composites with the canonizers of tests/lrp_helpers.py
  captum    Saliency, IntegratedGradients (riemann_right, internal_batch_size = batch x chunk),
            NoiseTunnel(Saliency) smoothgrad (nt_samples_batch_size = chunk)
  dianna    RISE and LIME (DIANNA's defaults) on the original ONNX file, batch 1, for --dianna-model only;
            run with --dianna-python (DIANNA installed in a separate environment)

Outputs: raw JSON model_zoo/build/bench/results_<device>.json (appended as measurements finish; --resume skips
the ones done), docs/benchmarks.md (--md) and docs/img/bench_<device>.png (--plot).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "model_zoo" / "build" / "bench"

MODELS = ("resnet50", "vgg16", "densenet121", "mobilenet_v2", "efficientnet_lite0", "vit_b_16")
METHODS = ("gradient", "integrated_gradients", "smoothgrad", "lrp-epsilon-plus-flat", "lrp-epsilon-gamma-box",
           "patternattribution")
FRAMEWORKS = ("ort", "xcompile", "zennit", "captum", "dianna")
IG_STEPS, SG_SAMPLES, SG_NOISE = 32, 16, 0.1
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TF_NORM = ((127.0 / 255,) * 3, (128.0 / 255,) * 3)  # EfficientNet-Lite0's own preprocessing, see model_zoo/zoo.py
# which reference implements which method
HAS = {"zennit": set(METHODS) - {"patternattribution"},
       "captum": {"gradient", "integrated_gradients", "smoothgrad"}}
# Zennit's CNN composites (EpsilonPlusFlat, EpsilonGammaBox) have no rules for attention: no LRP reference for ViT
NO_REFERENCE = {("vit_b_16", "zennit", "lrp-epsilon-plus-flat"), ("vit_b_16", "zennit", "lrp-epsilon-gamma-box")}


# ============================================================================================ model preparation
def normalization(name: str):
    if name == "efficientnet_lite0":
        return TF_NORM
    if name in MODELS:
        return IMAGENET
    return None  # custom ONNX files: inputs taken as raw values in [0, 1]


def make_input(name: str, shape, batch: int, seed: int = 0) -> np.ndarray:
    """Random pixels in [0, 1], normalized as the model expects (so the z^B bounds are honest)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch,) + tuple(shape)).astype(np.float32)
    norm = normalization(name)
    if norm is not None:
        mean, std = (np.array(v, np.float32).reshape(3, 1, 1) for v in norm)
        x = (x - mean) / std
    return x.astype(np.float32)


def torch_model(name: str):
    """The PyTorch model whose ONNX export is benchmarked (same weights, same function)."""
    from model_zoo import zoo
    if name == "efficientnet_lite0":
        return zoo.efficientnet_lite0_torch().eval()
    if name == "vit_b_16":  # the zoo shrinks ViTs to 64x64 for the tests; benchmarked at its real 224x224
        import torch
        import torchvision
        torch.manual_seed(0)
        m = torchvision.models.vit_b_16(weights=None).eval()
        with torch.no_grad():  # zero-initialized head / class token would make every logit 0: seeded values
            for p in m.parameters():
                if p.dim() >= 2 and not p.any():
                    p.normal_(0.0, 1.0 / np.sqrt(np.prod(p.shape[1:])))
                p.requires_grad_(False)
        return m
    m = zoo.torch_model(name)
    if name.startswith(("densenet", "mobilenet_v2")):
        # functional relu/pool tail -> modules (same function), so that Zennit's composites reach it
        sys.path.insert(0, str(ROOT / "tests"))
        import lrp_helpers as H
        m = H._Tail(m.features, H.ModuleTail(relu=name.startswith("densenet")), m.classifier).eval()
    for p in m.parameters():
        p.requires_grad_(False)  # input gradients only, like the compiled explainers
    return m


def model_path(name: str, custom: dict) -> Path:
    return Path(custom[name]) if name in custom else OUT / f"{name}.onnx"


def export_model(name: str, custom: dict) -> dict:
    """Export (cached) the model at 224x224 with the legacy exporter (dynamo=False, opset 17), dynamic batch."""
    path = model_path(name, custom)
    rec = {"model": name, "onnx": str(path)}
    if name in custom:
        return rec
    if not path.exists():
        import torch

        from model_zoo import zoo
        t0 = time.perf_counter()
        x = torch.from_numpy(make_input(name, (3, 224, 224), 2))
        zoo.export_onnx(torch_model(name), x, path, "legacy", dynamic_batch=True)
        rec["export_s"] = round(time.perf_counter() - t0, 2)
    return rec


def input_shape(path: Path):
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    d = next(i for i in m.graph.input if i.name not in inits)
    return tuple(int(v.dim_value) for v in d.type.tensor_type.shape.dim[1:])


def compile_args(name: str, method: str, chunk: int, patterns: Path | None):
    """(method, rules, params) for xcompile.compile."""
    if method == "gradient":
        return "gradient", None, {}
    if method == "integrated_gradients":
        return "integrated_gradients", None, {"steps": IG_STEPS, "chunk": chunk}
    if method == "smoothgrad":
        return "smoothgrad", None, {"samples": SG_SAMPLES, "noise_level": SG_NOISE, "chunk": chunk}
    if method == "lrp-epsilon-plus-flat":
        return "lrp", "epsilon-plus-flat", {}
    if method == "lrp-epsilon-gamma-box":
        norm = normalization(name)
        extra = {"low": "0", "high": "1"}
        if norm is not None:
            extra.update(mean=",".join(map(str, norm[0])), std=",".join(map(str, norm[1])))
        return "lrp", "epsilon-gamma-box", extra
    if method == "patternattribution":
        return "patternattribution", None, {"patterns": str(patterns)}
    raise ValueError(method)


def fit_patterns(name: str, path: Path, rows: int, threads: int) -> dict:
    """PatternAttribution needs fitted patterns: fit them on `rows` random images (timing only; a real use
    fits on training data)."""
    from xcompile.patterns.fit import fit_file
    out = OUT / f"{name}.patterns.npz"
    rec = {"patterns": str(out), "fit_rows": rows}
    if out.exists():
        return rec
    data = OUT / f"{name}.fitdata.npy"
    np.save(data, make_input(name, input_shape(path), rows, seed=123))
    t0 = time.perf_counter()
    fit_file(str(path), str(data), str(out), batch_size=4, progress=False)
    rec["fit_s"] = round(time.perf_counter() - t0, 2)
    data.unlink()
    return rec


def compile_explainer(name: str, method: str, path: Path, chunk: int, patterns, threads: int = 1) -> dict:
    import xcompile
    from xcompile.write.writer import save
    dest = OUT / f"{name}__{method}.onnx"
    rec = {"model": name, "method": method, "explainer": str(dest), "model_bytes": path.stat().st_size}
    meth, rules, params = compile_args(name, method, chunk, patterns)
    t0 = time.perf_counter()
    m = xcompile.compile(str(path), meth, rules=rules, **params)
    rec["compile_s"] = round(time.perf_counter() - t0, 2)
    save(m, dest)
    rec["explainer_bytes"] = dest.stat().st_size
    rec["explainer_nodes"], rec["model_nodes"] = len(m.graph.node), _n_nodes(path)
    del m
    t0 = time.perf_counter()
    _ort_session(dest, threads, "cpu")  # session creation: where onnxruntime folds the weights derived in the graph
    rec["session_s"] = round(time.perf_counter() - t0, 2)
    return rec


def _n_nodes(path):
    import onnx
    return len(onnx.load(str(path), load_external_data=False).graph.node)


# ============================================================================================ one measurement
def _mem():
    """(VmRSS, VmHWM) in MiB from /proc/self/status."""
    v = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            v[line.split(":")[0]] = int(line.split()[1]) / 1024
    return v.get("VmRSS", 0.0), v.get("VmHWM", 0.0)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _gpu_used_mib():
    try:
        import torch
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20
    except Exception:  # noqa: BLE001
        return None


def _ort_session(path, threads, device):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    prov = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=prov)


def _setup(job):
    """-> (callable doing one timed call, info dict). Everything not in the callable is untimed."""
    fw, device, threads, batch = job["framework"], job["device"], job["threads"], job["batch"]
    name, path = job["model"], Path(job["onnx"])
    x = make_input(name, input_shape(path), batch)
    info = {}
    if fw == "ort":
        sess = _ort_session(path, threads, device)
        iname = sess.get_inputs()[0].name
        t = np.argmax(sess.run(None, {iname: x})[0], 1)
        return (lambda: sess.run(None, {iname: x})), info, t
    # predicted classes (untimed); every framework explains the same targets
    t = None
    if fw != "dianna":
        s0 = _ort_session(path, threads, "cpu")
        t = np.argmax(s0.run(None, {s0.get_inputs()[0].name: x})[0], 1)
        del s0
    if fw == "xcompile":
        import xcompile
        ex = xcompile.Explainer(job["explainer"], threads=threads, device=device)
        tt = t.astype(np.int64)
        info["providers"] = ex.session.get_providers()
        return (lambda: ex.explain(x, tt).relevance), info, t
    if fw in ("zennit", "captum"):
        import torch
        torch.set_num_threads(threads)
        dev = torch.device(device)
        model = torch_model(name).to(dev)
        tt = torch.as_tensor(t, device=dev)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def to_dev():
            return torch.from_numpy(x).to(dev)

        if fw == "zennit":
            fn = _zennit(job, model, tt, to_dev)
        else:
            fn = _captum(job, model, tt, to_dev, x)

        def call():
            r = fn()
            sync()
            return r.detach().cpu().numpy()
        return call, info, t
    if fw == "dianna":
        return _dianna(job, x[0]), info, None
    raise ValueError(fw)


def _zennit(job, model, tt, to_dev):
    import torch
    from zennit import attribution as A
    method, name = job["method"], job["model"]
    ncls = None

    def onehot(y):
        return torch.nn.functional.one_hot(tt, y.shape[1]).to(y)

    if method.startswith("lrp-"):
        sys.path.insert(0, str(ROOT / "tests"))
        import lrp_helpers as H
        rs = method[4:]
        if rs == "epsilon-gamma-box":
            mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in normalization(name))
            shape = (job["batch"],) + tuple(input_shape(Path(job["onnx"])))
            low, high = ((0 - mean) / std).expand(shape).to(tt.device), ((1 - mean) / std).expand(shape).to(tt.device)
            from zennit import composites as C
            comp = C.EpsilonGammaBox(low=low.contiguous(), high=high.contiguous(),
                                     canonizers=H.canonizers_for(name, model))
        else:
            comp = H.zennit_composite(rs, H.canonizers_for(name, model), None)
        attr = A.Gradient(model=model, composite=comp)
        out_fn = (lambda y: onehot(y) * y)  # relevance seed = the target score
    elif method == "gradient":
        attr, out_fn = A.Gradient(model=model), onehot
    elif method == "integrated_gradients":
        attr, out_fn = A.IntegratedGradients(model=model, n_iter=IG_STEPS), onehot
    elif method == "smoothgrad":
        attr, out_fn = A.SmoothGrad(model=model, noise_level=SG_NOISE, n_iter=SG_SAMPLES), onehot
    else:
        raise NotImplementedError(method)
    del ncls
    attr.__enter__()  # keeps the composite's hooks registered for the life of this child process

    def fn():
        return attr(to_dev(), out_fn)[1]
    return fn


def _captum(job, model, tt, to_dev, x):
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
    method, chunk, n = job["method"], job["chunk"], job["batch"]
    if method == "gradient":
        s = Saliency(model)
        return lambda: s.attribute(to_dev(), target=tt, abs=False)
    if method == "integrated_gradients":
        ig = IntegratedGradients(model)
        return lambda: ig.attribute(to_dev(), target=tt, n_steps=IG_STEPS, method="riemann_right",
                                    internal_batch_size=n * chunk)
    if method == "smoothgrad":
        nt = NoiseTunnel(Saliency(model))
        sd = float(SG_NOISE * (x.max() - x.min()))  # Captum takes one sigma (xcompile/Zennit: per sample)
        return lambda: nt.attribute(to_dev(), nt_type="smoothgrad", nt_samples=SG_SAMPLES, stdevs=sd, target=tt,
                                    nt_samples_batch_size=chunk, abs=False)
    raise NotImplementedError(method)


def _dianna(job, image):
    import dianna
    path = job["onnx"]
    kind = job["method"]
    s0 = _ort_session(path, job["threads"], "cpu")
    label = int(np.argmax(s0.run(None, {s0.get_inputs()[0].name: image[None]})[0]))
    if kind == "rise":
        return lambda: dianna.explain_image(path, image, method="RISE", labels=[label], axis_labels={0: "channels"})
    if kind == "lime":
        return lambda: dianna.explain_image(path, image, method="LIME", labels=[label], axis_labels={0: "channels"},
                                            num_samples=5000, random_state=0)
    raise ValueError(kind)


def run_job(job) -> dict:
    """In the child process: set up, warm up, time; memory around all calls."""
    res = {"status": "ok"}
    os.environ.setdefault("OMP_NUM_THREADS", str(job["threads"]))
    try:
        t0 = time.perf_counter()
        fn, info, target = _setup(job)
        res.update(info)
        res["setup_s"] = round(time.perf_counter() - t0, 2)
        cuda = job["device"] == "cuda"
        if cuda and job["framework"] in ("zennit", "captum"):
            import torch
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        gpu0 = _gpu_used_mib() if cuda else None
        rss0, setup_hwm = _mem()  # setup_hwm: the peak while loading (session creation folds derived weights)
        res["peak_reset"] = _reset_peak()
        times, cpu = [], []
        t_w = time.perf_counter()
        for _ in range(job["warmup"]):
            out = fn()
        first = time.perf_counter() - t_w
        # slow calls: fewer repeats, so that one measurement stays within --budget seconds
        per = first / max(job["warmup"], 1)
        reps = max(1, min(job["repeats"], int(job["budget"] / max(per, 1e-9))))
        for _ in range(reps):
            t1, c1 = time.perf_counter(), time.process_time()
            out = fn()
            times.append(time.perf_counter() - t1)
            cpu.append(time.process_time() - c1)
        rss1, hwm = _mem()
        res.update(times=[round(v, 5) for v in times], median_s=float(np.median(times)), repeats=reps,
                   cpu_s=float(np.median(cpu)), loadavg=os.getloadavg()[0],
                   warmup_s=round(first, 3), rss_before_mib=round(rss0, 1), peak_rss_mib=round(hwm, 1),
                   peak_delta_mib=round(max(hwm - rss0, 0.0), 1), setup_peak_mib=round(setup_hwm, 1),
                   peak_total_mib=round(max(setup_hwm, hwm), 1))
        if cuda:
            if job["framework"] in ("zennit", "captum"):
                import torch
                res["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            else:
                g1 = _gpu_used_mib()
                if g1 is not None and gpu0 is not None:
                    res["gpu_peak_mib"] = round(g1 - gpu0, 1)  # the ORT arena keeps its high-water mark
        res["images_per_s"] = job["batch"] / res["median_s"]
        if job.get("save_relevance") and out is not None and job["framework"] in ("xcompile", "zennit", "captum"):
            np.save(job["save_relevance"], np.asarray(out, np.float32)[0])
    except Exception as e:  # noqa: BLE001
        res = {"status": "error", "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:400],
               "traceback": traceback.format_exc()[-2000:]}
    return res


def spawn(job, python: str, timeout: float) -> dict:
    """Run one measurement in a child process; returns its result dict (or why there is none)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), MKL_NUM_THREADS=str(job["threads"]),
               PYTHONWARNINGS="ignore")
    try:
        p = subprocess.run([python, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s (--timeout)"}
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("@@RESULT ")), None)
    if line is None:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        why = "killed (out of memory?)" if p.returncode in (-9, 137) else f"exit {p.returncode}"
        return {"status": "error", "error": f"child {why}: {' | '.join(tail)[:400]}"}
    return json.loads(line[len("@@RESULT "):])


# ============================================================================================ the device
def device_info(device: str, threads: int) -> dict:
    import onnxruntime
    import torch
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.processor())
    info = {"device": device, "cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads,
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "ort_providers": onnxruntime.get_available_providers()}
    from importlib import metadata
    for mod in ("zennit", "captum", "onnx", "xcompile", "dianna"):
        try:
            info[mod] = metadata.version(mod)
        except Exception:  # noqa: BLE001
            info[mod] = None
    try:
        info["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ============================================================================================ orchestration
def main(argv=None) -> int:
    global OUT
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--run-throughput"]:  # `xcompile run` rows/s on the shipped digits (tools/bench_run.py)
        import importlib.util
        spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).with_name("bench_run.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.main(args[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma list of " + ", ".join(MODELS) + " or NAME=PATH.onnx (any ONNX classifier)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--frameworks", default="ort,xcompile,zennit,captum,dianna")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8),
                    help="onnxruntime intra-op threads = torch.set_num_threads (default: cores, at most 8)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds of timed calls per measurement; slow calls get fewer repeats (at least 1)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a measurement is abandoned")
    ap.add_argument("--chunk", type=int, default=4,
                    help="IG steps / SmoothGrad samples per forward pass: xcompile chunk=, Captum internal batch "
                         "= batch x chunk (bounds memory; all at once for batch 32 x 32 steps needs tens of GB)")
    ap.add_argument("--fit-rows", type=int, default=16, help="random images for the PatternAttribution patterns")
    ap.add_argument("--dianna-model", default="mobilenet_v2", help="model for the DIANNA RISE/LIME baseline")
    ap.add_argument("--dianna-python", default=os.environ.get("DIANNA_PYTHON", sys.executable),
                    help="python with dianna installed (default: this one)")
    ap.add_argument("--quick", action="store_true",
                    help="mobilenet_v2 (unless --models), batch 1, 2 repeats, no DIANNA, no markdown")
    ap.add_argument("--resume", action="store_true", help="keep the measurements already in the JSON")
    ap.add_argument("--out", default=str(OUT), help="build folder: exported models, explainers, patterns, JSON")
    ap.add_argument("--json", default=None, help="raw results (default model_zoo/build/bench/results_<device>.json)")
    ap.add_argument("--md", default=None, help="write the markdown report here (e.g. docs/benchmarks.md)")
    ap.add_argument("--plot", default=None, help="write the plot here (e.g. docs/img/bench_cpu.png)")
    ap.add_argument("--report", action="store_true", help="only rewrite --md/--plot from the JSON (no measuring)")
    ap.add_argument("--merge", default="", help="with --report: comma list of other results JSONs whose runs are "
                                                  "added (e.g. a DIANNA run made separately)")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        job = json.loads(a.worker)
        res = run_job(job)
        print("@@RESULT " + json.dumps(res), flush=True)
        return 0

    OUT = Path(a.out)
    if a.quick:
        if a.models == ",".join(MODELS):
            a.models = "mobilenet_v2"
        a.batches, a.repeats = "1", min(a.repeats, 2)
        a.frameworks = ",".join(f for f in a.frameworks.split(",") if f != "dianna")
    custom = {}
    models = []
    for tok in a.models.split(","):
        name, _, p = tok.partition("=")
        if p:
            custom[name] = p
        elif name not in MODELS:
            ap.error(f"unknown model {name!r}: one of {', '.join(MODELS)} or NAME=PATH.onnx")
        models.append(name)
    methods = a.methods.split(",")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}: {', '.join(METHODS)}")
    frameworks = a.frameworks.split(",")
    batches = [int(b) for b in a.batches.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    jpath = Path(a.json or OUT / f"results_{a.device}.json")
    data = json.loads(jpath.read_text()) if ((a.resume or a.report) and jpath.exists()) else {}
    if a.report:
        for extra in filter(None, a.merge.split(",")):
            other = json.loads(Path(extra).read_text())
            have = {(r["model"], r["batch"], r["method"], r["framework"]) for r in data["runs"]}
            data["runs"] += [r for r in other["runs"] if (r["model"], r["batch"], r["method"], r["framework"]) not in have]
        if a.md:
            write_markdown(data, Path(a.md), Path(a.plot) if a.plot else None)
        if a.plot:
            plot(data, Path(a.plot))
        return 0
    data["device_info"] = device_info(a.device, a.threads)
    data["command"] = a.command or "python tools/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data["settings"] = {"ig_steps": IG_STEPS, "sg_samples": SG_SAMPLES, "chunk": a.chunk, "repeats": a.repeats,
                        "warmup": a.warmup, "budget_s": a.budget}
    data.setdefault("models", {})
    data.setdefault("runs", [])
    done = {(r["model"], r["batch"], r["method"], r["framework"]) for r in data["runs"] if r.get("status") == "ok"}
    data["runs"] = [r for r in data["runs"] if r.get("status") == "ok"]

    def save():
        jpath.write_text(json.dumps(data, indent=1))

    def log(*s):
        print(*s, flush=True)

    for name in models:
        mrec = data["models"].setdefault(name, {})
        try:
            mrec.update(export_model(name, custom))
        except Exception as e:  # noqa: BLE001
            mrec["error"] = f"export: {type(e).__name__}: {e}"[:300]
            log(name, mrec["error"])
            continue
        path = Path(mrec["onnx"])
        mrec["model_bytes"] = path.stat().st_size
        mrec["input_shape"] = list(input_shape(path))
        mrec.setdefault("explainers", {})
        patterns = None
        if "patternattribution" in methods and "xcompile" in frameworks:
            try:
                mrec.update(fit_patterns(name, path, a.fit_rows, a.threads))
                patterns = Path(mrec["patterns"])
            except Exception as e:  # noqa: BLE001
                mrec["patterns_error"] = f"{type(e).__name__}: {e}"[:300]
                log(name, "patterns:", mrec["patterns_error"])
        if "xcompile" in frameworks:
            for method in methods:
                rec = mrec["explainers"].get(method)
                if rec and Path(rec.get("explainer", "")).exists() and rec.get("chunk") == a.chunk:
                    continue
                if method == "patternattribution" and patterns is None:
                    mrec["explainers"][method] = {"error": "no patterns: " + mrec.get("patterns_error", "")}
                    continue
                try:
                    rec = compile_explainer(name, method, path, a.chunk, patterns, a.threads)
                    rec["chunk"] = a.chunk
                except Exception as e:  # noqa: BLE001
                    rec = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
                mrec["explainers"][method] = rec
                log(f"compile {name} {method}: {rec.get('compile_s', rec.get('error'))} s, "
                    f"{rec.get('explainer_bytes', 0) / 2**20:.1f} MiB")
                save()
        save()

        def measure(batch, method, fw, extra=None):
            key = (name, batch, method, fw)
            if key in done:
                return
            job = {"model": name, "onnx": str(path), "batch": batch, "method": method, "framework": fw,
                   "device": a.device, "threads": a.threads, "repeats": a.repeats, "warmup": a.warmup,
                   "budget": a.budget, "chunk": a.chunk, **(extra or {})}
            if batch == 1 and fw in ("xcompile", "zennit", "captum"):
                (OUT / "relevance").mkdir(exist_ok=True)
                job["save_relevance"] = str(OUT / "relevance" / f"{name}__{method}__{fw}.npy")
            python = a.dianna_python if fw == "dianna" else sys.executable
            t0 = time.perf_counter()
            res = spawn(job, python, a.timeout)
            rec = {k: job[k] for k in ("model", "batch", "method", "framework", "device", "threads")}
            rec.update(res)
            rec["wall_s"] = round(time.perf_counter() - t0, 1)
            data["runs"].append(rec)
            save()
            log(f"{name:18s} b={batch:<3d} {method:24s} {fw:9s} " +
                (f"{rec['images_per_s']:9.2f} img/s  median {rec['median_s']:.3f} s x{rec['repeats']}  "
                 f"peak +{rec['peak_delta_mib']:.0f} MiB" if rec["status"] == "ok" else "ERROR " + rec["error"]))

        for batch in batches:
            if "ort" in frameworks:
                measure(batch, "forward", "ort")
            for method in methods:
                if "xcompile" in frameworks:
                    ex = mrec["explainers"].get(method, {})
                    if "explainer" in ex:
                        measure(batch, method, "xcompile", {"explainer": ex["explainer"]})
                for fw in ("zennit", "captum"):
                    if fw in frameworks and method in HAS[fw] and name not in custom \
                            and (name, fw, method) not in NO_REFERENCE:
                        measure(batch, method, fw)
        if "dianna" in frameworks and name == a.dianna_model:
            for kind in ("rise", "lime"):
                measure(1, kind, "dianna", {"repeats": 1, "warmup": 0 if a.warmup == 0 else 0})
    add_agreement(data, set(models))
    save()
    log("wrote", jpath)
    if a.md:
        write_markdown(data, Path(a.md), Path(a.plot) if a.plot else None)
        log("wrote", a.md)
    if a.plot:
        plot(data, Path(a.plot))
        log("wrote", a.plot)
    return 0


def add_agreement(data, models):
    """Pearson r of the batch-1 relevance of xcompile vs each reference (is the comparison like for like?)."""
    rel = OUT / "relevance"
    data.setdefault("agreement", {})
    for name in models:
        for method in METHODS:
            ours = rel / f"{name}__{method}__xcompile.npy"
            if not ours.exists():
                continue
            a = np.load(ours).ravel().astype(np.float64)
            for fw in ("zennit", "captum"):
                ref = rel / f"{name}__{method}__{fw}.npy"
                if ref.exists():
                    b = np.load(ref).ravel().astype(np.float64)
                    if a.shape == b.shape and a.std() > 0 and b.std() > 0:
                        data["agreement"][f"{name}|{method}|{fw}"] = round(float(np.corrcoef(a, b)[0, 1]), 5)


# ============================================================================================ report
def _runs(data):
    return {(r["model"], r["batch"], r["method"], r["framework"]): r for r in data["runs"]}


def _fmt(v, nd=1):
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.{max(nd, 2)}f}"


def _peak(r) -> str:
    """Peak RSS of the measuring process over session creation and every call (older results: calls only)."""
    v = r.get("peak_total_mib", r.get("peak_rss_mib"))
    return "–" if v is None else f"{v:.0f}"


def results_table(data) -> list[str]:
    R = _runs(data)
    agree = data.get("agreement", {})
    lines = ["| model | batch | method | xcompile img/s | explainer / forward time | ÷ gradient time "
             "| xcompile peak RSS MiB (session + calls) | ÷ gradient peak | Zennit img/s | xcompile ÷ Zennit "
             "| Captum img/s | xcompile ÷ Captum | peak ΔRSS MiB xcompile / Zennit / Captum | r vs Zennit / Captum |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    models = list(data.get("models", {}))
    batches = sorted({r["batch"] for r in data["runs"]})
    for name in models:
        for b in batches:
            fwd = R.get((name, b, "forward", "ort"))
            if fwd and fwd["status"] == "ok":
                lines.append(f"| {name} | {b} | *forward (ORT)* | *{_fmt(fwd['images_per_s'])}* | 1 | | "
                             f"{_peak(fwd)} | | | | | | {fwd['peak_delta_mib']:.0f} | |")
            grad = R.get((name, b, "gradient", "xcompile"))
            grad = grad if grad and grad["status"] == "ok" else None
            for method in METHODS:
                cells = {fw: R.get((name, b, method, fw)) for fw in ("xcompile", "zennit", "captum")}
                if not any(cells.values()):
                    continue

                def ips(fw):
                    r = cells[fw]
                    if r is None:
                        return "n/a" if method not in HAS.get(fw, METHODS) else "–"
                    return _fmt(r["images_per_s"]) if r["status"] == "ok" else "error"

                xc = cells["xcompile"]
                ok = xc is not None and xc["status"] == "ok"
                ratio_f = f"{xc['median_s'] / fwd['median_s']:.1f}" if ok and fwd and fwd["status"] == "ok" else "–"
                ratio_g = f"{xc['median_s'] / grad['median_s']:.2f}" if ok and grad else "–"
                peak_g = (f"{xc['peak_total_mib'] / grad['peak_total_mib']:.2f}"
                          if ok and grad and xc.get("peak_total_mib") and grad.get("peak_total_mib") else "–")

                def speed(fw):
                    r = cells[fw]
                    if not ok or r is None or r["status"] != "ok":
                        return "–"
                    return f"**{r['median_s'] / xc['median_s']:.2f}×**"

                mem = " / ".join(f"{cells[fw]['peak_delta_mib']:.0f}" if cells[fw] and cells[fw]["status"] == "ok"
                                 else "–" for fw in ("xcompile", "zennit", "captum"))
                rr = " / ".join(f"{agree[k]:.3f}" if (k := f"{name}|{method}|{fw}") in agree else "–"
                                for fw in ("zennit", "captum")) if b == 1 else ""
                lines.append(f"| {name} | {b} | {method} | {ips('xcompile')} | {ratio_f} | {ratio_g} | "
                             f"{_peak(xc) if ok else '–'} | {peak_g} | {ips('zennit')} | "
                             f"{speed('zennit')} | {ips('captum')} | {speed('captum')} | {mem} | {rr} |")
    return lines


def compile_table(data) -> list[str]:
    lines = ["| model | original MB | method | compile s | session creation s | explainer MB | explainer ÷ original size "
             "| nodes (original → explainer) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in data.get("models", {}).items():
        for method, e in m.get("explainers", {}).items():
            if "error" in e:
                lines.append(f"| {name} | {m['model_bytes'] / 1e6:.1f} | {method} | error: {e['error'][:120]} | | | | |")
                continue
            sess = f"{e['session_s']:.2f}" if "session_s" in e else "–"
            lines.append(f"| {name} | {m['model_bytes'] / 1e6:.1f} | {method} | {e['compile_s']:.1f} | {sess} | "
                         f"{e['explainer_bytes'] / 1e6:.1f} | {e['explainer_bytes'] / m['model_bytes']:.2f} | "
                         f"{e['model_nodes']} → {e['explainer_nodes']} |")
    return lines


def dianna_section(data) -> list[str]:
    R = _runs(data)
    rows = [r for r in data["runs"] if r["framework"] == "dianna"]
    if not rows:
        return []
    out = ["", "## Perturbation baseline: DIANNA (RISE, LIME) on the same ONNX file", "",
           "| model | method | seconds per image | status | xcompile gradient / LRP ε+♭ at batch 1: times faster |",
           "|---|---|---|---|---|"]
    for r in rows:
        g = R.get((r["model"], 1, "gradient", "xcompile"))
        l = R.get((r["model"], 1, "lrp-epsilon-plus-flat", "xcompile"))
        if r["status"] == "ok":
            sp = " / ".join(f"{r['median_s'] / x['median_s']:.0f}×" if x and x["status"] == "ok" else "–" for x in (g, l))
            out.append(f"| {r['model']} | {r['method'].upper()} (DIANNA defaults) | {r['median_s']:.1f} | ok | {sp} |")
        else:
            out.append(f"| {r['model']} | {r['method'].upper()} | – | `{r['error'][:200]}` | |")
    return out


def errors_list(data) -> list[str]:
    out = []
    for r in data["runs"]:
        if r["status"] != "ok" and r["framework"] != "dianna":
            out.append(f"- {r['model']} batch {r['batch']} {r['method']} {r['framework']}: `{r['error']}`")
    return out


def write_markdown(data, path: Path, plot_path: Path | None):
    d = data["device_info"]
    s = data["settings"]
    lines = ["# Benchmarks", "", "Generated by `tools/bench.py`; raw numbers in `model_zoo/build/bench/results_<device>.json`.", "",
             "```", data["command"], "```", "",
             f"Device: {d['device']}, {d.get('gpu') or d['cpu']} ({d['cpu_count']} logical cores, {d.get('mem_total_gib', '?')} GiB), "
             f"{d['threads']} threads (ORT intra-op, torch.set_num_threads); onnxruntime {d['onnxruntime']}, torch {d['torch']}, "
             f"zennit {d['zennit']}, captum {d['captum']}, onnx {d['onnx']}, Python {d['python']}.", "",
             f"IG {s['ig_steps']} steps, SmoothGrad {s['sg_samples']} samples (noise 0.1), {s['chunk']} steps/samples per "
             f"forward pass (xcompile `chunk`, Captum `internal_batch_size = batch × chunk`); median of up to "
             f"{s['repeats']} calls after {s['warmup']} warm-up call(s), fewer when a call is slow (at most "
             f"{s['budget_s']:.0f} s of timed calls, at least one).", ""]
    lines += results_table(data)
    lines += ["", "## Compile time and explainer size", ""] + compile_table(data)
    lines += dianna_section(data)
    errs = errors_list(data)
    if errs:
        lines += ["", "## Failed measurements", ""] + errs
    if plot_path is not None:
        lines += ["", f"![throughput]({os.path.relpath(plot_path, path.parent)})"]
    marker = "<!-- notes: text below this line is kept when tools/bench.py rewrites the file -->"
    notes = ""
    if path.exists() and marker in path.read_text():
        notes = path.read_text().split(marker, 1)[1].lstrip("\n")
    lines += ["", marker, "", notes.rstrip()] if notes else ["", marker]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")


def plot(data, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    R = _runs(data)
    models = list(data.get("models", {}))
    batches = sorted({r["batch"] for r in data["runs"]})
    fws = [("xcompile", "#1f77b4"), ("zennit", "#ff7f0e"), ("captum", "#2ca02c")]
    fig, axes = plt.subplots(len(batches), len(models), figsize=(4.2 * len(models), 3.6 * len(batches)),
                             squeeze=False)
    short = {"gradient": "grad", "integrated_gradients": "IG", "smoothgrad": "SG", "lrp-epsilon-plus-flat": "LRP ε+♭",
             "lrp-epsilon-gamma-box": "LRP εγB", "patternattribution": "PA"}
    for i, b in enumerate(batches):
        for j, name in enumerate(models):
            ax = axes[i][j]
            ms = [m for m in METHODS if any((name, b, m, fw) in R for fw, _ in fws)]
            xs = np.arange(len(ms))
            for k, (fw, col) in enumerate(fws):
                vals = [R[(name, b, m, fw)]["images_per_s"] if (name, b, m, fw) in R and R[(name, b, m, fw)]["status"] == "ok"
                        else 0 for m in ms]
                ax.bar(xs + (k - 1) * 0.27, vals, 0.27, color=col, label=fw)
            fwd = R.get((name, b, "forward", "ort"))
            if fwd and fwd["status"] == "ok":
                ax.axhline(fwd["images_per_s"], color="k", ls="--", lw=1, label="forward (ORT)")
            ax.set_yscale("log")
            ax.set_xticks(xs, [short[m] for m in ms], fontsize=8)
            ax.set_title(f"{name}, batch {b}", fontsize=10)
            if j == 0:
                ax.set_ylabel("images / s (log)")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    d = data["device_info"]
    fig.suptitle(f"{d['device']}: {d.get('gpu') or d['cpu']}, {d['threads']} threads", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
