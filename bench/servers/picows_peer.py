"""picows echo / broadcast / relay server for bench/peers.py: its callback API (WSListener,
frames rather than messages) on uvloop, as in picows's README echo example.

relay: each text/binary frame received is sent to every connected transport (a loop of
transport.send(), picows having no broadcast helper), the sender included.

Usage: python picows_peer.py {echo|broadcast|relay} HOST PORT [options of _peer_common.py]
"""

from __future__ import annotations

import asyncio
import signal

import uvloop
from _peer_common import HIGH_WATER, MAX_SIZE, parse_args, payload, raise_nofile
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

clients: set = set()


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            transport.send(msg_type, frame.get_payload_as_memoryview(), frame.fin)


class Hold(WSListener):
    def on_ws_connected(self, transport: WSTransport) -> None:
        clients.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        clients.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


class Relay(Hold):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            payload = frame.get_payload_as_memoryview()  # send() copies it into its frame
            for t in clients:
                t.send(msg_type, payload, frame.fin)
        else:
            super().on_ws_frame(transport, frame)


async def main() -> None:
    args = parse_args()
    loop = asyncio.get_running_loop()
    listener = {"echo": Echo, "relay": Relay}.get(args.mode, Hold)

    def factory(request: WSUpgradeRequest) -> WSListener:
        return listener()

    server = await ws_create_server(factory, args.host, args.port, max_frame_size=MAX_SIZE,
                                    backlog=1024)
    message = payload(args.size).encode()

    async def run() -> None:
        while len(clients) < args.clients:
            await asyncio.sleep(0.01)
        for i in range(1, args.messages + 1):
            for t in clients:
                t.send(WSMsgType.TEXT, message)
            if i % args.burst == 0:
                await asyncio.sleep(0)
                while max((t.underlying_transport.get_write_buffer_size()
                           for t in list(clients)), default=0) > HIGH_WATER:
                    await asyncio.sleep(0.001)
        print(f"sent {args.messages} to {len(clients)}", flush=True)

    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(run()))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    print(f"picows {args.mode} server on {args.host}:{args.port}", flush=True)
    await stop
    server.close()


if __name__ == "__main__":
    raise_nofile()
    uvloop.run(main())
