"""Options as users give them (``--set key=value``, keyword arguments): parsing and validation, shared by the
compiler, the methods and the commands. Nothing here knows about graphs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np

from .errors import XCompileError


@dataclass(frozen=True)
class Param:
    default: Any
    help: str
    parse: Callable[[Any], Any] = lambda v: v


def as_int(v):
    return int(v)


def as_float(v):
    return float(v)


def as_str(v):
    return str(v)


def as_bool(v):
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("1", "true", "yes", "on"):
        return True
    if str(v).lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(v)


def as_floats(v):
    """'0', '0.1,0.2,0.3', '[0.1, 0.2]', '0.1/0.2' or a number/list -> numpy float64 (scalar or 1-D array)."""
    if v is None:
        return None
    if isinstance(v, str):
        parts = [p for p in v.strip().strip("[]").replace("/", ",").split(",") if p.strip()]
        return np.array([float(p) for p in parts], np.float64).reshape(-1) if len(parts) > 1 else np.float64(float(parts[0]))
    return np.asarray(v, np.float64)


def parse_params(params: dict, given: dict, owner: str) -> dict:
    """Defaults of `params` updated with the parsed `given` values; unknown keys and bad values raise one line."""
    out = {k: p.default for k, p in params.items()}
    for k, v in given.items():
        if k not in params:
            known = ", ".join(sorted(params)) or "none"
            raise XCompileError(f"option {k!r} is not known for {owner} (known: {known})")
        try:
            out[k] = params[k].parse(v)
        except (TypeError, ValueError):
            raise XCompileError(f"option {k}={v!r}: {params[k].help}") from None
    return out


def parse_sets(items: Optional[List[str]]) -> dict:
    """``--set key=value`` items -> {key: value} (values stay strings; each method parses its own)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise XCompileError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out
