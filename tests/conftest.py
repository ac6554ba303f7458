"""The event loop under test: ``TETHER_LOOP`` (auto, uvloop or asyncio), as for the CLI.

``scripts/test`` runs the suite twice: with the C accelerator on the default loop (uvloop where
it is installed), then pure Python on the standard asyncio loop. Servers started as
subprocesses inherit the variable, so both ends run on the same kind of loop.
"""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, settings

from tether.asyncio.runner import loop_factory

if loop_factory().__module__.startswith("uvloop"):
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

# Property tests on a loaded machine: no deadline per example, and no health check that
# fails a test because generating its data was slow (the property is what is checked).
settings.register_profile(
    "tether", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tether")
