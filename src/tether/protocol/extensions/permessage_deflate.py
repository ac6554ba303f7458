"""permessage-deflate, RFC 7692.

Memory per connection, with the defaults (window bits 12 both ways, memLevel 5), measured by
``bench/deflate_memory.py``: see docs/compression.md. zlib needs ``2**(wbits+2) + 2**(memLevel+9)``
bytes to compress (32 KiB here) and ``2**wbits`` plus about 7 KiB of state to decompress. Both are
created lazily: an idle connection that never sent or received a compressed message pays nothing.

Two choices worth knowing:

- zlib cannot *compress* with an 8-bit window. When the peer limits us to 8 bits, we accept and
  simply send every message uncompressed (RSV1 clear), which RFC 7692 §6 allows.
- With "no context takeover" on our side we end each message with ``Z_FULL_FLUSH``, which empties
  the LZ77 window exactly as §7.1.1 requires, and keep the compressor instead of building a new one
  per message.
"""

from __future__ import annotations

import zlib

from ...exceptions import ExtensionError, HandshakeError, MessageTooBig
from ..headers import ExtensionParams
from .base import ClientExtensionFactory, Extension, ServerExtensionFactory

__all__ = [
    "PerMessageDeflate",
    "ServerPerMessageDeflateFactory",
    "ClientPerMessageDeflateFactory",
    "EMPTY_UNCOMPRESSED_BLOCK",
]

NAME = "permessage-deflate"
# RFC 7692 §7.2.1: the tail removed from each compressed message and appended back before inflating.
EMPTY_UNCOMPRESSED_BLOCK = b"\x00\x00\xff\xff"
_PARAMS = (
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
)
_WINDOW_BITS = {str(n): n for n in range(8, 16)}  # decimal without leading zeros, 8-15


class PerMessageDeflate(Extension):
    """The negotiated permessage-deflate on one connection, from our point of view.

    Args:
        remote_no_context_takeover: the peer resets its window after each message.
        local_no_context_takeover: we must reset ours after each message.
        remote_max_window_bits: the peer compresses with at most this window.
        local_max_window_bits: we may compress with at most this window.
        compress_level, mem_level: zlib settings for what we send.
        min_size: messages shorter than this are sent uncompressed (RFC 7692 §6 allows it).
        params: the parameters as negotiated, for display.
    """

    name = NAME
    __slots__ = (
        "remote_no_context_takeover",
        "local_no_context_takeover",
        "remote_max_window_bits",
        "local_max_window_bits",
        "compress_level",
        "mem_level",
        "min_size",
        "_params",
        "_compressor",
        "_decompressor",
    )

    def __init__(
        self,
        remote_no_context_takeover: bool,
        local_no_context_takeover: bool,
        remote_max_window_bits: int,
        local_max_window_bits: int,
        *,
        compress_level: int = 6,
        mem_level: int = 5,
        min_size: int = 0,
        params: ExtensionParams | None = None,
    ) -> None:
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_max_window_bits = remote_max_window_bits
        self.local_max_window_bits = local_max_window_bits
        self.compress_level = compress_level
        self.mem_level = mem_level
        self.min_size = min_size
        self._params = params or []
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None

    def params(self) -> ExtensionParams:
        return list(self._params)

    def decode(self, payload: bytes, fin: bool, max_length: int | None) -> bytes:
        d = self._decompressor
        if d is None:
            d = self._decompressor = zlib.decompressobj(-self.remote_max_window_bits)
        if fin:
            payload = payload + EMPTY_UNCOMPRESSED_BLOCK
        try:
            if max_length is None:
                data = d.decompress(payload)
            else:
                # Never inflate more than one byte past the limit: a deflate bomb stops here.
                data = d.decompress(payload, max_length + 1)
                if len(data) > max_length:
                    raise MessageTooBig(
                        f"decompressed message exceeds limit of {max_length} bytes"
                    )
        except zlib.error as exc:
            raise ExtensionError(f"invalid compressed data: {exc}") from None
        if fin and d.eof:
            # The peer ended its deflate stream (BFINAL); the next message starts a new one.
            self._decompressor = None
        return data

    def encode(self, payload: bytes) -> bytes | None:
        if len(payload) < self.min_size or self.local_max_window_bits < 9:
            return None
        c = self._compressor
        if c is None:
            c = self._compressor = zlib.compressobj(
                self.compress_level, zlib.DEFLATED, -self.local_max_window_bits, self.mem_level
            )
        flush = zlib.Z_FULL_FLUSH if self.local_no_context_takeover else zlib.Z_SYNC_FLUSH
        data = c.compress(payload) + c.flush(flush)
        if data.endswith(EMPTY_UNCOMPRESSED_BLOCK):
            data = data[:-4]
        return data


