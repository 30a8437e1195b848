"""Rule sets: TOML data files (top-level `rules/`, or any path a user gives) that say which rule applies to which
node. See rules/README.md for the format. Parsing errors are one-line XCompileErrors naming the file and entry."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import tomllib

from ..errors import XCompileError
from ..guards import compile_regex
from ..options import like_default
from .blocks import LABELS
from .rules import make_rule, selectable

SELECTORS = ("op", "kind", "position", "layers", "name", "name_regex", "block", "bounds")
ENTRY_KEYS = set(SELECTORS) | {"rule", "params", "note", "gate"}
OPTIONS = {"maxpool": ("winner", "proportional"), "gate": ("signal", "split"),
           "designed_for": ("any", "cnn", "transformer")}
DEFAULT_RULESET = "auto"
DEFAULT_BAND = None  # no conservation band unless the rule file states one


def rules_dirs() -> list[Path]:
    import xcompile
    pkg = Path(xcompile.__file__).resolve().parent
    return [d for d in (pkg.parent / "rules", pkg / "rules") if d.is_dir()]


def builtin_names() -> list[str]:
    return sorted({p.stem for d in rules_dirs() for p in d.glob("*.toml")})


def resolve(spec) -> Path:
    """A built-in name or a path to a .toml rule file."""
    spec = str(spec if spec is not None else DEFAULT_RULESET)
    p = Path(spec)
    if p.suffix == ".toml" or p.is_file() or "/" in spec or "\\" in spec:
        if p.is_dir():
            raise XCompileError(f"rule file {spec!r}: is a folder; give a .toml rule file or a built-in name")
        if not p.is_file():
            raise XCompileError(f"rule file {spec!r}: no such file")
        return p
    for d in rules_dirs():
        if (d / f"{spec}.toml").is_file():
            return d / f"{spec}.toml"
    raise XCompileError(f"--rules {spec!r}: unknown rule set (built-in: {', '.join(builtin_names())}; or give a path to a .toml rule file)")


@dataclass
class Entry:
    index: int
    select: dict
    rule: str
    params: dict
    linear_only: bool
    gate: Optional[str] = None   # rule = "product": overrides the gate option for the nodes this entry selects

    def label(self) -> str:
        sel = ", ".join(f"{k}={v}" for k, v in self.select.items()) or "any"
        return f"rule #{self.index + 1} ({sel})"


@dataclass
class RuleSet:
    name: str
    path: Path
    entries: list = field(default_factory=list)
    options: dict = field(default_factory=dict)
    description: str = ""
    band: Optional[tuple] = None     # [low, high] of sum(relevance) / score this rule set keeps (xcompile run warns)

    def match_linear(self, info: dict) -> Optional[Entry]:
        return next((e for e in self.entries if _matches(e, info, linear=True)), None)

    def match_other(self, info: dict) -> Optional[Entry]:
        """The first entry that may treat a node which is no linear layer (entries naming a treatment)."""
        return next((e for e in self.entries if not e.linear_only and _matches(e, info, linear=False)), None)


def _as_list(v):
    return v if isinstance(v, list) else [v]


def _matches(e: Entry, info: dict, linear: bool) -> bool:
    s = e.select
    if not linear and e.linear_only:
        return False
    if "op" in s and info["op"] not in _as_list(s["op"]):
        return False
    if "name" in s and info["name"] not in _as_list(s["name"]):
        return False
    if "name_regex" in s and not _regex(s["name_regex"]).search(info["name"]):
        return False
    if "block" in s and info.get("block") not in _as_list(s["block"]):
        return False
    if "bounds" in s and bool(info.get("bounds")) != s["bounds"]:
        return False
    if linear:
        if "kind" in s and s["kind"] != "linear" and info["kind"] != s["kind"]:
            return False
        if "position" in s:
            if s["position"] == "first" and info["index"] != 1:
                return False
            if s["position"] == "last" and info["index"] != info["count"]:
                return False
        if "layers" in s:
            lo, hi = s["layers"]
            n = info["count"]
            lo = lo + n + 1 if lo < 0 else lo
            hi = hi + n + 1 if hi < 0 else hi
            if not lo <= info["index"] <= hi:
                return False
    return True


def load(spec) -> RuleSet:
    path = resolve(spec)
    where = f"rule file {str(path)!r}" if not _is_builtin(path) else f"rule set {path.stem!r}"
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise XCompileError(f"{where}: not valid TOML: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise XCompileError(f"{where}: cannot read: {e.strerror}") from None
    unknown = set(data) - {"name", "description", "options", "rule"}
    if unknown:
        raise XCompileError(f"{where}: unknown top-level key(s) {sorted(unknown)} (allowed: name, description, options, [[rule]])")
    rs = RuleSet(str(data.get("name", path.stem)), path, description=str(data.get("description", "")))
    opts = data.get("options", {})
    if not isinstance(opts, dict):
        raise XCompileError(f"{where}: [options] must be a table")
    opts = dict(opts)
    band = opts.pop("band", DEFAULT_BAND)
    if band is not None and not (isinstance(band, list) and len(band) == 2
                                 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in band)
                                 and band[0] < band[1]):
        raise XCompileError(f"{where}: option band = {band!r} (expected [low, high], low < high: the range of "
                            "sum(relevance) / score this rule set keeps)")
    for k, v in opts.items():
        if k not in OPTIONS or v not in OPTIONS[k]:
            allowed = "; ".join(f"{o} = {'|'.join(vs)}" for o, vs in OPTIONS.items())
            raise XCompileError(f"{where}: option {k} = {v!r} is not known (allowed: {allowed})")
    rs.options = {k: vs[0] for k, vs in OPTIONS.items()} | dict(opts)
    rs.band = None if band is None else (float(band[0]), float(band[1]))
    entries = data.get("rule", [])
    if not isinstance(entries, list) or not entries:
        raise XCompileError(f"{where}: needs at least one [[rule]] entry")
    for i, raw in enumerate(entries):
        label = f"{where}: rule #{i + 1}"
        if not isinstance(raw, dict):
            raise XCompileError(f"{label}: must be a table")
        bad = set(raw) - ENTRY_KEYS
        if bad:
            raise XCompileError(f"{label}: unknown key(s) {sorted(bad)} (selectors: {', '.join(SELECTORS)}; then rule, params)")
        if "rule" not in raw or not isinstance(raw["rule"], str):
            raise XCompileError(f"{label}: missing 'rule = \"NAME\"'")
        name = raw["rule"]
        known = selectable()
        if name not in known:
            raise XCompileError(f"{label}: unknown rule {name!r} (known: {', '.join(sorted(known))})")
        cls = known[name]
        sel = {k: raw[k] for k in SELECTORS if k in raw}
        _check_selectors(label, sel)
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise XCompileError(f"{label}: params must be a table, e.g. params = {{ epsilon = 0.25 }}")
        if cls.linear:
            try:
                make_rule(name, params)
            except (ValueError, TypeError) as e:
                raise XCompileError(f"{label}: {e}") from None
        elif set(params) - set(cls.params):
            allowed = ", ".join(cls.params) or "none"
            raise XCompileError(f"{label}: {name!r} takes params: {allowed} (got {', '.join(sorted(params))})")
        else:
            try:
                for k, v in params.items():
                    like_default(k, v, cls.params[k])
            except (ValueError, TypeError) as e:
                raise XCompileError(f"{label}: {e}") from None
        gate = raw.get("gate")
        if gate is not None and (name != "product" or gate not in OPTIONS["gate"]):
            raise XCompileError(f"{label}: gate = {gate!r} applies to rule = \"product\" only, as "
                                f"{' or '.join(OPTIONS['gate'])}")
        linear_only = bool({"kind", "position", "layers", "bounds"} & set(sel)) or cls.linear
        rs.entries.append(Entry(i, sel, name, dict(params), linear_only, gate))
    return rs


def _check_selectors(label, sel):
    if "kind" in sel and sel["kind"] not in ("conv", "dense", "linear"):
        raise XCompileError(f"{label}: kind = {sel['kind']!r} (expected conv, dense or linear)")
    if "position" in sel and sel["position"] not in ("first", "last"):
        raise XCompileError(f"{label}: position = {sel['position']!r} (expected first or last)")
    if "layers" in sel:
        v = sel["layers"]
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and x != 0 for x in v)):
            raise XCompileError(f"{label}: layers = {v!r} (expected [from, to], 1-based, negative counts from the last layer)")
    if "bounds" in sel and not isinstance(sel["bounds"], bool):
        raise XCompileError(f"{label}: bounds = {sel['bounds']!r} (expected true: only when --set low/high are given)")
    if "block" in sel:
        bad = [v for v in _as_list(sel["block"]) if v not in LABELS]
        if bad:
            raise XCompileError(f"{label}: block = {bad[0]!r} is not a block type (known: {', '.join(LABELS)})")
    for k in ("op", "name"):
        if k in sel and not all(isinstance(x, str) for x in _as_list(sel[k])):
            raise XCompileError(f"{label}: {k} must be a string or a list of strings")
    if "name_regex" in sel:
        if not isinstance(sel["name_regex"], str):
            raise XCompileError(f"{label}: name_regex must be a string (a regular expression), got {sel['name_regex']!r}")
        _regex(sel["name_regex"], f"{label}: name_regex")


@functools.lru_cache(maxsize=256)
def _regex(pattern: str, what: str = "name_regex"):
    """RE2: matching time linear in the node name whatever the pattern (no catastrophic backtracking)."""
    return compile_regex(pattern, what)


def _is_builtin(path: Path) -> bool:
    return any(path.resolve().parent == d.resolve() for d in rules_dirs())


def band_of(meta: dict) -> Optional[tuple]:
    """The conservation band of the rule set an explainer was compiled with (its metadata), None when it has none or
    the rule file cannot be read here."""
    if meta.get("method") != "lrp":
        return None
    try:
        return load((meta.get("params") or {}).get("rules") or DEFAULT_RULESET).band
    except XCompileError:
        return None


def run_warning(meta: dict, relevance, conservation) -> Optional[str]:
    """One line for `xcompile run` when the relevance holds NaN / Inf or sum(relevance) / score leaves the rule set's
    band (rules/README.md, `band`), else None. `meta`: the explainer's xcompile.* metadata (JSON-decoded)."""
    import numpy as np
    rel = np.asarray(relevance)
    rows = rel.reshape(len(rel), -1)
    bad = ~np.isfinite(rows).all(1)
    if bad.any():
        used = (meta.get("params") or {}).get("rules") or DEFAULT_RULESET
        hint = ("; try --rules auto" if used != "auto" else "; try --rules cp-lrp or --method gradient")
        return (f"relevance has NaN/Inf values in {int(bad.sum())} of {len(rows)} rows: not meaningful"
                + (hint if meta.get("method") == "lrp" else ""))
    band = band_of(meta)
    if band is None or conservation is None:
        return None
    c = np.asarray(conservation, np.float64)
    out = np.isfinite(c) & ((c < band[0]) | (c > band[1]))
    if not out.any():
        return None
    rules = (meta.get("params") or {}).get("rules") or DEFAULT_RULESET
    worst = c[out][np.argmax(np.abs(c[out] - 1))]
    return (f"sum(relevance) / score leaves [{band[0]:g}, {band[1]:g}] (rule set {rules!r}) in {int(out.sum())} of "
            f"{len(c)} rows (worst {worst:.3g}): the relevance may not be meaningful")


def warn_run(explainer, res) -> None:
    """`xcompile run`: `run_warning` for an Explainer's result, printed once (errors.warn_once)."""
    import json

    from ..errors import warn_once
    meta = {}
    for k, v in explainer.session.get_modelmeta().custom_metadata_map.items():
        if k.startswith("xcompile."):
            try:
                meta[k[9:]] = json.loads(v)
            except ValueError:
                meta[k[9:]] = v
    note = run_warning(meta, res.relevance, (getattr(res, "extras", None) or {}).get("conservation"))
    if note:
        warn_once("run:relevance", note)
