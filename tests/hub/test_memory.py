"""MemoryBackend beyond the contract: random epochs, no history at all."""

from __future__ import annotations

from tether.hub import MemoryBackend
from tether.hub.memory import new_epoch

from .conftest import run


class TestMemoryBackend:
    def test_each_backend_and_topic_has_its_own_epoch(self) -> None:
        async def main() -> None:
            one, two = MemoryBackend(), MemoryBackend()
            epochs = {await one.epoch("t"), await one.epoch("u"), await two.epoch("t")}
            assert len(epochs) == 3
            assert all(len(e) == 16 for e in epochs)
            assert new_epoch() != new_epoch()

        run(main())

    def test_history_size_zero_keeps_nothing(self) -> None:
        async def main() -> None:
            backend = MemoryBackend(history_size=0)
            assert (await backend.publish("t", 1)).seq == 1
            result = await backend.history("t", since=0)
            assert (result.messages, result.first, result.gap) == ((), 2, True)

        run(main())