def _check_params(params: ExtensionParams, allowed: tuple[str, ...]) -> dict[str, str | None]:
    """Validate a permessage-deflate parameter list: known names, no repeats, valid values.

    Raises:
        ValueError: with what was wrong.
    """
    seen: dict[str, str | None] = {}
    for key, value in params:
        if key not in allowed:
            raise ValueError(f"unknown parameter {key}")
        if key in seen:
            raise ValueError(f"repeated parameter {key}")
        if key.endswith("no_context_takeover"):
            if value is not None:
                raise ValueError(f"{key} takes no value")
        elif value is not None and value not in _WINDOW_BITS:
            raise ValueError(f"{key} must be an integer from 8 to 15")
        elif value is None and key == "server_max_window_bits":
            raise ValueError("server_max_window_bits needs a value")
        seen[key] = value
    return seen


def _bits(value: str | None, default: int = 15) -> int:
    return default if value is None else _WINDOW_BITS[value]


class _Settings:
    """What both sides' factories share: the zlib settings of the extension they build."""

    def __init__(self, compress_level: int, mem_level: int, min_size: int) -> None:
        self.compress_level = compress_level
        self.mem_level = mem_level
        self.min_size = min_size

    def _build(
        self,
        remote_no_context_takeover: bool,
        local_no_context_takeover: bool,
        remote_max_window_bits: int,
        local_max_window_bits: int,
        params: ExtensionParams,
    ) -> PerMessageDeflate:
        return PerMessageDeflate(
            remote_no_context_takeover,
            local_no_context_takeover,
            remote_max_window_bits,
            local_max_window_bits,
            compress_level=self.compress_level,
            mem_level=self.mem_level,
            min_size=self.min_size,
            params=params,
        )


class ServerPerMessageDeflateFactory(_Settings, ServerExtensionFactory):
    """The server's permessage-deflate negotiation.

    Args:
        server_no_context_takeover: reset our window after each message even if not asked.
        client_no_context_takeover: ask the client to reset its window after each message.
        server_max_window_bits: the largest window we compress with (9-15).
        client_max_window_bits: the largest window we ask the client to use, when it lets us.
        compress_level, mem_level, min_size: see :class:`PerMessageDeflate`.
    """

    name = NAME

    def __init__(
        self,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int = 12,
        client_max_window_bits: int = 12,
        compress_level: int = 6,
        mem_level: int = 5,
        min_size: int = 0,
    ) -> None:
        if not 9 <= server_max_window_bits <= 15:
            raise ValueError("server_max_window_bits must be from 9 to 15")
        if not 8 <= client_max_window_bits <= 15:
            raise ValueError("client_max_window_bits must be from 8 to 15")
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        super().__init__(compress_level, mem_level, min_size)

    def accept(self, offer: ExtensionParams) -> tuple[ExtensionParams, Extension] | None:
        try:
            seen = _check_params(offer, _PARAMS)
        except ValueError:
            # RFC 7692 §5: a server MUST decline an offer with an unknown, repeated or
            # invalid parameter.
            return None
        response: ExtensionParams = []
        server_nct = self.server_no_context_takeover or "server_no_context_takeover" in seen
        if server_nct:
            response.append(("server_no_context_takeover", None))
        client_nct = self.client_no_context_takeover or "client_no_context_takeover" in seen
        if client_nct:
            response.append(("client_no_context_takeover", None))
        # §7.1.2.1: answer with the same or a smaller value; we may also limit unasked.
        server_bits = min(_bits(seen.get("server_max_window_bits")), self.server_max_window_bits)
        if "server_max_window_bits" in seen or server_bits < 15:
            response.append(("server_max_window_bits", str(server_bits)))
        # §7.1.2.2: only when offered may the response carry client_max_window_bits.
        client_bits = 15
        if "client_max_window_bits" in seen:
            client_bits = min(_bits(seen["client_max_window_bits"]), self.client_max_window_bits)
            response.append(("client_max_window_bits", str(client_bits)))
        return response, self._build(client_nct, server_nct, client_bits, server_bits, response)


