"""Closing keep-alive connections after a number of requests, so that `pmmrec serve --processes N` stays balanced.

The processes accept on one listening socket; the kernel gives each new connection to whichever process accepts
first. Clients that keep their connections open (HTTP/1.1 keep-alive: load balancers, SDKs, the load benchmark)
connect once, so the split at that moment decides each process's share for good: 14 of 16 connections on one of two
processes serves 460 requests/s where an even split serves 650 (docs/benchmarks.md, "Connections over processes").
Closing a connection after `requests` responses (`Connection: close`, as nginx's keepalive_requests does) makes its
client reconnect; the process with the least work is the likeliest to be waiting in accept, so connections drift
to the idle process. A reconnect costs a loopback TCP handshake every `requests` requests.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

CLOSE_HEADER = (b"connection", b"close")
MAX_TRACKED = 65_536  # connections whose counts are kept; the oldest are forgotten (a forgotten one starts again at 0)


class RecycleConnections:
    """ASGI middleware: the `requests`-th response on a connection carries `Connection: close`."""

    def __init__(self, app: Any, requests: int) -> None:
        if requests < 1:
            raise ValueError("requests must be at least 1")
        self.app = app
        self.requests = requests
        self.served: OrderedDict[tuple[str, int], int] = OrderedDict()  # (client host, port) -> responses so far

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if client is None:
            await self.app(scope, receive, send)
            return
        key = (client[0], client[1])
        count = self.served.pop(key, 0) + 1
        if count < self.requests:
            self.served[key] = count
            if len(self.served) > MAX_TRACKED:
                self.served.popitem(last=False)
            await self.app(scope, receive, send)
            return

        async def closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), CLOSE_HEADER]}
            await send(message)

        await self.app(scope, receive, closing)
