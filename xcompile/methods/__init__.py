"""Method registry: importing this package registers every built-in method."""
import importlib
import importlib.util

from .base import METHODS  # noqa: F401

# each module registers its methods with @register; modules are listed here in one place
_MODULES = ["gradient", "paths", "gradcam", "lrp", "patterns", "occlusion", "neuralized", "deeplift", "treeshap"]
for _name in _MODULES:
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        importlib.import_module(f"{__name__}.{_name}")