class ClientPerMessageDeflateFactory(_Settings, ClientExtensionFactory):
    """The client's permessage-deflate offer and the check of the server's answer.

    Args:
        server_no_context_takeover: ask the server to reset its window after each message.
        client_no_context_takeover: promise to reset ours after each message.
        server_max_window_bits: ask the server for at most this window (8-15), or ``None``.
        client_max_window_bits: ``True`` to let the server limit our window (what browsers
            offer), an int to offer a limit, ``False``/``None`` to leave it out.
        compress_level, mem_level, min_size: see :class:`PerMessageDeflate`.
    """

    name = NAME

    def __init__(
        self,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int | None = None,
        client_max_window_bits: int | bool | None = True,
        compress_level: int = 6,
        mem_level: int = 5,
        min_size: int = 0,
    ) -> None:
        if server_max_window_bits is not None and not 8 <= server_max_window_bits <= 15:
            raise ValueError("server_max_window_bits must be from 8 to 15")
        if (
            not isinstance(client_max_window_bits, bool)
            and client_max_window_bits is not None
            and not 8 <= client_max_window_bits <= 15
        ):
            raise ValueError("client_max_window_bits must be from 8 to 15")
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        super().__init__(compress_level, mem_level, min_size)

    def offer(self) -> ExtensionParams:
        params: ExtensionParams = []
        if self.server_no_context_takeover:
            params.append(("server_no_context_takeover", None))
        if self.client_no_context_takeover:
            params.append(("client_no_context_takeover", None))
        if self.server_max_window_bits is not None:
            params.append(("server_max_window_bits", str(self.server_max_window_bits)))
        if self.client_max_window_bits is True:
            params.append(("client_max_window_bits", None))
        elif self.client_max_window_bits:
            params.append(("client_max_window_bits", str(self.client_max_window_bits)))
        return params

    def accept(self, response: ExtensionParams) -> Extension:
        try:
            seen = _check_params(response, _PARAMS)
        except ValueError as exc:
            raise HandshakeError(f"invalid {NAME} response: {exc}") from None
        if self.server_no_context_takeover and "server_no_context_takeover" not in seen:
            raise HandshakeError(f"{NAME} response lacks server_no_context_takeover")
        server_bits = _bits(seen.get("server_max_window_bits"))
        if self.server_max_window_bits is not None:
            if "server_max_window_bits" not in seen:
                raise HandshakeError(f"{NAME} response lacks server_max_window_bits")
            if server_bits > self.server_max_window_bits:
                raise HandshakeError(f"{NAME} response raises server_max_window_bits")
        client_bits = 15
        if "client_max_window_bits" in seen:
            offered = self.client_max_window_bits
            if offered is None or offered is False:
                raise HandshakeError(f"{NAME} response has client_max_window_bits, not offered")
            if seen["client_max_window_bits"] is None:
                raise HandshakeError(f"{NAME} response has client_max_window_bits without value")
            client_bits = _bits(seen["client_max_window_bits"])
            if offered is not True and client_bits > offered:
                raise HandshakeError(f"{NAME} response raises client_max_window_bits")
        elif self.client_max_window_bits not in (None, True, False):
            # We promised to stay within our offered window.
            client_bits = int(self.client_max_window_bits)
        client_nct = self.client_no_context_takeover or "client_no_context_takeover" in seen
        server_nct = "server_no_context_takeover" in seen
        return self._build(server_nct, client_nct, server_bits, client_bits, response)
