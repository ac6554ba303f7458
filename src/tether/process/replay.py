"""The last bytes of an output stream, addressed by their offset in the whole stream.

The terminal's resume after a reconnect: a client says the offset of the next byte it needs
(``since``, like the hub's seq) and gets exactly the bytes from there, no gap and no
duplicate, while they are still kept. Offsets only grow; what falls out of the window is
gone, and a client behind it is told where the kept bytes start (``gap``).
"""

from __future__ import annotations

from collections import deque

__all__ = ["ReplayBuffer", "DEFAULT_REPLAY"]

DEFAULT_REPLAY = 2**20
"""Bytes of output kept for resuming (1 MiB)."""


class ReplayBuffer:
    """The last ``limit`` bytes (at least; at most ``limit`` plus one chunk) of a stream.

    Attributes:
        start: offset of the oldest byte kept.
        end: offset after the newest byte: the number of bytes ever appended.
    """

    def __init__(self, limit: int = DEFAULT_REPLAY) -> None:
        if limit < 1:
            raise ValueError("the replay buffer must keep at least 1 byte")
        self.limit = limit
        self.start = 0
        self.end = 0
        self._chunks: deque[bytes] = deque()

    def __len__(self) -> int:
        return self.end - self.start

    def append(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._chunks.append(chunk)
        self.end += len(chunk)
        chunks = self._chunks
        while self.end - self.start - len(chunks[0]) >= self.limit:
            self.start += len(chunks.popleft())

    def read(self, since: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes from offset ``since`` (which must be kept: see
        :meth:`resume_point`); empty at the end."""
        if not self.start <= since <= self.end:
            raise ValueError(f"offset {since} is not in {self.start}..{self.end}")
        if since == self.end or max_bytes <= 0:
            return b""
        # Find the chunk holding `since`, walking back from the newest (readers are usually
        # near the end).
        offset = self.end
        index = len(self._chunks)
        while offset > since:
            index -= 1
            offset -= len(self._chunks[index])
        parts = []
        skip = since - offset
        wanted = max_bytes
        while wanted > 0 and index < len(self._chunks):
            chunk = self._chunks[index]
            piece = chunk[skip:skip + wanted] if skip or len(chunk) - skip > wanted else chunk
            parts.append(piece)
            wanted -= len(piece)
            skip = 0
            index += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def resume_point(self, since: int) -> tuple[int, bool]:
        """Where a reader that needs the bytes from ``since`` goes on: ``(since, False)``
        while they are kept; else ``(start, True)``, a gap (``since`` older than what is
        kept, or past the end: a stream it never saw)."""
        if self.start <= since <= self.end:
            return since, False
        return self.start, True
