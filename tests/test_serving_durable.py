"""Durable live items and restarts: the SQLite store, the table cache, merging live items into a dataset, and a
real `pmmrec serve` process killed with SIGKILL right after its 201 answers (single add and a concurrent burst).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import NUM_ITEMS, b64, png_bytes
from tiny import text_only_model as text_model

from pmmrec.data import load_dataset, write_dataset
from pmmrec.errors import DatasetError
from pmmrec.serving import ServeOptions, build_service, merge_live_items
from pmmrec.serving import runner as runner_module
from pmmrec.serving.store import SQLiteItemStore
from pmmrec.serving.table_cache import cache_path


def _service(env: dict[str, Path], state: Path, model: Any = None, **options: Any) -> Any:
    return build_service(
        model or text_model(),
        load_dataset(env["data"]),
        options=ServeOptions(state_dir=state, poll_interval=0, **options),
    )


# ---- in process ------------------------------------------------------------------------------------------


def test_live_items_survive_a_restart_bit_for_bit(serving_env: dict[str, Path], tmp_path: Path) -> None:
    first = _service(serving_env, tmp_path / "state")
    first.add_item("live-a", "The dragon garden of the north (2024)")
    first.add_item("live-b", "A red square", png_bytes(300))
    before = first.recommend(history=["live-a", "3"], k=NUM_ITEMS + 2, exclude_seen=False)
    table_before = first.snapshot().table.clone()
    first.close()
    second = _service(serving_env, tmp_path / "state")
    try:
        assert second.num_items == NUM_ITEMS + 2 and len(second.catalogue.added) == 2
        assert torch.equal(second.snapshot().table, table_before)  # stored embeddings, read back exactly
        assert second.recommend(history=["live-a", "3"], k=NUM_ITEMS + 2, exclude_seen=False) == before
        assert second.view.describe_item("live-b")["has_image"] is True
        assert Image.open(__import__("io").BytesIO(second.view.image_png("live-b"))).size == (224, 224)
    finally:
        second.close()


def test_a_duplicate_in_the_store_is_a_conflict_and_nothing_changes(serving_env: dict[str, Path], tmp_path: Path) -> None:
    service = _service(serving_env, tmp_path / "state")
    try:
        service.add_item("twice", "first")
        other = SQLiteItemStore(tmp_path / "state" / "items.sqlite3")  # another process added "race" meanwhile
        other.add("race", "from elsewhere", None, "another-model", np.zeros(4, np.float32))
        other.close()
        from pmmrec.serving import ServiceError

        with pytest.raises(ServiceError, match="already exists") as refused:
            service.add_item("race", "mine")
        assert refused.value.status == 409
        service.live.sync()  # the other process's item is encoded here (its stored vector is for another model)
        assert service.view.describe_item("race")["text"] == "from elsewhere"
    finally:
        service.close()


def test_the_table_cache_is_reused_and_rebuilt_when_anything_changes(
    serving_env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes: list[int] = []
    original = runner_module.encode_catalogue

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        encodes.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(runner_module, "encode_catalogue", counting)
    state = tmp_path / "state"
    cold = _service(serving_env, state)
    warm = _service(serving_env, state)
    assert len(encodes) == 1 and torch.equal(cold.snapshot().table, warm.snapshot().table)
    cold.close()
    warm.close()
    other_weights = text_model()
    with torch.no_grad():
        next(other_weights.user.parameters()).add_(0.01)  # only the user encoder changes: still a new key
    _service(serving_env, state, model=other_weights).close()
    assert len(encodes) == 2
    _service(serving_env, state, batching=False).close()  # serving options are not part of the key
    assert len(encodes) == 2
    files = sorted((state / "tables").glob("*.safetensors"))
    assert len(files) == 2
    for path in files:  # damage both caches: each is rebuilt, never served
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
    rebuilt = _service(serving_env, state)
    assert len(encodes) == 3 and torch.equal(rebuilt.snapshot().table, cold.snapshot().table)
    rebuilt.close()
    dataset = load_dataset(serving_env["data"])
    texts = [*dataset.item_texts[:-1], "An edited last title (1999)"]
    edited = write_dataset(
        tmp_path / "edited", name=dataset.name, item_ids=dataset.item_ids, item_texts=texts, user_ids=dataset.user_ids,
        user_items=[[dataset.item_ids[i - 1] for i in seq] for seq in dataset.sequences], provenance={}, preprocessing={},
    )  # fmt: skip
    _service({**serving_env, "data": edited}, state).close()
    assert len(encodes) == 4
    assert len(list((state / "tables").glob("*.safetensors"))) == 3 and cache_path(state, "x").parent == state / "tables"


def test_merge_live_items_writes_a_new_dataset_folder(serving_env: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "state"
    service = _service(serving_env, state)
    service.add_item("m-1", "Merged text item (2025)")
    service.add_item("m-2", "Merged picture item (2025)", png_bytes(100, (10, 200, 30)))
    service.close()
    before = {path.name: path.read_bytes() for path in serving_env["data"].iterdir() if path.is_file()}
    report = merge_live_items(state, serving_env["data"], tmp_path / "merged")
    assert report["merged"] == 2 and report["already_present"] == 0
    merged = load_dataset(tmp_path / "merged")
    assert merged.item_ids[-2:] == ["m-1", "m-2"] and merged.num_items == NUM_ITEMS + 2
    assert merged.user_ids == load_dataset(serving_env["data"]).user_ids
    store = merged.image_store()
    assert store is not None
    pixels = store.get("m-2")
    assert pixels is not None and pixels.shape[:2] == (merged.info["image_size"],) * 2
    assert tuple(pixels[5, 5]) == (10, 200, 30)
    assert "m-1" in merged.info["items_without_images"]
    assert {path.name: path.read_bytes() for path in serving_env["data"].iterdir() if path.is_file()} == before
    again = merge_live_items(state, tmp_path / "merged", tmp_path / "merged-again")  # idempotent
    assert again["merged"] == 0 and again["already_present"] == 2
    with pytest.raises(DatasetError, match="already exists"):
        merge_live_items(state, serving_env["data"], tmp_path / "merged")
    clash = SQLiteItemStore(state / "items.sqlite3")
    clash.add("3", "Not the dataset's text for item 3", None, "k", np.zeros(4, np.float32))
    clash.close()
    with pytest.raises(DatasetError, match=r"1 live item ids are in .* with another text: '3'"):
        merge_live_items(state, serving_env["data"], tmp_path / "merged-clash")
    with pytest.raises(DatasetError, match="not a pmmrec serve state folder"):
        merge_live_items(tmp_path / "nothing", serving_env["data"], tmp_path / "merged-none")


# ---- a real server process, killed -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _call(
    port: int, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 60
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _call_whoever_answers(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """`_call` on new connections until one is answered within 10 s (a first add loads the item encoders): with
    `--processes`, each connection goes to one process's socket by a hash of its address, so one that lands on a
    stopped process is given up for the next."""
    for _ in range(20):
        try:
            return _call(port, method, path, body, timeout=10)
        except (TimeoutError, urllib.error.URLError):  # HTTP errors are answers: `_call` returns them
            continue
    raise AssertionError(f"{method} {path}: no process answered 20 connections")


class Server:
    """`pmmrec serve` in a child process; ready once it prints its start-up line and /health answers."""

    def __init__(self, env: dict[str, Path], state: Path, extra: tuple[str, ...] = ()) -> None:
        self.port = _free_port()
        command = [sys.executable, "-m", "pmmrec", "serve", "--model", str(env["model"]), "--data", str(env["data"])]
        command += ["--state", str(state), "--port", str(self.port), "--quiet", *extra]
        environment = os.environ | {"PMMREC_CACHE": str(env["cache"]), "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
        self.output: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:  # blocks until the server says it is up (or exits)
            self.output.append(line)
            if "Uvicorn running on" in line or "processes listening on" in line:
                break
        else:
            raise AssertionError("the server exited before listening:\n" + "".join(self.output))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        self.output.extend(self.process.stdout)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)


def test_items_survive_sigkill_right_after_201_single_and_concurrent_burst(serving_env: dict[str, Path], tmp_path: Path) -> None:
    state = tmp_path / "state"
    server = Server(serving_env, state)
    try:
        status, added = _call(server.port, "POST", "/items", {"item_id": "solo", "text": "Killed right after (2025)"})
        assert status == 201, added
        server.kill()  # nothing else happens between the 201 and the kill
        server = Server(serving_env, state)
        status, item = _call(server.port, "GET", "/items/solo")
        assert status == 200 and item["added"] is True and item["index"] == NUM_ITEMS + 1
        assert _call(server.port, "POST", "/recommend", {"history": ["solo"], "k": 5})[0] == 200

        answers: list[tuple[int, Any]] = []
        lock = threading.Lock()

        def add(n: int) -> None:
            picture = {"image_base64": b64(png_bytes(48, (n * 20, 90, 200)))} if n % 2 else {}
            answer = _call(server.port, "POST", "/items", {"item_id": f"burst-{n}", "text": f"Burst item {n}", **picture})
            with lock:
                answers.append(answer)

        threads = [threading.Thread(target=add, args=(n,)) for n in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [status for status, _ in answers] == [201] * 10, answers
        during = _call(server.port, "POST", "/recommend", {"history": ["burst-3", "solo"], "k": 50, "exclude_seen": False})[1]
        server.kill()
        server = Server(serving_env, state)
        health = _call(server.port, "GET", "/health")[1]
        assert health["items"] == NUM_ITEMS + 11 and health["added_items"] == 11
        after = _call(server.port, "POST", "/recommend", {"history": ["burst-3", "solo"], "k": 50, "exclude_seen": False})[1]
        assert after == during  # same items, same order, same scores
        assert _call(server.port, "GET", "/items/burst-1")[1]["has_image"] is True
        assert (state / "items.sqlite3-wal").exists()  # the open store's write-ahead log
        server.process.send_signal(signal.SIGTERM)  # graceful: finishes requests, closes the store, then exits
        status = server.process.wait(timeout=60)
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status says SIGTERM
        assert status in (0, -signal.SIGTERM), "".join(server.output)
        assert "Application shutdown complete" in "".join(server.output)
        assert not (state / "items.sqlite3-wal").exists()  # closed cleanly: the log was checkpointed into the file
    finally:
        if server.process.poll() is None:
            server.kill()


def _copies_of(pid: int) -> list[int]:
    """The `pmmrec serve --processes` copies among `pid`'s children (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children if b"pmmrec.serving.copies" in Path(f"/proc/{child}/cmdline").read_bytes()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux /proc")
