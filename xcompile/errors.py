"""User-facing errors.

Everything a user can get wrong (a file, a node, an operator, an option, an input) raises
`XCompileError` with ONE line that names the thing at fault. The CLI prints that line to stderr and
exits with code 2; no traceback, no partial output file.
"""


class XCompileError(Exception):
    """A problem with the user's input (model, option, data). Exit code 2 in the CLI."""


class UnsupportedOperatorsError(XCompileError):
    """Raised once with EVERY unsupported node, not one per run."""

    def __init__(self, nodes, context: str = ""):
        self.nodes = list(nodes)  # [(node_name, op_type), ...]
        listing = ", ".join(f"{name} ({op})" for name, op in self.nodes)
        where = f"{context}: " if context else ""
        super().__init__(f"{where}{len(self.nodes)} unsupported operator node(s): {listing}")


_WARNED: set = set()


def warn_once(key: str, message: str) -> None:
    """ONE line on stderr, once per process and key (non-finite inputs or weights, ...)."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    import sys
    print(f"xcompile: warning: {' '.join(message.split())}", file=sys.stderr)
