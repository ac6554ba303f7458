"""What an extension is to the core (RFC 6455 §9).

A *factory* takes part in the opening handshake: the client's factory writes offers and checks the
server's answer; the server's factory reads an offer and accepts it or declines it. Either way the
result is an *extension*: the negotiated, per-connection object that transforms messages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..headers import ExtensionParams

__all__ = ["Extension", "ServerExtensionFactory", "ClientExtensionFactory"]


class Extension(ABC):
    """A negotiated extension on one connection.

    tether's extensions work per message and use RSV1 to mark a transformed message, which is
    what permessage-deflate does; an extension that needs RSV2/RSV3 would widen this interface.
    """

    name: str

    @abstractmethod
    def params(self) -> ExtensionParams:
        """The negotiated parameters, as they appeared in the handshake response."""

    @abstractmethod
    def decode(self, payload: bytes, fin: bool, max_length: int | None) -> bytes:
        """Decode one frame's payload of a transformed message (RSV1 set on its first frame).

        Args:
            payload: the frame's payload, unmasked.
            fin: whether this is the last frame of the message.
            max_length: the most bytes the output may hold; ``None`` for no limit.

        Raises:
            MessageTooBig: the output would pass ``max_length``.
            ExtensionError: the payload cannot be decoded.
        """

    @abstractmethod
    def encode(self, payload: bytes) -> bytes | None:
        """Transform a whole outgoing message, or return ``None`` to send it untransformed."""

    def __str__(self) -> str:
        return "; ".join([self.name] + [k if v is None else f"{k}={v}" for k, v in self.params()])


class ServerExtensionFactory(ABC):
    """The server's side of negotiating one extension."""

    name: str

    @abstractmethod
    def accept(self, offer: ExtensionParams) -> tuple[ExtensionParams, Extension] | None:
        """Accept one offer: return the response parameters and the extension, or ``None`` to
        decline it (the server then tries the client's next offer)."""


class ClientExtensionFactory(ABC):
    """The client's side of negotiating one extension."""

    name: str

    @abstractmethod
    def offer(self) -> ExtensionParams:
        """The parameters of this extension's offer."""

    @abstractmethod
    def accept(self, response: ExtensionParams) -> Extension:
        """Check the server's accepted parameters and build the extension.

        Raises:
            HandshakeError: the response is not one this offer allows.
        """
