"""Two server replicas on loopback sharing one PostgreSQL store that this test starts (Debian's `postgresql`).

An item added through one replica is served by the other within the documented delay (its poll interval plus the
time to read the row), with the same catalogue index and the same rankings; a duplicate id added through the other
replica is refused; a replica started later catches up with every item; replicas whose database connections
were cut connect again. Skipped, with the reason, where the
PostgreSQL server programs are not installed (`make test` installs them with apt-get when it runs as root).
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny import NUM_ITEMS, write_tiny_dataset
from tiny import text_only_model as text_model

from pmmrec.data import load_dataset
from pmmrec.serving import ServeOptions, build_service, create_app

POLL_S = 0.2  # the replicas' poll interval in this test; docs/serving.md states the bound for the default (1 s)


def _program(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (a free port), trust authentication, removed afterwards."""
    pytest.importorskip("psycopg", reason="needs psycopg (the serve extra)")
    initdb, pg_ctl = _program("initdb"), _program("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("needs Debian's postgresql server programs (initdb, pg_ctl); `make test` installs them with apt-get")
    # As root the server runs as the postgres user, which must reach the folder: /tmp, not a private TMPDIR.
    root = Path(tempfile.mkdtemp(prefix="pmmrec-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the package's postgres user
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        if shutil.which("runuser") is None:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no runuser to start PostgreSQL as the postgres user")
        os.chown(root, account.pw_uid, account.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = root / "data"
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on"
    try:
        subprocess.run([*run_as, initdb, "-D", str(data), "-U", "pmmrec", "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o", options, "start"], check=True, capture_output=True)
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise AssertionError(f"PostgreSQL did not start: {exc.stderr!r} {log}") from None
    try:
        yield f"postgresql://pmmrec@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


class Replica:
    """One server (its own model copy, service and uvicorn) on a loopback port, in a thread."""

    def __init__(self, data: Path, url: str) -> None:
        import uvicorn

        self.service = build_service(
            text_model(), load_dataset(data), options=ServeOptions(store_url=url, poll_interval=POLL_S)
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(service=self.service), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self.sock = sock

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        for _ in range(100):  # until uvicorn accepts (it starts in its thread)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())
            except urllib.error.URLError:
                time.sleep(0.05)
        raise AssertionError("the replica never answered")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def wait_for_item(replica: Replica, item_id: str, bound_s: float) -> float:
    """Seconds until `replica` serves `item_id`; fails past `bound_s`."""
    started = time.monotonic()
    while time.monotonic() - started < bound_s:
        if replica.call("GET", f"/items/{item_id}")[0] == 200:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{item_id} did not reach the other replica within {bound_s} s")


def test_two_replicas_share_one_postgres_catalogue(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PMMREC_CACHE", str(tmp_path / "cache"))
    data = write_tiny_dataset(tmp_path / "data", preset="serving")
    first, second = Replica(data, postgres_url), Replica(data, postgres_url)
    try:
        status, added = first.call("POST", "/items", {"item_id": "pg-1", "text": "Shared through PostgreSQL (2025)"})
        assert status == 201, added
        wait_for_item(second, "pg-1", bound_s=10 * POLL_S + 5)
        assert second.call("GET", "/items/pg-1")[1]["index"] == NUM_ITEMS + 1
        query = {"history": ["pg-1", "2"], "k": NUM_ITEMS, "exclude_seen": False}
        assert first.call("POST", "/recommend", query)[1] == second.call("POST", "/recommend", query)[1]

        duplicate = second.call("POST", "/items", {"item_id": "pg-1", "text": "Same id, other replica"})
        assert duplicate[0] == 409 and "already exists" in duplicate[1]["detail"]
        assert second.call("POST", "/items", {"item_id": "pg-2", "text": "Added through the second"})[0] == 201
        wait_for_item(first, "pg-2", bound_s=10 * POLL_S + 5)
        second.stop()

        assert first.call("POST", "/items", {"item_id": "pg-3", "text": "Added while the second was down"})[0] == 201
        restarted = Replica(data, postgres_url)  # catches up at start-up
        try:
            assert restarted.call("GET", "/health")[1]["added_items"] == 3
            assert [restarted.call("GET", f"/items/pg-{n}")[1]["index"] for n in (1, 2, 3)] == [
                first.call("GET", f"/items/pg-{n}")[1]["index"] for n in (1, 2, 3)
            ]
            query = {"history": ["pg-3", "pg-2"], "k": 10}
            assert restarted.call("POST", "/recommend", query)[1] == first.call("POST", "/recommend", query)[1]
            assert restarted.call("GET", "/health")[1]["store"].startswith("postgresql://pmmrec@127.0.0.1:")

            import psycopg

            with psycopg.connect(postgres_url, autocommit=True) as admin:  # drop every replica's connection
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = 'postgres'")
            assert first.call("POST", "/items", {"item_id": "pg-4", "text": "After the connections were cut"})[0] == 201
            wait_for_item(restarted, "pg-4", bound_s=10 * POLL_S + 5)
        finally:
            restarted.stop()
    finally:
        first.stop()
        if second.thread.is_alive():
            second.stop()
