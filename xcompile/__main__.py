"""`python -m xcompile ...` = the `xcompile` command."""
from .commands.main import main

main()
