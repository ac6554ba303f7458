"""The live admin page: :class:`Admin` (see :mod:`tether.apps.admin.server`)."""

from .server import PRINCIPAL, STATIC_DIR, Admin

__all__ = ["Admin", "PRINCIPAL", "STATIC_DIR"]
