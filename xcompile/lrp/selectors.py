"""Typed selectors of rule-set entries (after RelevancePropagation.jl's composite primitives: `FirstLayerMap`,
`RangeTypeMap`, ... are types that know what they select). Each selector parses and checks its TOML value
(`parse`, one-line errors) and matches a `Site`: the facts about one forward node that rule choice reads
(`lrp/policy.py` makes them). Adding a selector = one class + `@selector("key")`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..errors import XCompileError
from ..guards import compile_regex
from .blocks import LABELS

SELECTORS: dict[str, type] = {}


def selector(key):
    def deco(cls):
        cls.key = key
        SELECTORS[key] = cls
        return cls
    return deco


@dataclass(frozen=True)
class Site:
    """One forward node as rule choice sees it: `index` among the `count` linear layers on the relevance path (0: not
    a linear layer), its block type (`lrp/blocks.py`), and whether input bounds (--set low/high) were given."""
    node: Any
    op: str
    name: str
    index: int = 0
    count: int = 0
    kind: str = "dense"      # "conv" | "dense"
    block: Optional[Any] = None
    bounds: bool = False
    structure: Any = None    # lrp.structure.Structure: graph facts the built-in selectors ask
    options: Any = None      # lrp.policy.Options

    @property
    def linear(self) -> bool:
        return self.index > 0

    @property
    def label(self) -> Optional[str]:
        return None if self.block is None else getattr(self.block, "label", self.block)


def _as_list(v):
    return v if isinstance(v, list) else [v]


class Selector:
    key = ""
    linear_only = False       # selects linear layers only (an entry with one never treats another node)

    def __init__(self, value=None):
        self.value = value

    @classmethod
    def parse(cls, value, label: str) -> "Selector":
        return cls(value)

    def match(self, site: Site) -> bool:
        raise NotImplementedError

    def __str__(self):
        return f"{self.key}={self.value}"


class _Strings(Selector):
    @classmethod
    def parse(cls, value, label):
        if not all(isinstance(x, str) for x in _as_list(value)):
            raise XCompileError(f"{label}: {cls.key} must be a string or a list of strings")
        return cls(value)


@selector("op")
class Op(_Strings):
    def match(self, site):
        return site.op in _as_list(self.value)


@selector("name")
class Name(_Strings):
    def match(self, site):
        return site.name in _as_list(self.value)


@selector("name_regex")
class NameRegex(Selector):
    """re.search on the node name, compiled once by RE2 (guards.compile_regex: time linear in the name)."""

    def __init__(self, value=None, compiled=None):
        super().__init__(value)
        self.compiled = compiled

    @classmethod
    def parse(cls, value, label):
        if not isinstance(value, str):
            raise XCompileError(f"{label}: name_regex must be a string (a regular expression), got {value!r}")
        return cls(value, compile_regex(value, f"{label}: name_regex"))

    def match(self, site):
        return self.compiled.search(site.name) is not None


@selector("block")
class Block(Selector):
    @classmethod
    def parse(cls, value, label):
        bad = [v for v in _as_list(value) if v not in LABELS]
        if bad:
            raise XCompileError(f"{label}: block = {bad[0]!r} is not a block type (known: {', '.join(LABELS)})")
        return cls(value)

    def match(self, site):
        return site.label in _as_list(self.value)


@selector("bounds")
class Bounds(Selector):
    linear_only = True

    @classmethod
    def parse(cls, value, label):
        if not isinstance(value, bool):
            raise XCompileError(f"{label}: bounds = {value!r} (expected true: only when --set low/high are given)")
        return cls(value)

    def match(self, site):
        return site.bounds == self.value


@selector("kind")
class Kind(Selector):
    linear_only = True

    @classmethod
    def parse(cls, value, label):
        if value not in ("conv", "dense", "linear"):
            raise XCompileError(f"{label}: kind = {value!r} (expected conv, dense or linear)")
        return cls(value)

    def match(self, site):
        return site.linear and (self.value == "linear" or site.kind == self.value)


@selector("position")
class Position(Selector):
    linear_only = True

    @classmethod
    def parse(cls, value, label):
        if value not in ("first", "last"):
            raise XCompileError(f"{label}: position = {value!r} (expected first or last)")
        return cls(value)

    def match(self, site):
        return site.linear and site.index == (1 if self.value == "first" else site.count)


@selector("layers")
class Layers(Selector):
    """[from, to], 1-based among the linear layers, inclusive; negative counts from the last."""
    linear_only = True

    @classmethod
    def parse(cls, value, label):
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(x, int) and x != 0 for x in value)):
            raise XCompileError(f"{label}: layers = {value!r} (expected [from, to], 1-based, negative counts from "
                                "the last layer)")
        return cls(value)

    def match(self, site):
        n = site.count
        lo, hi = (v + n + 1 if v < 0 else v for v in self.value)
        return site.linear and lo <= site.index <= hi


def parse_all(raw: dict, label: str) -> list[Selector]:
    """The selectors of one [[rule]] entry, in the order of SELECTORS."""
    return [cls.parse(raw[k], label) for k, cls in SELECTORS.items() if k in raw]
