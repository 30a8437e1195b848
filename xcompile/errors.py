"""User-facing errors.

Everything a user can get wrong (a file, a node, an operator, an option, an input) raises
`XCompileError` with ONE line that names the thing at fault. The CLI prints that line to stderr and
exits with code 2; no traceback, no partial output file.
"""
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text) -> str:
    """``text`` with every control character written as a visible escape (``\\x1b``, ``\\n``): one line, inert on a
    terminal (no clear-screen, no title change, no forged output line). THE escape for every message and listing."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def one_line(text) -> str:
    """A message as ONE printable line: whitespace runs collapsed, control characters escaped."""
    return clean(" ".join(str(text).split()))


class XCompileError(Exception):
    """A problem with the user's input (model, option, data). Exit code 2 in the CLI. The message is ONE line with
    control characters escaped (`one_line`), for the Python API as for the CLI: names from a model or a file system
    never reach a terminal raw."""

    def __init__(self, *args):
        super().__init__(*(one_line(a) if isinstance(a, str) else a for a in args))


class UnsupportedOperatorsError(XCompileError):
    """Raised once with EVERY unsupported node, not one per run."""

    def __init__(self, nodes, context: str = ""):
        self.nodes = list(nodes)  # [(node_name, op_type), ...] or (node_name, op_type, why) for an emitter's refusal
        listing = ", ".join(f"{n[0]} ({n[1]}: {n[2]})" if len(n) > 2 and n[2] else f"{n[0]} ({n[1]})" for n in self.nodes)
        where = f"{context}: " if context else ""
        super().__init__(f"{where}{len(self.nodes)} unsupported operator node(s): {listing}")


class UnsupportedNodeError(XCompileError):
    """One node whose emitter refuses it (an attribute or a mode it does not handle); the engine collects these
    and raises ONE `UnsupportedOperatorsError` naming every such node."""

    def __init__(self, name: str, op_type: str, why: str):
        self.node = (name, op_type, why)
        super().__init__(f"node {name!r} ({op_type}): {why} is not supported")


_WARNED: set = set()


def warn_once(key: str, message: str) -> None:
    """ONE line on stderr, once per process and key (non-finite inputs or weights, ...)."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    import sys
    print(f"xcompile: warning: {one_line(message)}", file=sys.stderr)
