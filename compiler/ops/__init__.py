"""Op lowerings, one module per family; importing this package registers them all."""

import importlib
import pkgutil

# Every module in this package registers its lowerings on import (protocol_nodes lowers cipherdm's own domain).
for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
