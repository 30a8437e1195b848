"""xcompile: compile an ONNX classifier into an ONNX explainer (scores + relevance in one call)."""
from .compiler import compile  # noqa: A001
from .errors import XCompileError
from .runtime.explainer import Explainer, Explanation
from .version import __version__

__all__ = ["compile", "Explainer", "Explanation", "XCompileError", "__version__"]
