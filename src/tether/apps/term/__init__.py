"""``tether term``: a web terminal (xterm.js + a real PTY), shared and resumable.

:class:`Terminal` serves it; :mod:`tether.apps.term.session` holds one session's flow
control and replay. See docs/terminal.md.
"""

from .server import SUBPROTOCOL, VIEWER, WRITER, Terminal, default_command

__all__ = ["Terminal", "SUBPROTOCOL", "WRITER", "VIEWER", "default_command"]
