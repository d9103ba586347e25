"""Op lowerings, one module per family; importing this package registers them all."""

from compiler.ops import elementwise, shape  # noqa: F401
