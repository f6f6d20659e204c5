"""Keeping `pmmrec serve --processes N` balanced: each process's busy connections on a shared board, and a
connection closed where its process has more than its share.

Every process listens on its own socket of one SO_REUSEPORT group (pmmrec/serving/copies.py), so the kernel gives
each new connection to a process by a hash of the client's address and port: blind to load. Clients that keep their
connections open (HTTP/1.1 keep-alive: load balancers, SDKs, the load benchmark) connect once, so that first draw
decides each process's share for good: 12 of 16 connections on one of two processes is a common draw, and 14 of 16
serves 460 requests/s where 8 and 8 serve 650 (docs/benchmarks.md, "Connections over processes"). So each process
counts its busy connections (those with a request in the last second) on a board in shared memory, and answers a
request with `Connection: close` when it has at least two more than the least busy live process: the client
reconnects, and the kernel draws again. One process, or a connection alone, is never closed.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import time
from typing import Any

CLOSE_HEADER = (b"connection", b"close")
SLOT = struct.Struct("<qd")  # busy connections, monotonic time of the last update
BUSY_SECONDS = 1.0  # a connection with a request within this long counts as busy
STALE_SECONDS = 5.0  # a slot not updated for this long is a process gone (or idle): left out of the comparison


class ConnectionBoard:
    """N slots in a shared memory map, one per process; each process writes only its own (no lock needed)."""

    def __init__(self, fd: int, processes: int, index: int) -> None:
        if not 0 <= index < processes:
            raise ValueError(f"process index {index} outside 0..{processes - 1}")
        self.fd, self.processes, self.index = fd, processes, index
        self.map = mmap.mmap(fd, SLOT.size * processes)

    @classmethod
    def create(cls, processes: int) -> ConnectionBoard:
        """A new zeroed board (an unlinked temporary file: its descriptor is what the copies inherit) as process 0."""
        with tempfile.TemporaryFile() as handle:
            fd = os.dup(handle.fileno())
        os.ftruncate(fd, SLOT.size * processes)
        return cls(fd, processes, 0)

    def publish(self, busy: int) -> None:
        SLOT.pack_into(self.map, SLOT.size * self.index, busy, time.monotonic())

    def others(self) -> list[int]:
        """The busy-connection counts of the other live processes."""
        now, counts = time.monotonic(), []
        for index in range(self.processes):
            if index != self.index:
                busy, updated = SLOT.unpack_from(self.map, SLOT.size * index)
                if now - updated < STALE_SECONDS:
                    counts.append(busy)
        return counts


class BalanceConnections:
    """ASGI middleware: closes a connection (after its response) while this process has two or more busy
    connections above the least busy live process on `board`."""

    def __init__(self, app: Any, board: ConnectionBoard) -> None:
        self.app = app
        self.board = board
        self.seen: dict[tuple[str, int], float] = {}  # (client host, port) -> monotonic time of its last request
        self.pruned = 0.0

    def _busy(self, now: float) -> int:
        if now - self.pruned > BUSY_SECONDS / 4:  # drop connections quiet for a while (closed ones among them)
            self.seen = {client: at for client, at in self.seen.items() if now - at < BUSY_SECONDS}
            self.pruned = now
        return len(self.seen)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if client is None:
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        key = (client[0], client[1])
        self.seen[key] = now
        busy = self._busy(now)
        others = self.board.others()
        close = bool(others) and busy >= min(others) + 2
        if close:
            del self.seen[key]  # its client reconnects: maybe here again, then it counts again
        self.board.publish(busy - close)
        if not close:
            await self.app(scope, receive, send)
            return

        async def closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), CLOSE_HEADER]}
            await send(message)

        await self.app(scope, receive, closing)
