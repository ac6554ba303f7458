"""Running a program on the fastest event loop available.

``tether.run(main())`` is ``asyncio.run(main())`` on uvloop when uvloop is installed (it is a
default dependency where wheels exist), and on the standard loop otherwise. Both loops are
supported and tested; uvloop is what the performance figures use.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["run", "loop_factory", "LOOPS"]

T = TypeVar("T")

LOOPS = ("auto", "uvloop", "asyncio")
"""The loop names: "auto" is uvloop when it can be imported, else the standard loop."""


def loop_factory(name: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """The factory of the event loop called ``name`` (``None``: the ``TETHER_LOOP``
    environment variable, else "auto").

    Raises:
        ValueError: an unknown name, or "uvloop" when uvloop cannot be imported.
    """
    if name is None:
        name = os.environ.get("TETHER_LOOP") or "auto"
    if name not in LOOPS:
        raise ValueError(f"unknown event loop {name!r}: use one of {', '.join(LOOPS)}")
    if name != "asyncio":
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise ValueError("uvloop is not installed (pip install uvloop)") from None
        else:
            return uvloop.new_event_loop
    # The platform's standard loop, even when an event loop policy says otherwise.
    return asyncio.DefaultEventLoopPolicy().new_event_loop


def run(main: Coroutine[Any, Any, T], *, loop: str | None = None, debug: bool | None = None
        ) -> T:
    """Run ``main`` to completion on a new event loop (uvloop when available) and close it.

    Args:
        main: the coroutine to run.
        loop: "auto" (default), "uvloop" or "asyncio"; see :func:`loop_factory`.
        debug: asyncio's debug mode.
    """
    try:
        factory = loop_factory(loop)
    except ValueError:
        main.close()
        raise
    # asyncio.Runner's loop_factory exists from 3.11; on 3.10, set the policy's loop for the run.
    runner_cls = getattr(asyncio, "Runner", None)
    if runner_cls is not None:
        with runner_cls(debug=debug, loop_factory=factory) as runner:
            return runner.run(main)  # type: ignore[no-any-return]
    new_loop = factory()
    try:
        asyncio.set_event_loop(new_loop)
        if debug is not None:
            new_loop.set_debug(debug)
        return new_loop.run_until_complete(main)
    finally:
        try:
            new_loop.run_until_complete(new_loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            new_loop.close()
