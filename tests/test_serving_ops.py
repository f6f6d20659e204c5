"""Operating the server: API key, /metrics, graceful shutdown, the image work budget, streamed bodies over the
limit, offline /docs assets, micro-batched ranking and the optional ANN index (exact exclusion, cached)."""

from __future__ import annotations

import resource
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from tiny import NUM_ITEMS, b64, png_bytes

from pmmrec.data import load_dataset
from pmmrec.ranking import RankQuery, csr, rank_histories, top_k
from pmmrec.serving import AnnConfig, AnnIndex, Limits, RecommenderService, ServeOptions, build_service, create_app
from pmmrec.serving.batching import MicroBatcher, Ranked
from pmmrec.serving.runner import read_api_key

KEY = "s3cret-key-for-the-tests"


def _fresh(encoded: RecommenderService, **kwargs: Any) -> RecommenderService:
    return RecommenderService(
        encoded.model, encoded.item_ids, encoded.item_texts, encoded.snapshot().table.clone(), users=encoded.view.users, **kwargs
    )


def strip_png(width: int, height: int) -> bytes:
    """A valid PNG of width x height black grey pixels, written by hand so the test never allocates the pixels."""
    raw = zlib.compressobj(9)
    row = b"\0" + b"\0" * width
    body = b"".join(raw.compress(row) for _ in range(height)) + raw.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


# ---- API key ---------------------------------------------------------------------------------------------


