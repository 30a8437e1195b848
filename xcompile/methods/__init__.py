"""Method registry: importing this package registers every built-in method."""
# each module registers its methods with @register; modules are listed here in one place (static imports: the
# architecture test sees them)
from . import gradient, paths, gradcam, lrp, patterns, occlusion, neuralized, deeplift, treeshap  # noqa: E402,F401,I001
from .base import METHODS  # noqa: F401
