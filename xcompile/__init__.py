"""xcompile: compile an ONNX classifier into an ONNX explainer (scores + relevance in one call)."""
__version__ = "0.1.0"

from .compiler import compile  # noqa: E402,A001
from .errors import XCompileError  # noqa: E402
from .runtime.explainer import Explainer, Explanation  # noqa: E402

__all__ = ["compile", "Explainer", "Explanation", "XCompileError", "__version__"]
