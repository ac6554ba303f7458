"""Hot leaf functions, compiled when possible.

The implementation is chosen once, at import: the C extension ``_speedups`` when it was built and
``TETHER_NO_EXTENSIONS`` is not set to a true value, else the pure-Python ``_python``, which is
the specification. ``IMPLEMENTATION`` says which one is live ("c" or "python").
"""

from __future__ import annotations

import os
__all__ = [
    "apply_mask",
    "parse_messages",
    "frame",
    "mask_inplace",
    "new_payload",
    "take_payload",
    "IMPLEMENTATION",
]

if os.environ.get("TETHER_NO_EXTENSIONS", "").lower() in ("", "0", "false", "no"):
    try:
        from ._speedups import (
            apply_mask,
            frame,
            mask_inplace,
            new_payload,
            parse_messages,
            take_payload,
        )
    except ImportError:  # not built: no compiler at install time, or BUILD_EXTENSION=no
        from ._python import (
            apply_mask,
            frame,
            mask_inplace,
            new_payload,
            parse_messages,
            take_payload,
        )

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "c"
else:
    from ._python import (
        apply_mask,
        frame,
        mask_inplace,
        new_payload,
        parse_messages,
        take_payload,
    )

    IMPLEMENTATION = "python"
