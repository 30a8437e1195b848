"""Tabular rows for `xcompile run` (docs/tabular.md): `.csv` (a header row gives the feature names) or a 2-D `.npy`
for an explainer whose data input is a feature vector [N, F]; writes ONE `relevance.csv` for the run (row, explained
class, score, one column per feature) and per row a bar chart PNG of the features with the largest |relevance|."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..errors import XCompileError, clean
from ..files import atomic_write, completed_folder
from ..guards import plain_text_plots

TOP = 10


def is_tabular(ex, inputs: list) -> bool:
    """One input file, .csv, or .npy for an explainer whose only data input is [N, F]."""
    if len(inputs) != 1 or "=" in inputs[0]:
        return False
    path = Path(inputs[0])
    if path.suffix.lower() == ".csv":
        return True
    data = [i for i in ex.session.get_inputs() if i.name != "target"]
    return (path.suffix.lower() == ".npy" and len(data) == 1 and len(data[0].shape) == 2
            and "float" in data[0].type)  # [N, L] token ids are not feature rows


def read_rows(path: Path, n_features: int | None) -> tuple[np.ndarray, list]:
    """(float32 [N, F], feature names). CSV: a first row that is not all numbers is the header; empty cells are NaN."""
    if not path.is_file():
        raise XCompileError(f"{path}: no such input file")
    if path.suffix.lower() == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise XCompileError(f"{path}: not a readable .npy array ({type(e).__name__})") from None
        x = x[None] if x.ndim == 1 else x
        names = [f"x{k}" for k in range(x.shape[-1])]
    else:
        rows = [r for r in csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))) if r]
        if not rows:
            raise XCompileError(f"{path}: empty CSV file")
        header = None
        try:
            [float(v) for v in rows[0] if v.strip()]
        except ValueError:
            header, rows = rows[0], rows[1:]
        try:
            x = np.array([[float(v) if v.strip() else np.nan for v in r] for r in rows], np.float64)
        except ValueError as e:
            raise XCompileError(f"{path}: a cell is not a number ({e})") from None
        if x.ndim != 2:
            raise XCompileError(f"{path}: rows of different lengths")
        names = [h.strip() for h in header] if header else [f"x{k}" for k in range(x.shape[1])]
    if x.ndim != 2 or (n_features is not None and x.shape[1] != n_features):
        raise XCompileError(f"{path}: rows of shape {list(x.shape)}; the explainer expects [N, {n_features}]")
    return x.astype(np.float32), names


def write_tabular(out: Path, names: list, x: np.ndarray, res, stem: str) -> list:
    """relevance.csv + one PNG per row; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    cls = np.asarray(res.predicted)
    scores = np.asarray(res.scores)
    rel = np.asarray(res.relevance, np.float64).reshape(len(x), -1)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "explained_class", "score"] + list(names))
    for k in range(len(x)):
        s = scores[k].reshape(-1)
        w.writerow([f"{stem}_{k}", int(cls[k]), f"{float(s[int(cls[k])] if s.size > int(cls[k]) else s[0]):.6g}"]
                   + [f"{v:.6g}" for v in rel[k]])
    with completed_folder(out) as paths:  # _COMPLETE lists the run's files once they are all written
        paths.append(atomic_write(out / "relevance.csv", lambda t: t.write_text(buf.getvalue(), encoding="utf-8")))
        for k in range(len(x)):
            p = out / f"{stem}_{k}_relevance.png"
            _bar_chart(p, names, x[k], rel[k], int(cls[k]))
            paths.append(p)
    return paths


def _bar_chart(path: Path, names: list, x: np.ndarray, r: np.ndarray, cls: int) -> None:
    plt = plain_text_plots()  # feature names from a CSV header are text, never mathtext
    order = np.argsort(-np.abs(r))[:TOP][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(order) + 1.2), dpi=100)
    ax.barh(range(len(order)), r[order], color=["#d62728" if v > 0 else "#1f77b4" for v in r[order]])
    ax.set_yticks(range(len(order)), [f"{names[i]} = {x[i]:.4g}" for i in order], fontsize=8)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_title(f"relevance for class {cls} (top {len(order)} features)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, format="png"))
    plt.close(fig)


def run_tabular(ex, path: str, target: int, out: Path, batch_size: int, echo, overwrite: bool = False) -> None:
    from types import SimpleNamespace

    from .outputs import guarded_results
    shape = [i for i in ex.session.get_inputs() if i.name != "target"][0].shape
    x, names = read_rows(Path(path), shape[1] if isinstance(shape[1], int) else None)
    res = ex.explain(x, target, batch_size=batch_size)
    stem = Path(path).stem
    with guarded_results(out, [path], overwrite, SimpleNamespace(names=[f"{stem}_{k}" for k in range(len(x))])):
        paths = write_tabular(Path(out), names, x, res, stem)  # never over the input or a file no run wrote
    for k, c in enumerate(np.asarray(res.predicted)):
        top = int(np.argmax(np.abs(np.asarray(res.relevance)[k])))
        echo(f"{clean(stem)}_{k}: explained class {int(c)}; top feature {clean(names[top])} "
             f"({float(np.asarray(res.relevance)[k][top]):.4g})")
    echo(f"wrote {len(paths)} files to {out}")
