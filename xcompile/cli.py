"""Compatibility alias: the command line lives in `xcompile.commands.main` (``python -m xcompile.cli`` still works)."""
from .commands.main import app, main  # noqa: F401

if __name__ == "__main__":
    main()