def test_processes_share_the_port_and_the_live_items(serving_env: dict[str, Path], tmp_path: Path) -> None:
    """`--processes 2`: a copy serves the same port; an item added through the copy is answered by the parent
    after the store's poll; stopping the parent stops the copy. Which process answers is forced by pausing the other
    (SIGSTOP): connections that land on the paused one's socket are given up and tried again."""
    server = Server(serving_env, tmp_path / "state", ("--processes", "2"))
    parent = server.process.pid
    try:
        deadline = time.monotonic() + 120
        while "".join(server.output).count("Application startup complete") < 2:  # the copy is up too (same output)
            assert time.monotonic() < deadline and server.process.poll() is None, "".join(server.output)
            time.sleep(0.1)
        copies = _copies_of(parent)
        assert len(copies) == 1
        os.kill(parent, signal.SIGSTOP)  # only the copy answers
        try:
            item = {"item_id": "shared", "text": "Seen by both (2026)"}
            status, added = _call_whoever_answers(server.port, "POST", "/items", item)
            assert status == 201, added
            assert _call_whoever_answers(server.port, "GET", "/items/shared")[0] == 200
        finally:
            os.kill(parent, signal.SIGCONT)
        os.kill(copies[0], signal.SIGSTOP)  # only the parent answers
        try:
            time.sleep(2.5)  # the parent polls the store every second
            status, item = _call_whoever_answers(server.port, "GET", "/items/shared")
            assert status == 200 and item["added"] is True, item
        finally:
            os.kill(copies[0], signal.SIGCONT)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=90) in (0, -signal.SIGTERM), "".join(server.output)
        copy = Path(f"/proc/{copies[0]}")
        deadline = time.monotonic() + 45  # the copy got SIGTERM with its parent's death and shuts down gracefully
        while copy.exists() and "Z" not in (copy / "stat").read_text().rsplit(")", 1)[1].split()[:1]:
            assert time.monotonic() < deadline, "the copy outlived its parent"
            time.sleep(0.2)
    finally:
        if server.process.poll() is None:
            os.kill(parent, signal.SIGCONT)
            server.kill()
