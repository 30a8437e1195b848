"""Options as users give them (``--set key=value``, keyword arguments): parsing and validation, shared by the
compiler, the methods and the commands. Nothing here knows about graphs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import numpy as np

from .errors import XCompileError


@dataclass(frozen=True)
class Param:
    default: Any
    help: str
    parse: Callable[[Any], Any] = lambda v: v


# THE validation layer: every option (``--set``, keyword arguments) and rule-file value is parsed by one of these
# functions; a bad value raises ValueError/TypeError, which `parse_params` (options) and the rule-set loader (rule
# files) turn into one line naming the option or the rule entry.
MAX_PARAM = 1e6  # largest value of an LRP rule parameter (gamma, epsilon, alpha, ...): larger ones overflow float32


def _number(v) -> float:
    """A real number from a number or a string; bools, lists, tables, NaN and infinities are refused."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str, np.integer, np.floating)):
        raise TypeError(f"{v!r} is not a number")
    f = float(v)
    if not np.isfinite(f):
        raise ValueError(f"{v!r} is not a finite number")
    return f


def as_int(v):
    """An integer: 8, '8', 8.0, '1e3' (integral values only)."""
    f = _number(v)
    if f != int(f):
        raise ValueError(f"{v!r} is not an integer")
    if abs(f) > 2**62:
        raise ValueError(f"{v!r} is out of range")
    return int(f)


def as_float(v):
    """A finite real number."""
    return _number(v)


def in_range(parse: Callable, lo=None, hi=None, lo_open: bool = False) -> Callable:
    """``parse`` then a range check: lo <= v (lo < v with lo_open) and v <= hi."""
    def check(v):
        x = parse(v)
        if lo is not None and (x < lo or (lo_open and x == lo)):
            raise ValueError(f"{v!r} must be {'>' if lo_open else '>='} {lo}")
        if hi is not None and x > hi:
            raise ValueError(f"{v!r} must be <= {hi:g}")
        return x
    return check


def positive_int(v):
    return in_range(as_int, 1)(v)


def non_negative_int(v):
    return in_range(as_int, 0)(v)


def like_default(key: str, value, default):
    """A rule-file value checked against its default's type: numbers are finite, >= 0 and <= MAX_PARAM; flags are
    true/false; None defaults (z^B bounds) take a finite number or a list of them."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{key} = {value!r}: expected true or false")
        return value
    if isinstance(default, (int, float)):
        try:
            x = _number(value) if not isinstance(value, str) else None
        except (TypeError, ValueError):
            x = None
        if x is None:
            raise TypeError(f"{key} = {value!r}: expected a finite number")
        if not 0 <= x <= MAX_PARAM:
            raise ValueError(f"{key} = {value!r}: expected a number in [0, {MAX_PARAM:g}]")
        return x
    if default is None and isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu" or not np.isfinite(value).all():
            raise ValueError(f"{key}: expected finite numbers")
    elif default is None and value is not None:
        vals = value if isinstance(value, list) else [value]
        if not vals or any(isinstance(v, (bool, str)) or not isinstance(v, (int, float)) or not np.isfinite(v) for v in vals):
            raise TypeError(f"{key} = {value!r}: expected a finite number or a list of them")
    return value


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
        if not parts:
            raise ValueError(f"{v!r} is empty")
        out = np.array([_number(p) for p in parts], np.float64).reshape(-1) if len(parts) > 1 else np.float64(_number(parts[0]))
    else:
        out = np.asarray(v, np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{v!r} is not finite")
    return out


def _short(v) -> str:
    """A value as shown in a one-line error: arrays by shape and dtype, long text cut."""
    if isinstance(v, np.ndarray):
        return f"<array of shape {list(v.shape)}, {v.dtype}>"
    text = " ".join(repr(v).split())
    return text if len(text) <= 80 else text[:77] + "..."


def parse_params(params: dict, given: dict, owner: str) -> dict:
    """Defaults of `params` updated with the parsed `given` values; unknown keys and bad values raise one line."""
    out = {k: p.default for k, p in params.items()}
    for k, v in given.items():
        if k not in params:
            known = ", ".join(sorted(params)) or "none"
            raise XCompileError(f"option {k!r} is not known for {owner} (known: {known})")
        try:
            out[k] = params[k].parse(v)
        except (TypeError, ValueError, OverflowError) as e:
            why = f" ({' '.join(str(e).split())[:200]})" if str(e).startswith(repr(v)[:40]) and not isinstance(v, np.ndarray) else ""
            raise XCompileError(f"option {k}={_short(v)}: {params[k].help}{why}") from None
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


# ------------------------------------------------------------------------------------------- memory bound
MEMORY_ENV = "XCOMPILE_MEMORY_CAP_MB"
MEMORY_FRACTION = 0.25  # default cap: a quarter of the machine's physical memory


def memory_cap_bytes() -> int:
    """The most memory an unrolled method (steps, samples) may need for ONE input row: ``$XCOMPILE_MEMORY_CAP_MB``
    megabytes if set, else a quarter of the machine's physical memory."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        try:
            mb = float(env)
            if not np.isfinite(mb) or mb <= 0:
                raise ValueError
        except ValueError:
            raise XCompileError(f"${MEMORY_ENV}={env!r}: expected a positive number of megabytes") from None
        return int(mb * 1e6)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        total = 8 << 30
    return int(total * MEMORY_FRACTION)


def check_memory(estimate: float, what: str) -> None:
    """Refuse, before building anything, an option whose memory estimate for one row exceeds the cap."""
    cap = memory_cap_bytes()
    if estimate > cap:
        raise XCompileError(f"{what}: needs about {estimate / 1e9:.3g} GB for one input row, over the cap of "
                            f"{cap / 1e9:.3g} GB (lower it, set chunk=, or raise ${MEMORY_ENV})")