def test_an_api_key_protects_adding_items_and_reads_stay_open(encoded: RecommenderService) -> None:
    client = TestClient(create_app(service=_fresh(encoded), api_key=KEY))
    item = {"item_id": "k-1", "text": "Keyed item"}
    refused = client.post("/items", json=item)
    assert refused.status_code == 401 and "API key" in refused.json()["detail"]
    assert client.post("/items", json=item, headers={"X-API-Key": "wrong-" + KEY}).status_code == 401
    assert client.post("/items", json=item, headers={"X-API-Key": KEY}).status_code == 201
    assert client.post("/items", json={**item, "item_id": "k-2"}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 201
    assert client.post("/recommend", json={"history": ["1"]}).status_code == 200
    assert client.get("/items/k-1").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "401" in spec["paths"]["/items"]["post"]["responses"]


def test_protect_reads_needs_the_key_everywhere_but_health_and_metrics(encoded: RecommenderService) -> None:
    client = TestClient(create_app(service=_fresh(encoded, options=ServeOptions(protect_reads=True)), api_key=KEY))
    assert client.post("/recommend", json={"history": ["1"]}).status_code == 401
    assert client.post("/recommend", json={"history": ["1"]}, headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200


def test_the_api_key_comes_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PMMREC_API_KEY", raising=False)
    assert read_api_key(None) is None
    (tmp_path / "key").write_text(KEY + "\n", encoding="utf-8")
    assert read_api_key(tmp_path / "key") == KEY
    monkeypatch.setenv("PMMREC_API_KEY", "env-" + KEY)
    assert read_api_key(None) == "env-" + KEY
    (tmp_path / "short").write_text("abc", encoding="utf-8")
    with pytest.raises(Exception, match=r"--api-key-file .*short: the key must be at least 16 characters"):
        read_api_key(tmp_path / "short")
    with pytest.raises(Exception, match=r"--api-key-file .*absent: cannot read it"):
        read_api_key(tmp_path / "absent")


# ---- metrics and shutdown ----------------------------------------------------------------------------------


def test_metrics_count_requests_per_endpoint_and_items(encoded: RecommenderService) -> None:
    client = TestClient(create_app(service=_fresh(encoded)))
    for _ in range(3):
        client.post("/recommend", json={"history": ["1", "2"]})
    client.get("/items/5")
    client.get("/items/nope")
    client.post("/items", json={"item_id": "m-1", "text": "Counted"})
    client.post("/recommend", content=b"x" * (9 * 1024 * 1024))  # refused by the body limit, counted too
    text = client.get("/metrics").text
    assert 'pmmrec_http_requests_total{endpoint="/recommend",method="POST",status="200"} 3.0' in text
    assert 'pmmrec_http_requests_total{endpoint="/items/{item_id}",method="GET",status="404"} 1.0' in text
    assert 'pmmrec_http_requests_total{endpoint="/items",method="POST",status="201"} 1.0' in text
    assert 'status="413"' in text
    assert 'pmmrec_http_request_duration_seconds_count{endpoint="/recommend",method="POST"} 3.0' in text
    assert f"pmmrec_catalogue_items {NUM_ITEMS + 1}.0" in text
    assert "pmmrec_items_added_total 1.0" in text and "pmmrec_live_items 1.0" in text


def test_shutdown_finishes_the_request_in_flight_then_closes_the_service(
    encoded: RecommenderService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What uvicorn does on SIGTERM (`handle_exit`) while a POST /items is inside its handler."""
    import socket
    import urllib.request

    import uvicorn

    service = _fresh(encoded)
    entered, release = threading.Event(), threading.Event()
    original = service.add_item

    def slow_add(*args: Any) -> dict[str, Any]:
        entered.set()
        release.wait(30)
        return original(*args)

    monkeypatch.setattr(service, "add_item", slow_add)
    closed = threading.Event()
    monkeypatch.setattr(service, "close", closed.set)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    server = uvicorn.Server(uvicorn.Config(create_app(service=service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    answers: list[int] = []

    def post() -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{sock.getsockname()[1]}/items",
            data=b'{"item_id": "in-flight", "text": "Finished during shutdown"}',
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answers.append(response.status)

    client = threading.Thread(target=post)
    client.start()
    assert entered.wait(30)
    server.handle_exit(15, None)  # SIGTERM
    assert not closed.is_set()  # the store stays open while a request is in flight
    release.set()
    client.join(30)
    thread.join(30)
    sock.close()
    assert answers == [201] and closed.is_set() and not thread.is_alive()
    assert service.view.describe_item("in-flight")["added"] is True


# ---- hostile input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height", "status", "needle"), [
    (400_000, 100, 422, "aspect ratio 4,000:1 is over the limit of 20:1"),
    (40_000_000, 1, 422, "aspect ratio 40,000,000:1"),
    (8_000, 6_000, 413, "image is 8000x6000 pixels; at most 40,000,000 pixels"),
])  # fmt: skip
def test_absurd_image_shapes_are_refused_before_decoding(
    client: TestClient, width: int, height: int, status: int, needle: str
) -> None:
    data = strip_png(width, height)
    response = client.post("/items", json={"item_id": "strip", "text": "A strip", "image_base64": b64(data)})
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]


def test_absurd_images_take_no_memory_in_a_fresh_process() -> None:
    """Peak memory of decoding both hostile strips through the budget, measured in a process of its own."""
    script = (
        "import resource, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_serving_ops import strip_png\n"
        "from pmmrec.serving.images import decode_image\n"
        "from pmmrec.serving.limits import LIMITS, ServiceError\n"
        "blobs = [strip_png(400_000, 100), strip_png(40_000_000, 1)]\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for blob in blobs:\n"
        "    try:\n"
        "        decode_image(blob, LIMITS, [224])\n"
        "    except ServiceError as exc:\n"
        "        print(exc.status)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    lines = result.stdout.split()
    assert result.returncode == 0, result.stderr
    assert lines[:2] == ["422", "422"]
    assert int(lines[2]) < 50, f"refusing the strips took {lines[2]} MiB"  # the pixels alone would be 120 MiB
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_a_streamed_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"item_id": "big", "text": "x", "image_base64": "'
        for _ in range(10):
            yield b"A" * (1024 * 1024)
        yield b'"}'

    response = client.post("/items", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "request body is larger than 8,388,608 bytes" in response.json()["detail"]
    small = client.post("/recommend", content=iter([b'{"history": ', b'["1"]}']), headers={"content-type": "application/json"})
    assert small.status_code == 200


def test_docs_assets_are_served_locally(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc's bundle loads its logo from a CDN: not offered


# ---- batching ----------------------------------------------------------------------------------------------


def _rank(encoded: RecommenderService, queries: list[RankQuery]) -> list[Ranked]:
    """Rank as the service does: its user encoder over its current table."""
    user, table = encoded.served.user, encoded.snapshot().table
    rankings = rank_histories(user, table, queries, max_length=encoded.served.max_length)
    return [Ranked(list(zip(r.indices.tolist(), r.scores.tolist(), strict=True)), table.shape[0] - 1) for r in rankings]


def test_a_batch_ranks_each_request_as_it_would_alone(encoded: RecommenderService) -> None:
    queries = [
        RankQuery([3], 5, exclude=[3]),
        RankQuery([1, 2, 3, 4, 5, 6, 7, 8], 30),
        RankQuery([9, 10], 10, exclude=list(range(1, 29))),
    ]
    together = _rank(encoded, queries)
    for query, ranked in zip(queries, together, strict=True):
        alone = _rank(encoded, [query])[0]
        assert [i for i, _ in ranked.items] == [i for i, _ in alone.items]
        np.testing.assert_allclose([s for _, s in ranked.items], [s for _, s in alone.items], rtol=1e-5, atol=1e-5)
        assert not {i for i, _ in ranked.items} & set(query.exclude)
    assert len(together[2].items) == 2  # only 2 eligible items left


def test_concurrent_requests_are_ranked_in_batches(encoded: RecommenderService) -> None:
    entered, gate = threading.Event(), threading.Event()
    sizes: list[int] = []

    def run(queries: list[RankQuery]) -> list[Any]:
        entered.set()
        gate.wait(30)  # hold the first batch until the others have queued
        sizes.append(len(queries))
        return _rank(encoded, queries)

    batcher = MicroBatcher(run, max_batch=64, max_wait_s=0.0)
    results: list[Any] = [None] * 6
    threads = [
        threading.Thread(target=lambda n=n: results.__setitem__(n, batcher.submit(RankQuery([n + 1], 3))))
        for n in range(6)
    ]
    threads[0].start()
    assert entered.wait(30)  # the worker is ranking the first request alone
    for thread in threads[1:]:
        thread.start()
    while len(batcher._queue) < 5:  # the five others wait together
        threading.Event().wait(0.001)
    gate.set()
    for thread in threads:
        thread.join(30)
    batcher.close()
    assert sizes == [1, 5] and all(len(result.items) == 3 for result in results)


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    calls = {"n": 0}

    def run(queries: list[RankQuery]) -> list[Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return [f"ok-{q.k}" for q in queries]

    batcher = MicroBatcher(run)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(RankQuery([1], 1))
    assert batcher.submit(RankQuery([1], 2)) == "ok-2"
    batcher.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(RankQuery([1], 3))


def test_a_request_whose_waiter_went_away_is_dropped_and_the_batcher_goes_on() -> None:
    """The route awaits `submit_future`; a cancelled await cancels the future. The worker must skip it, not die
    setting its result (concurrent.futures raises InvalidStateError for a cancelled future)."""
    entered, gate = threading.Event(), threading.Event()
    seen: list[list[int]] = []

    def run(queries: list[RankQuery]) -> list[Any]:
        seen.append([q.k for q in queries])
        if len(seen) == 1:
            entered.set()
            gate.wait(30)
        return [f"ok-{q.k}" for q in queries]

    batcher = MicroBatcher(run, max_wait_s=0.0)
    first = batcher.submit_future(RankQuery([1], 1))
    assert entered.wait(30)  # the worker holds the first batch
    gone, kept = batcher.submit_future(RankQuery([1], 2)), batcher.submit_future(RankQuery([1], 3))
    assert gone.cancel()  # queued, not yet taken: cancellable
    gate.set()
    assert first.result(30) == "ok-1" and kept.result(30) == "ok-3"
    assert seen == [[1], [3]]  # the cancelled request was never ranked
    assert batcher.submit(RankQuery([1], 4)) == "ok-4"  # the worker is alive
    batcher.close()


# ---- approximate search ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["faiss", "usearch", "hnswlib"])
def test_ann_search_excludes_exactly_and_scores_exactly(backend: str) -> None:
    pytest.importorskip(backend, reason=f"{backend} is an optional backend (pip install {backend}); faiss is the default")
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(301, 16, generator=generator)
    table[0] = 0.0
    index = AnnIndex.build(AnnConfig(backend=backend, ef_search=400), table)
    states = torch.randn(4, 16, generator=generator)
    excluded = [[1, 2, 3], [], list(range(1, 296)), list(range(1, 301))]
    scores, indices = index.search(states, table, 10, excluded)
    _, exact = top_k(states, table, 10, *csr(excluded))
    for row in range(4):
        got = [i for i in indices[row].tolist() if i != -1]
        assert not set(got) & set(excluded[row]) and 0 not in got
        torch.testing.assert_close(scores[row, : len(got)], (table[got] @ states[row]))
    assert len([i for i in indices[2].tolist() if i != -1]) == 5  # widened until the 5 eligible items were found
    assert indices[3].tolist() == [-1] * 10
    assert set(indices[0].tolist()) == set(exact[0].tolist())  # 300 items at ef 400: the graph finds the best


def test_the_ann_index_is_cached_and_follows_added_items(
    encoded: RecommenderService, data_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu (the default ANN backend, in the serve extra) is not installed")
    options = ServeOptions(state_dir=tmp_path / "state", ann="faiss", ann_min_items=10, poll_interval=0)
    first = build_service(encoded.model, load_dataset(data_dir), options=options)
    assert first.view.health()["search"] == "approximate (faiss HNSW)"
    first.add_item("ann-new", "The dragon queen of the ocean (2030)")
    assert len(first.catalogue.ann) == NUM_ITEMS + 1  # type: ignore[arg-type]
    body = first.recommend(history=["ann-new"], k=NUM_ITEMS + 1, exclude_seen=False)
    assert "ann-new" in [item["item_id"] for item in body["items"]]
    assert "ann-new" not in [item["item_id"] for item in first.recommend(history=["ann-new"], k=NUM_ITEMS)["items"]]
    searches: list[int] = []
    search = first.catalogue.ann.search  # type: ignore[union-attr]
    first.catalogue.ann.search = lambda *args, **kwargs: searches.append(1) or search(*args, **kwargs)  # type: ignore[method-assign,union-attr]
    top = first.recommend(history=["ann-new"], k=5)["items"]
    assert searches == [1]  # the request went through the approximate index, not exact search
    first.close()
    cached = list((tmp_path / "state" / "ann").glob("*.index"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = build_service(encoded.model, load_dataset(data_dir), options=options)
    assert cached[0].stat().st_mtime_ns == stamp and len(second.catalogue.ann) == NUM_ITEMS + 1  # type: ignore[arg-type]
    assert second.recommend(history=["ann-new"], k=5)["items"] == top
    second.close()
    exact = build_service(encoded.model, load_dataset(data_dir), options=options.model_copy(update={"ann_min_items": 1000}))
    assert exact.catalogue.ann is None and exact.view.health()["search"] == "exact"
    exact.close()


def test_a_resize_over_the_budget_is_413(encoded: RecommenderService) -> None:
    service = _fresh(encoded, options=ServeOptions(limits=Limits(max_resized_pixels=500_000)))
    client = TestClient(create_app(service=service))
    response = client.post("/items", json={"item_id": "tall", "text": "x", "image_base64": b64(strip_png(100, 1_900))})
    assert response.status_code == 413
    assert "resizing its short side to 224 would make 953,344 pixels, over the limit of 500,000" in response.json()["detail"]
    fine = client.post("/items", json={"item_id": "ok", "text": "x", "image_base64": b64(png_bytes(100))})
    assert fine.status_code == 201
