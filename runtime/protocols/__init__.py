"""MPC-friendly protocols for the expensive nonlinear ops, one file per op, and the registry to choose from.

See :mod:`runtime.protocols.base` for the interface and the cipherdm:: node schema.
"""

from runtime.protocols.base import (DOMAIN, OP_TYPES, OPS, Cost, Protocol, SpuKnobs, add_functions, all_protocols,
                                    cheapest, direct, from_onnx_attributes, function_proto, get, make_node,
                                    reload_registry, runtime_kwargs, to_onnx_attributes, variants)
from runtime.protocols import families  # noqa: F401  (registers the families)

__all__ = ["DOMAIN", "OP_TYPES", "OPS", "Cost", "Protocol", "SpuKnobs", "add_functions", "all_protocols", "cheapest",
           "direct", "from_onnx_attributes", "function_proto", "get", "make_node", "reload_registry",
           "runtime_kwargs", "to_onnx_attributes", "variants"]
