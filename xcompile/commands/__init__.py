"""Every command-line entry point (the `xcompile` console script is `xcompile.commands.main:main`):
`main` (compile, run, inspect, demo and the app), `patterns`, `evaluate`, `serving` (feature commands
registered into the app), `inspect_model`, `demo`. Nothing below this package imports it."""
