"""`pmmrec serve --processes N` keeps its processes' busy connections even: each counts its own on a shared board,
and one with two or more above the least busy closes a connection after its response (serving/connections.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pmmrec.serving import RecommenderService, ServeOptions, connections, create_app
from pmmrec.serving.connections import BalanceConnections, ConnectionBoard

CLOSE = (b"connection", b"close")


async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _closes(app: BalanceConnections, port: int) -> bool:
    """One request from 127.0.0.1:port; whether its response closes the connection."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "client": ("127.0.0.1", port)}, None, send))
    return CLOSE in sent[0]["headers"]


def test_a_process_two_connections_above_the_least_busy_closes_until_even() -> None:
    board = ConnectionBoard.create(2)
    other = ConnectionBoard(board.fd, 2, 1)
    app = BalanceConnections(_ok, board)
    assert board.others() == []  # the other process has never written: not compared
    assert [_closes(app, port) for port in (1, 2, 3)] == [False] * 3  # nobody else: never closed
    other.publish(0)
    assert board.others() == [0]
    assert _closes(app, 4) is True  # 4 busy here, 0 there: this connection goes
    assert other.others() == [3]  # what this process published: the 3 left
    assert _closes(app, 1) is True  # 3 against 0
    assert _closes(app, 2) is True  # 2 against 0: one more moves (1 and 1, or 2 and 0 again if it lands here)
    assert _closes(app, 3) is False  # 1 against 0: even enough
    assert other.others() == [1]
    other.publish(1)
    assert _closes(app, 5) is False  # 2 against 1


def test_a_lone_connection_is_never_closed_and_stale_slots_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    board = ConnectionBoard.create(3)
    app = BalanceConnections(_ok, board)
    ConnectionBoard(board.fd, 3, 1).publish(0)
    assert [_closes(app, 7) for _ in range(5)] == [False] * 5  # one connection: 1 < 0 + 2
    now = time.monotonic()
    monkeypatch.setattr(connections.time, "monotonic", lambda: now + connections.STALE_SECONDS + 1)
    assert board.others() == []  # process 1 has not written for longer than STALE_SECONDS
    with pytest.raises(ValueError, match="outside"):
        ConnectionBoard(board.fd, 3, 3)


def test_the_board_is_shared_with_a_process_given_its_descriptor() -> None:
    board = ConnectionBoard.create(2)
    code = (
        "import sys; from pmmrec.serving.connections import ConnectionBoard as B; "
        "B(int(sys.argv[1]), 2, 1).publish(5)"
    )
    subprocess.run([sys.executable, "-c", code, str(board.fd)], check=True, pass_fds=(board.fd,))
    assert board.others() == [5]


def _service(encoded: RecommenderService, options: ServeOptions) -> RecommenderService:
    table = encoded.snapshot().table.clone()
    return RecommenderService(encoded.model, encoded.item_ids, encoded.item_texts, table, users=encoded.view.users, options=options)


@pytest.mark.parametrize("balance", [True, False])
def test_the_app_balances_only_with_a_board_and_the_option_on(encoded: RecommenderService, balance: bool) -> None:
    board = ConnectionBoard.create(2)
    ConnectionBoard(board.fd, 2, 1).publish(0)
    options = ServeOptions(processes=2, balance_connections=balance)
    with_board = TestClient(create_app(service=_service(encoded, options), connection_board=board))
    without = TestClient(create_app(service=_service(encoded, options)))
    for client in (with_board, without):
        answers = [client.get("/health", headers={}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200] * 3
        # TestClient is one connection (one client address): a lone connection is never closed
        assert all(a.headers.get("connection") != "close" for a in answers)
    assert board.others() == [0]
    # what the app published in its own slot: its one busy connection, or nothing with balancing off
    assert ConnectionBoard(board.fd, 2, 1).others() == ([1] if balance else [])


def test_batching_defaults_depend_on_the_number_of_processes() -> None:
    """One process: 2 ranking threads, 2 ms of batch wait; several: 1 thread each and 5 ms (docs/benchmarks.md)."""
    assert (ServeOptions().ranking_threads, ServeOptions().batch_wait_s) == (2, 0.002)
    assert (ServeOptions(processes=3).ranking_threads, ServeOptions(processes=3).batch_wait_s) == (1, 0.005)
    given = ServeOptions(processes=3, batch_workers=2, batch_wait_ms=1.0)
    assert (given.ranking_threads, given.batch_wait_s) == (2, 0.001)
