"""xcompile: compile an ONNX classifier into an ONNX explainer (scores + relevance in one call)."""
import os as _os

# onnxruntime's telemetry prints a coloured warning on every import when it cannot persist a device id (an
# unwritable HOME); set before any onnxruntime import (this package imports it next). A user's own setting wins.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .compiler import compile  # noqa: E402,A001
from .errors import XCompileError  # noqa: E402
from .runtime.explainer import Explainer, Explanation  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = ["compile", "Explainer", "Explanation", "XCompileError", "__version__"]
