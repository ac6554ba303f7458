"""Child processes for the terminal and exec apps: spawned on a PTY or on pipes without fork,
read and written non-blocking on the event loop, reaped without a thread.

See :mod:`tether.process.spawn` and :mod:`tether.process.stream`.
"""

from .spawn import (
    MAX_COLUMNS,
    MAX_ROWS,
    Child,
    PipeChild,
    PtyChild,
    check_size,
    exit_description,
    spawn_pipes,
    spawn_pty,
)
from .stream import FdStream

__all__ = ["Child", "PtyChild", "PipeChild", "FdStream", "spawn_pty", "spawn_pipes",
           "check_size", "exit_description", "MAX_COLUMNS", "MAX_ROWS"]
