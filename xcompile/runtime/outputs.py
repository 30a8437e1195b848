"""What `xcompile run` may write into ``--out``, decided before anything is written.

* Row names are unique by construction (``unique_names``): ``a.npy`` with two rows gives ``a_0``, ``a_1``; an
  image ``a_0.png`` beside it becomes ``a_0-2`` rather than overwriting ``a_0``'s results.
* ``guarded_results``: no output may be an input of the run (always refused, ``--overwrite`` or not), and a file
  already in ``--out`` is replaced only if an earlier run wrote it (it is listed in the folder's ``_COMPLETE``) or
  with ``--overwrite``. The check covers every name a row may produce, so the refusal comes before any write.
* ``class_label`` / ``score_of``: the class a row explains as printed (with its name when the model has class
  names), for explainers with [N, C] scores and for one-score explainers (neuralized: [N] or [N, 1]).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from ..errors import XCompileError, clean
from ..files import COMPLETE

ROW_FILES = ("_relevance.npy", "_heatmap.png", "_heatmap.html", "_words.html", "_relevance.png")  # .png: tabular bars


def unique_names(names: list) -> list:
    """``names`` with later duplicates renamed NAME-2, NAME-3, ... (never equal to any other name)."""
    taken, out = set(names), []
    seen: set = set()
    for n in names:
        if n in seen:
            k = 2
            while f"{n}-{k}" in taken:
                k += 1
            n = f"{n}-{k}"
            taken.add(n)
        seen.add(n)
        out.append(n)
    return out


def _inputs(specs, batch) -> list[Path]:
    paths = []
    for spec in specs or []:
        s = str(spec)
        p = Path(s.split("=", 1)[1]) if "=" in s and not Path(s).exists() else Path(s)
        if p.is_dir():
            with contextlib.suppress(OSError):
                paths += [q for q in p.iterdir() if q.is_file()]
        elif p.exists():
            paths.append(p)
    return paths


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def guarded_results(out, specs, overwrite: bool, batch):
    """Check (and fix) what ``write_results`` will write for ``batch`` into ``out``; then let it write."""
    batch.names[:] = unique_names(list(batch.names))
    out = Path(out)
    ours: set = set()
    marker = out / COMPLETE
    if marker.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            ours = {line.strip() for line in marker.read_text(encoding="utf-8").splitlines() if line.strip()}
    targets = [out / f"{n}{suffix}" for n in batch.names for suffix in ROW_FILES] + [out / "scores.npy", out / "relevance.csv", marker]
    inputs = _inputs(specs, batch)
    for t in targets:
        if not (t.exists() or t.is_symlink()):
            continue
        if any(_same(t, i) for i in inputs):
            raise XCompileError(f"--out {clean(out)}: would overwrite the input {clean(t)}; choose another --out folder")
        if t.name not in ours and t != marker and not overwrite:
            raise XCompileError(f"--out {clean(out)}: {clean(t.name)} exists and no earlier run wrote it; choose another "
                                "--out folder or pass --overwrite")
    yield


def class_names(ex) -> list | None:
    """Class names from the explainer's metadata (`ExplainerMeta.class_names`), else None."""
    meta = getattr(ex, "meta", None)
    names = None if meta is None else meta.class_names
    return [str(n) for n in names] if isinstance(names, list) else None


def class_label(ex, cls) -> str:
    k = int(np.asarray(cls).reshape(-1)[0])
    names = class_names(ex)
    return f"{k} ({clean(names[k])})" if names and 0 <= k < len(names) else str(k)


def row_scores(res) -> list:
    """Per row, the scores printed: the explainer's ``explained_score`` when it has one (neuralized), else its
    scores."""
    explained = res.extras.get("explained_score") if hasattr(res, "extras") else None
    return list(np.asarray(explained if explained is not None else res.scores))


def score_of(score, cls) -> float:
    """The explained class's score in one row's scores ([C], or one score for a one-output explainer)."""
    s = np.asarray(score).reshape(-1)
    k = int(np.asarray(cls).reshape(-1)[0])
    return float(s[k]) if s.size > 1 and 0 <= k < s.size else float(s[0])
