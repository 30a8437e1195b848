"""Rule sets: TOML data files (top-level `rules/`, or any path a user gives) that say which rule applies to which
node. See rules/README.md for the format. Parsing errors are one-line XCompileErrors naming the file and entry."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import tomllib

from ..errors import XCompileError
from .rules import LRPRule
from .selectors import SELECTORS, Site, parse_all
from .treatments import make_rule, selectable

ENTRY_KEYS = set(SELECTORS) | {"rule", "params", "note", "gate"}
OPTIONS = {"maxpool": ("winner", "proportional"), "gate": ("signal", "split"),
           "designed_for": ("any", "cnn", "transformer")}
DEFAULT_RULESET = "auto"
DEFAULT_BAND = None  # no conservation band unless the rule file states one


def rules_dirs() -> list[Path]:
    pkg = Path(__file__).resolve().parent.parent  # the package folder (no import of the package root: no cycle)
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
    select: list                 # lrp.selectors.Selector objects: all must match
    rule: str                    # the rule's name as written
    params: dict
    linear_only: bool            # a linear-only selector, or a rule on weights: never treats another node
    gate: Optional[str] = None   # rule = "product": overrides the gate option for the nodes this entry selects
    proto: Optional[LRPRule] = None  # the rule object (parameters checked once); `bind` adapts it to each node

    def label(self) -> str:
        sel = ", ".join(str(s) for s in self.select) or "any"
        return f"rule #{self.index + 1} ({sel})"

    def matches(self, site: Site) -> bool:
        return (site.linear or not self.linear_only) and all(s.match(site) for s in self.select)


@dataclass
class RuleSet:
    name: str
    path: Optional[Path]
    entries: list = field(default_factory=list)
    options: dict = field(default_factory=dict)
    description: str = ""
    band: Optional[tuple] = None     # [low, high] of sum(relevance) / score this rule set keeps (xcompile run warns)

    def match(self, site: Site) -> Optional[Entry]:
        """The first entry whose selectors all match (a node that is no linear layer: entries that may treat it)."""
        return next((e for e in self.entries if e.matches(site)), None)


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
        sel = parse_all(raw, label)
        params = raw.get("params", {})
        if not isinstance(params, dict):
            raise XCompileError(f"{label}: params must be a table, e.g. params = {{ epsilon = 0.25 }}")
        gate = raw.get("gate")
        if gate is not None and (not cls.takes_gate or gate not in OPTIONS["gate"]):
            raise XCompileError(f"{label}: gate = {gate!r} applies to rule = \"product\" only, as "
                                f"{' or '.join(OPTIONS['gate'])}")
        try:
            proto = make_rule(name, dict(params, **({"gate": gate} if gate is not None else {})))
        except (ValueError, TypeError) as e:
            raise XCompileError(f"{label}: {e}") from None
        linear_only = any(s.linear_only for s in sel) or cls.linear
        rs.entries.append(Entry(i, sel, name, dict(params), linear_only, gate, proto))
    return rs


def _is_builtin(path: Path) -> bool:
    return any(path.resolve().parent == d.resolve() for d in rules_dirs())


def band_of(meta) -> Optional[tuple]:
    """The conservation band recorded in an explainer's metadata at compile time (`metadata.ExplainerMeta.band`, or
    its dict). An explainer written before the band was recorded: the band of its built-in rule set (package data,
    so it cannot have moved); a rule file of its own is not re-read."""
    meta = meta if isinstance(meta, dict) else meta.as_dict()
    if meta.get("method") != "lrp":
        return None
    if meta.get("band") is not None:
        return tuple(float(v) for v in meta["band"])
    name = (meta.get("params") or {}).get("rules") or DEFAULT_RULESET
    try:
        path = resolve(name)
    except XCompileError:
        return None
    return load(name).band if _is_builtin(path) else None


def run_warning(meta, relevance, conservation) -> Optional[str]:
    """One line for `xcompile run` when the relevance holds NaN / Inf or sum(relevance) / score leaves the rule set's
    band (rules/README.md, `band`), else None. `meta`: the explainer's metadata (ExplainerMeta or its dict)."""
    import numpy as np
    meta = meta if isinstance(meta, dict) else meta.as_dict()
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
    from ..errors import warn_once
    note = run_warning(explainer.meta, res.relevance, (getattr(res, "extras", None) or {}).get("conservation"))
    if note:
        warn_once("run:relevance", note)
