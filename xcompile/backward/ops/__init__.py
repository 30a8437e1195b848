"""Vector-Jacobian products of every supported operator, one small emitter each, grouped by kind.
Importing this package fills ``xcompile.backward.table.TABLE``."""
from . import (  # noqa: F401
    activations,
    elementwise,
    indexing,
    linear,
    ml,  # noqa: F401
    normalization,
    pooling,
    quantized,
    reduce,
    shape,
)
