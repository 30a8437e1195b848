"""The package version (pyproject.toml's), recorded in every explainer's metadata."""
__version__ = "0.1.0"
