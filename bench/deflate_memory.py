"""Memory per connection of permessage-deflate, measured with tracemalloc.

zlib allocates through PyMem_RawMalloc, so tracemalloc sees its windows and hash tables. For each
setting, the script opens N connection pairs with the sans-I/O core (no sockets), then measures
what the first compressed message allocates: the compressor on the sending side, the
decompressor on the receiving side. Messages kept alive are subtracted. Both objects are created
lazily, so a connection that negotiated compression but never used it pays nothing.

    python bench/deflate_memory.py [--connections 200]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc

from tether.protocol import ClientProtocol, ServerProtocol, parse_uri
from tether.protocol.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)

MESSAGE = ("tether " * 200).encode()
Pair = tuple[ServerProtocol, ClientProtocol]


def open_pair(server_factory: ServerPerMessageDeflateFactory,
              client_factory: ClientPerMessageDeflateFactory) -> Pair:
    client = ClientProtocol(parse_uri("ws://localhost/"), extensions=[client_factory])
    server = ServerProtocol(extensions=[server_factory])
    client.send_request(client.connect())
    for data in client.data_to_send():
        server.receive_data(data)
    [request] = server.events_received()
    server.send_response(server.accept(request))
    for data in server.data_to_send():
        client.receive_data(data)
    client.events_received()
    assert server.extension is not None and client.extension is not None
    return server, client


def traced(action: "list[object]", run: "object") -> int:
    """Bytes still allocated after ``run()``; what it returns is kept in ``action``."""
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    action.append(run())  # type: ignore[operator]
    used = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    return used


def compressor_cost(n: int, sf: ServerPerMessageDeflateFactory,
                    cf: ClientPerMessageDeflateFactory) -> float:
    pairs = [open_pair(sf, cf) for _ in range(n)]
    kept: list[object] = []

    def send_all() -> list[list[bytes]]:
        outputs = []
        for server, _ in pairs:
            server.send_text(MESSAGE)
            outputs.append(server.data_to_send())
        return outputs

    used = traced(kept, send_all)
    outputs = kept[0]
    assert isinstance(outputs, list)
    retained = sum(sys.getsizeof(out) + sum(sys.getsizeof(b) for b in out) for out in outputs)
    return (used - retained - sys.getsizeof(outputs)) / n


def decompressor_cost(n: int, sf: ServerPerMessageDeflateFactory,
                      cf: ClientPerMessageDeflateFactory) -> float:
    sample_server, _ = open_pair(sf, cf)
    sample_server.send_text(MESSAGE)
    wire = b"".join(sample_server.data_to_send())  # a first message: decodable by any peer
    pairs = [open_pair(sf, cf) for _ in range(n)]
    kept: list[object] = []

    def receive_all() -> list[object]:
        events = []
        for _, client in pairs:
            client.receive_data(wire)
            events.append(client.events_received())
        return events

    used = traced(kept, receive_all)
    events = kept[0]
    assert isinstance(events, list)
    retained = sys.getsizeof(events) + sum(
        sys.getsizeof(e) + sum(sys.getsizeof(ev) + sys.getsizeof(ev[0]) for ev in e)
        for e in events
    )
    return (used - retained) / n


SETTINGS = [
    ("tether's defaults: window 12 both ways, memLevel 5",
     dict(), dict()),
    ("zlib's defaults: window 15, memLevel 8",
     dict(server_max_window_bits=15, client_max_window_bits=15, mem_level=8), dict(mem_level=8)),
    ("smallest: window 9, memLevel 1",
     dict(server_max_window_bits=9, client_max_window_bits=9, mem_level=1), dict(mem_level=1)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    n = parser.parse_args().connections
    print(f"{n} connections, one {len(MESSAGE)}-byte text message each\n")
    print("| settings | compressor (to send) | decompressor (to receive) |")
    print("|---|---|---|")
    for label, server_options, client_options in SETTINGS:
        sf = ServerPerMessageDeflateFactory(**server_options)  # type: ignore[arg-type]
        cf = ClientPerMessageDeflateFactory(**client_options)  # type: ignore[arg-type]
        print(f"| {label} | {compressor_cost(n, sf, cf) / 1024:.1f} KiB "
              f"| {decompressor_cost(n, sf, cf) / 1024:.1f} KiB |")


if __name__ == "__main__":
    main()
