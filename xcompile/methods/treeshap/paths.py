"""Root-to-leaf paths of a tree ensemble as fixed-size tables (the per-path formulation of GPUTreeShap, Mitchell et
al. 2022): per path its unique features (padded to the longest path with neutral elements: every value inside,
zero fraction 1, so that they change nothing), each with the interval of values that follows the path, where NaN
goes, and its zero fraction; per path the leaf's raw value per class."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ensemble import Ensemble


@dataclass
class PathTable:
    feature: np.ndarray     # [P, D] int64
    lo: np.ndarray          # [P, D] float32, -inf where unbounded
    lo_closed: np.ndarray   # [P, D] bool: x >= lo (else x > lo)
    hi: np.ndarray          # [P, D] float32, +inf where unbounded
    hi_closed: np.ndarray   # [P, D] bool: x <= hi (else x < hi)
    nan_one: np.ndarray     # [P, D] float64: 1 where a missing value follows the path on this feature
    zero: np.ndarray        # [P, D] float64 zero fractions
    value: np.ndarray       # [P, C] float64 leaf values per class (sign and AVERAGE applied)
    expected: np.ndarray    # [C] expected raw score under the covers (base included)
    depth: int              # D

    @property
    def n_paths(self) -> int:
        return self.feature.shape[0]


# split mode, branch taken -> (bound side, closed)
_BOUND = {("BRANCH_LEQ", True): ("hi", True), ("BRANCH_LEQ", False): ("lo", False),
          ("BRANCH_LT", True): ("hi", False), ("BRANCH_LT", False): ("lo", True),
          ("BRANCH_GTE", True): ("lo", True), ("BRANCH_GTE", False): ("hi", False),
          ("BRANCH_GT", True): ("lo", False), ("BRANCH_GT", False): ("hi", True)}


def _tighten(el: dict, side: str, t: float, closed: bool) -> dict:
    el = dict(el)
    cur, cur_closed = el[side], el[side + "_closed"]
    tighter = t < cur if side == "hi" else t > cur
    if tighter:
        el[side], el[side + "_closed"] = t, closed
    elif t == cur:
        el[side + "_closed"] = cur_closed and closed
    return el


def tree_paths(tree: dict) -> list:
    """[(elements {feature: element}, leaf node)] of one tree, depth first."""
    out = []
    stack = [(tree["root"], {})]
    cover = tree["cover"]
    while stack:
        k, elements = stack.pop()
        if tree["mode"][k] == "LEAF":
            out.append((elements, k))
            continue
        f, t, mode = int(tree["feature"][k]), float(tree["value"][k]), tree["mode"][k]
        for branch, child in ((True, tree["true"][k]), (False, tree["false"][k])):
            el = elements.get(f, dict(lo=-np.inf, lo_closed=True, hi=np.inf, hi_closed=True, nan=1.0, zero=1.0))
            side, closed = _BOUND[(mode, branch)]
            el = _tighten(el, side, t, closed)
            el["nan"] = el["nan"] * float(bool(tree["missing_true"][k]) == branch)
            el["zero"] = el["zero"] * cover[child] / cover[k]
            stack.append((child, {**elements, f: el}))
    return out


def path_table(ens: Ensemble) -> PathTable:
    paths = []
    for tree in ens.trees:
        for elements, leaf in tree_paths(tree):
            paths.append((elements, tree["leaf_value"][leaf]))
    P = len(paths)
    D = max(1, max(len(e) for e, _ in paths))
    tab = dict(feature=np.zeros((P, D), np.int64), lo=np.full((P, D), -np.inf, np.float32),
               lo_closed=np.ones((P, D), bool), hi=np.full((P, D), np.inf, np.float32), hi_closed=np.ones((P, D), bool),
               nan_one=np.ones((P, D)), zero=np.ones((P, D)))
    value = np.zeros((P, ens.n_classes))
    for p, (elements, leaf_value) in enumerate(paths):
        for d, f in enumerate(sorted(elements)):
            el = elements[f]
            tab["feature"][p, d] = f
            tab["lo"][p, d], tab["lo_closed"][p, d] = el["lo"], el["lo_closed"]
            tab["hi"][p, d], tab["hi_closed"][p, d] = el["hi"], el["hi_closed"]
            tab["nan_one"][p, d], tab["zero"][p, d] = el["nan"], el["zero"]
        value[p] = leaf_value[ens.column] * ens.sign + ens.leaf_offset
    expected = value.T @ tab["zero"].prod(axis=1) + ens.base
    return PathTable(value=value, expected=expected, depth=D, **tab)


def quadrature(depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1], exact for polynomials of degree < depth: the Shapley weight
    |S|! (d - |S| - 1)! / d! is the integral over [0, 1] of t^|S| (1 - t)^(d - 1 - |S|), so the SHAP value of element i
    is v (o_i - z_i) * integral of prod_{j != i} (z_j (1 - t) + o_j t) dt, a polynomial of degree d - 1 in t."""
    q = max(1, (depth + 1) // 2)
    t, w = np.polynomial.legendre.leggauss(q)
    return (t + 1) / 2, w / 2


def one_fractions(tab: PathTable, x: np.ndarray) -> np.ndarray:
    """[N, P, D] float64: 1 where row x's value of the element's feature follows the path (NaN: where it goes)."""
    xv = x[:, tab.feature].astype(np.float32)
    lower = np.where(tab.lo_closed, xv >= tab.lo, xv > tab.lo)
    upper = np.where(tab.hi_closed, xv <= tab.hi, xv < tab.hi)
    return np.where(np.isnan(xv), tab.nan_one, (lower & upper).astype(np.float64))


def reference_shap(tab: PathTable, x: np.ndarray, cls: int) -> np.ndarray:
    """numpy TreeSHAP from the same tables (tests compare it with the emitted graph and with shap)."""
    t, w = quadrature(tab.depth)
    o = one_fractions(tab, x)
    f = o[..., None] * t + tab.zero[..., None] * (1 - t)
    s = (f.prod(axis=2, keepdims=True) / f) @ w
    phi = s * (o - tab.zero) * tab.value[:, cls][None, :, None]
    out = np.zeros(x.shape, np.float64)
    for n in range(x.shape[0]):
        np.add.at(out[n], tab.feature.ravel(), phi[n].ravel())
    return out
