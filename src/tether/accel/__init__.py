"""Hot leaf functions, compiled when possible, and the fused fast paths of the I/O layer
(``fuse``: the compiled module only).

The implementation is chosen once, at import: the C extension ``_speedups`` when it was built and
``TETHER_NO_EXTENSIONS`` is not set to a true value, else the pure-Python ``_python``, which is
the specification. ``IMPLEMENTATION`` says which one is live ("c" or "python").
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING

from . import _python

__all__ = [*_python.__all__, "IMPLEMENTATION"]

_module: ModuleType = _python
IMPLEMENTATION = "python"
if os.environ.get("TETHER_NO_EXTENSIONS", "").lower() in ("", "0", "false", "no"):
    try:
        from . import _speedups
    except ImportError:  # not built: no compiler at install time, or BUILD_EXTENSION=no
        pass
    else:
        _module, IMPLEMENTATION = _speedups, "c"

if TYPE_CHECKING:  # both modules have the same signatures: the specification's
    from ._python import apply_mask as apply_mask
    from ._python import frame as frame
    from ._python import fuse as fuse
    from ._python import mask_inplace as mask_inplace
    from ._python import new_payload as new_payload
    from ._python import pack_fields as pack_fields
    from ._python import parse_messages as parse_messages
    from ._python import parse_upgrade_head as parse_upgrade_head
    from ._python import take_payload as take_payload
    from ._python import Waiter as Waiter
else:
    globals().update({name: getattr(_module, name) for name in _python.__all__})
