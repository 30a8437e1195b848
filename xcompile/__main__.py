"""`python -m xcompile ...` = the `xcompile` command."""
from .cli import main

main()
