"""Vector-Jacobian products of every supported operator, one small emitter each, grouped by kind.
Importing this package fills ``xcompile.backward.table.TABLE``."""
from . import activations, elementwise, indexing, linear, ml, normalization, pooling, quantized, shape  # noqa: F401
