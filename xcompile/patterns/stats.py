"""Pattern statistics: running float64 sums per linear layer that merge by adding (shards), their .npz file
format, and the patterns that follow from them."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import XCompileError
from ..files import write_bytes
from .layers import LinearLayer
from .shrink import shrink

FORMAT = "xcompile-patterns"
VERSION = 1
VEC = ("sy", "sy_pos", "n_pos", "syy", "syy_pos")  # [C] each
MAT = ("sxy", "sxy_pos", "sx_pos")                 # [C, Dg] each


@dataclass
class PatternStats:
    """Running sums (float64) per linear layer + counts; merging = adding."""
    fingerprint: str
    layers: list[dict]                         # LinearLayer.describe() per layer, graph order
    sums: list[dict] = field(default_factory=list)
    n: np.ndarray = None                       # samples per layer (rows * positions), float64 [n_layers]
    rows: int = 0                              # data rows seen
    info: dict = field(default_factory=dict)   # source, shard, batch size (informative / resume)

    @classmethod
    def empty(cls, fp: str, layers: list[LinearLayer], info=None) -> "PatternStats":
        sums = []
        for L in layers:
            C, Dg = L.w2d.shape
            d = {k: np.zeros(C) for k in VEC}
            d.update({k: np.zeros((C, Dg)) for k in MAT})
            d["sx"] = np.zeros((L.groups, Dg))
            sums.append(d)
        return cls(fp, [L.describe() for L in layers], sums, np.zeros(len(layers)), 0, dict(info or {}))

    def add_batch(self, layers: list[LinearLayer], outs: list, rows: int) -> None:
        for i, (L, res) in enumerate(zip(layers, outs)):
            xy, v, sx = res
            G = L.groups
            C, Dg = L.w2d.shape
            Cg = C // G
            xy = np.asarray(xy, np.float64).reshape(G, 3, Cg, Dg)
            v = np.asarray(v, np.float64).reshape(G, 5, Cg).transpose(1, 0, 2).reshape(5, C)
            s = self.sums[i]
            s["sxy"] += xy[:, 0].reshape(C, Dg)
            s["sxy_pos"] += xy[:, 1].reshape(C, Dg)
            s["sx_pos"] += xy[:, 2].reshape(C, Dg)
            for k, name in enumerate(VEC):
                s[name] += v[k]
            s["sx"] += np.asarray(sx, np.float64).reshape(G, Dg)
            self.n[i] += rows * L.positions
        self.rows += rows

    def merge(self, other: "PatternStats", where: str = "patterns") -> "PatternStats":
        if other.fingerprint != self.fingerprint:
            raise XCompileError(f"{where}: the shards were fitted on different models (fingerprints {self.fingerprint[:12]} and {other.fingerprint[:12]})")
        out = PatternStats(self.fingerprint, self.layers,
                           [{k: a[k] + b[k] for k in a} for a, b in zip(self.sums, other.sums)],
                           self.n + other.n, self.rows + other.rows,
                           {"merged": [self.info, other.info]})
        return out

    # ----------------------------------------------------------------------------- patterns
    def moments(self, i: int, L: LinearLayer) -> dict:
        s, n = self.sums[i], max(self.n[i], 1.0)
        G = L.groups
        C, Dg = L.w2d.shape
        sx_all = np.repeat(s["sx"], C // G, axis=0)
        n_pos = s["n_pos"][:, None]
        n_neg = self.n[i] - s["n_pos"][:, None]
        return dict(
            n=self.n[i], n_pos=s["n_pos"], Ey=s["sy"] / n, Ex=sx_all / n, Exy=s["sxy"] / n,
            Ex_pos=s["sx_pos"] / np.maximum(n_pos, 1), Exy_pos=s["sxy_pos"] / np.maximum(n_pos, 1),
            Ex_neg=(sx_all - s["sx_pos"]) / np.maximum(n_neg, 1),
            Exy_neg=(s["sxy"] - s["sxy_pos"]) / np.maximum(n_neg, 1),
            Eyy=s["syy"] / n)

    def patterns2d(self, i: int, L: LinearLayer, kind: str, raw: bool = False) -> np.ndarray:
        """[C, Dg] float64: kind = linear | relu (a₊) | relu_neg (a₋). Unreliable patterns (few samples, tiny
        covariance, huge gain) are shrunk toward the weight direction (patterns/shrink.py) unless `raw`."""
        M = self.moments(i, L)
        Ey = M["Ey"][:, None]
        if kind == "linear":
            num = M["Exy"] - M["Ex"] * Ey
        elif kind == "relu":
            num = M["Exy_pos"] - M["Ex_pos"] * Ey
        elif kind == "relu_neg":
            num = M["Exy_neg"] - M["Ex_neg"] * Ey
        else:
            raise XCompileError(f"option pattern={kind!r}: expected relu, relu_all or linear")
        if not raw:
            count = {"linear": M["n"], "relu": M["n_pos"], "relu_neg": M["n"] - M["n_pos"]}[kind]
            return shrink(num, L.w2d, count, M["Eyy"])[0]
        den = np.sum(L.w2d * num, axis=1, keepdims=True)
        den = np.where(den == 0, 1.0, den)
        return num / den

    def patterns(self, layers: list[LinearLayer], kind: str) -> dict:
        """{layer key: pattern in the weight's layout (float64)}; kind = relu | relu_all | linear
        (see LinearLayer.pattern_kind)."""
        return {L.key: L.to_layout(self.patterns2d(i, L, L.pattern_kind(kind))) for i, L in enumerate(layers)}

    def check(self, fp: str, where: str) -> None:
        if fp != self.fingerprint:
            raise XCompileError(f"{where}: these patterns were fitted on another model (fingerprint {self.fingerprint[:12]}, this model {fp[:12]})")

    # -------------------------------------------------------------------------------- files
    def to_arrays(self) -> dict:
        meta = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "layers": self.layers,
                "rows": int(self.rows), "info": self.info}
        arrays = {"meta": np.asarray(json.dumps(meta, sort_keys=True)), "n": self.n}
        for i, s in enumerate(self.sums):
            for k, v in s.items():
                arrays[f"L{i}.{k}"] = v
        return arrays

    def save(self, path) -> None:
        """Atomic write (`files.write_bytes`: a unique temporary file renamed into place)."""
        buf = io.BytesIO()
        np.savez(buf, **self.to_arrays())
        write_bytes(Path(path), buf.getvalue(), "patterns file")


def load_stats(path, where: Optional[str] = None) -> PatternStats:
    where = where or str(path)
    p = Path(path)
    if not p.is_file():
        raise XCompileError(f"{where}: no such patterns file")
    try:
        z = np.load(p, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError
        n = np.asarray(z["n"], np.float64)
        sums = []
        for i in range(len(meta["layers"])):
            sums.append({k: np.asarray(z[f"L{i}.{k}"], np.float64) for k in VEC + MAT + ("sx",)})
    except Exception:  # noqa: BLE001
        raise XCompileError(f"{where}: not an xcompile patterns file (write one with `xcompile fit-patterns`)") from None
    return PatternStats(meta["fingerprint"], meta["layers"], sums, n, int(meta["rows"]), meta.get("info", {}))


def merge_stats(paths: Iterable, out=None) -> PatternStats:
    total = None
    for p in paths:
        s = load_stats(p)
        total = s if total is None else total.merge(s, str(p))
    if total is None:
        raise XCompileError("merge: no patterns files given")
    if out is not None:
        total.save(out)
    return total
