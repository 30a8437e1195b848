"""PatternNet / PatternAttribution (Kindermans et al. 2018; docs/patterns.md): fit the signal patterns of every linear layer from data
(`fit.py`, statistics computed in-graph by onnxruntime), merge shards, and measure the quality of signal
estimators (`signal.py`). The methods that use the patterns live in `xcompile/methods/patterns.py`."""
from .fit import PatternStats, fit_patterns, iter_batches, load_stats, merge_stats  # noqa: F401
