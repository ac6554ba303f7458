"""The bare ASGI app that bench/asgi.py runs under every ASGI server (the same code for all).

  any other path  echo: each ``websocket.receive`` is sent back as it came (text as text,
                  bytes as bytes), one ``await send()`` per message.
  /relay          relay (e, the independent checker's load: ``loadgen relay --path /relay``):
                  accepted, its ``send`` registered in a module-level set until it
                  disconnects; each ``websocket.receive`` on any of them is sent to every
                  registered connection, the sender included, ``await send(...)`` for each
                  in turn (text as text, bytes as bytes).
  /bcast          subscriber (the old e, asgi.py --e-load push): accepted, its ``send``
                  registered in a module-level set until it disconnects; it only reads
                  (``loadgen broadcast --path /bcast``).
  /trigger        the driver's control connection: each text message "K M S B" waits until
                  K subscribers are registered, then sends M text messages of S bytes to every
                  subscriber, ``await send(...)`` for each in turn, and ``await
                  asyncio.sleep(0)`` after every B messages (one turn of the event loop, as
                  peers.py's broadcast servers do); then it answers "sent M to N".

HTTP requests get 404; the lifespan protocol is answered (every server here speaks it).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

subscribers: set[Send] = set()
relays: set[Send] = set()


def payload(size: int) -> str:  # as bench/servers/_peer_common.py
    return ("0123456789abcdefghijklmnopqrstuvwxyz" * (size // 36 + 1))[:size]


async def broadcast(clients: int, messages: int, size: int, burst: int) -> int:
    while len(subscribers) < clients:
        await asyncio.sleep(0.01)
    targets = list(subscribers)
    event = {"type": "websocket.send", "text": payload(size)}
    for i in range(1, messages + 1):
        for send in targets:
            await send(event)
        if i % burst == 0:
            await asyncio.sleep(0)
    return len(targets)


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if kind == "http":
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"not found\n"})
        return
    if kind != "websocket":
        return
    message = await receive()  # websocket.connect
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    path = scope["path"]
    if path == "/relay":
        relays.add(send)
        try:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return
                text = message.get("text")
                event = ({"type": "websocket.send", "text": text} if text is not None
                         else {"type": "websocket.send", "bytes": message["bytes"]})
                for target in tuple(relays):  # a copy: connections come and go meanwhile
                    await target(event)
        finally:
            relays.discard(send)
    if path == "/bcast":
        subscribers.add(send)
        try:
            while (await receive())["type"] == "websocket.receive":
                pass
        finally:
            subscribers.discard(send)
        return
    if path == "/trigger":
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            k, m, s, b = (int(v) for v in message["text"].split())
            n = await broadcast(k, m, s, b)
            await send({"type": "websocket.send", "text": f"sent {m} to {n}"})
    while True:  # echo
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
