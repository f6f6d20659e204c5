"""`pmmrec serve --processes N` closes a keep-alive connection after `connection_requests` responses, so that its
client reconnects to the least busy process (pmmrec/serving/connections.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pmmrec.serving import RecommenderService, ServeOptions, create_app
from pmmrec.serving.connections import RecycleConnections


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _headers(app: RecycleConnections, client: tuple[str, int]) -> list[tuple[bytes, bytes]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "client": client}, None, send))
    return list(sent[0]["headers"])


def test_every_nth_response_on_a_connection_says_close() -> None:
    app = RecycleConnections(_ok, requests=3)
    one, other = ("127.0.0.1", 40001), ("127.0.0.1", 40002)
    closes = [(b"connection", b"close") in _headers(app, one) for _ in range(7)]
    assert closes == [False, False, True, False, False, True, False]  # the count starts again on the new connection
    assert (b"connection", b"close") not in _headers(app, other)  # counted per connection
    assert app.served == {one: 1, other: 1}
    with pytest.raises(ValueError, match="at least 1"):
        RecycleConnections(_ok, requests=0)


def _service(encoded: RecommenderService, options: ServeOptions) -> RecommenderService:
    table = encoded.snapshot().table.clone()
    return RecommenderService(encoded.model, encoded.item_ids, encoded.item_texts, table, users=encoded.view.users, options=options)


@pytest.mark.parametrize(("processes", "requests", "expected"), [(2, 2, [False, True, False, True]), (1, 2, [False] * 4), (2, 0, [False] * 4)])
def test_the_app_recycles_connections_only_for_several_processes(
    encoded: RecommenderService, processes: int, requests: int, expected: list[bool]
) -> None:
    options = ServeOptions(processes=processes, connection_requests=requests)
    client = TestClient(create_app(service=_service(encoded, options)))
    answers = [client.get("/health") for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.headers.get("connection") == "close" for a in answers] == expected
