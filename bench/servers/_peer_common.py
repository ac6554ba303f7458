"""Shared bits of the peer servers in this folder (bench/peers.py starts them).

Every server takes: MODE HOST PORT [--clients K] [--messages N] [--size S] [--burst B]
(the options only matter to broadcast mode)

  echo       echo every message back, same type (text/binary); compression off.
  broadcast  accept connections and keep them (the clients only read); on SIGUSR2, wait
             until K clients are connected, then send N text messages of S bytes to every
             one of them, B messages per turn of the event loop, waiting while some
             connection has more than HIGH_WATER bytes unsent (so nobody is dropped).
  relay      every message a client sends goes to every open connection, the sender
             included, with the library's usual way of broadcasting (peers.py's e: the
             independent checker's load, where one client sends and every client receives).
"""

from __future__ import annotations

import argparse
import resource

HIGH_WATER = 256 * 1024
MAX_SIZE = 2_000_000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["echo", "broadcast", "relay"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--messages", type=int, default=300)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--burst", type=int, default=10)
    return p.parse_args()


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def payload(size: int) -> str:
    return ("0123456789abcdefghijklmnopqrstuvwxyz" * (size // 36 + 1))[:size]
