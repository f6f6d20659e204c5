"""Serving: adding items over HTTP (in-process TestClient) and the `pmmrec serve` command.

Items added over HTTP are checked against the `recommend` job's `extra_items`; every refusal for its status and a
message naming what is wrong. Fixtures come from conftest.py, helpers from tiny.py.
"""

from __future__ import annotations

import io
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from fastapi.testclient import TestClient
from PIL import Image
from tiny import NUM_ITEMS, b64, png_bytes
from tiny import text_only_model as text_model
from tiny import vision_only_model as vision_model
from typer.testing import CliRunner

from pmmrec.api import recommend as recommend_job
from pmmrec.cli import app as cli_app
from pmmrec.data import load_dataset, write_dataset
from pmmrec.model import PMMRec
from pmmrec.serving import Limits, RecommenderService, ServeOptions, ServiceError, build_service, create_app

# ---- adding items ------------------------------------------------------------------------------------


def test_an_added_item_is_rankable_at_once_and_scores_like_the_recommend_job(
    client: TestClient, model: PMMRec, data_dir: Path, tmp_path: Path
) -> None:
    text = "The dragon castle of the ocean (2024)"
    response = client.post("/items", json={"item_id": "new-1", "text": text})
    assert response.status_code == 201, response.text
    added = response.json()
    assert added["index"] == NUM_ITEMS + 1 and added["added"] is True and added["encoded_from"] == ["text"]
    assert client.get("/items/new-1").json()["text"] == text
    assert client.get("/health").json()["items"] == NUM_ITEMS + 1

    # Ranked against the whole catalogue at once; identical to the offline job given the item as an extra item.
    body = client.post("/recommend", json={"history": ["new-1", "5"], "k": 50, "exclude_seen": False}).json()
    assert "new-1" in [item["item_id"] for item in body["items"]]
    extra = tmp_path / "extra.tsv"
    extra.write_text(f"new-1\t{text}\n", encoding="utf-8")
    expected = recommend_job(model, data_dir, history=["new-1", "5"], k=50, extra_items=extra, exclude_seen=False)
    assert [item["item_id"] for item in body["items"]] == [r.item_id for r in expected]
    np.testing.assert_allclose([i["score"] for i in body["items"]], [r.score for r in expected], rtol=1e-4, atol=1e-4)
    assert next(i for i in body["items"] if i["item_id"] == "new-1")["added"] is True
    found = client.get("/items", params={"q": "dragon castle"}).json()["items"]
    assert found[0]["item_id"] == "new-1"


def test_an_added_image_is_kept_for_the_page(client: TestClient) -> None:
    response = client.post(
        "/items", json={"item_id": "pic", "text": "A red square", "image_base64": b64(png_bytes(300))}
    )
    assert response.status_code == 201, response.text
    assert response.json()["has_image"] is True and response.json()["encoded_from"] == ["text"]
    image = client.get("/images/pic")
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size == (224, 224)
    data_url = "data:image/png;base64," + b64(png_bytes(50))
    assert (
        client.post("/items", json={"item_id": "pic2", "text": "Another", "image_base64": data_url}).status_code == 201
    )


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"item_id": "7", "text": "clash"}, 409, "item id '7' already exists"),
        ({"item_id": "has space", "text": "x"}, 422, "whitespace"),
        ({"item_id": "", "text": "x"}, 422, "body.item_id"),
        ({"item_id": "ok", "text": "tab\there"}, 422, "control character"),
        ({"item_id": "ok", "text": "   "}, 422, "empty item text"),
        ({"item_id": "ok", "text": "x" * 2001}, 422, "body.text"),
        ({"item_id": "ok"}, 422, "body.text"),
        ({"item_id": "ok", "text": "x", "image_base64": "not base64!"}, 422, "not valid base64"),
        ({"item_id": "ok", "text": "x", "image_base64": b64(png_bytes()[:60])}, 422, "undecodable image"),
        ({"item_id": "ok", "text": "x", "image_base64": b64(b"plain bytes")}, 422, "not a recognised image"),
        ({"item_id": "ok", "text": "x", "image_base64": ""}, 422, "image_base64 is empty"),
    ],
)
def test_adding_refuses_bad_items_clearly(client: TestClient, payload: dict, status: int, needle: str) -> None:
    response = client.post("/items", json=payload)
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]
    assert client.get("/health").json()["added_items"] == 0


def test_adding_the_same_id_twice_is_a_conflict(client: TestClient) -> None:
    assert client.post("/items", json={"item_id": "twice", "text": "first"}).status_code == 201
    second = client.post("/items", json={"item_id": "twice", "text": "second"})
    assert second.status_code == 409 and "already exists" in second.json()["detail"]
    assert client.get("/items/twice").json()["text"] == "first"


def test_oversized_images_and_bodies_are_413(model: PMMRec, data_dir: Path) -> None:
    limits = Limits(max_image_bytes=2_000, max_image_pixels=50 * 50, max_body_bytes=20_000)
    service = build_service(model, load_dataset(data_dir), ServeOptions(limits=limits))
    client = TestClient(create_app(service=service))
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(noisy, format="PNG")
    assert len(noisy.getvalue()) > 2_000
    big = client.post("/items", json={"item_id": "a", "text": "x", "image_base64": b64(noisy.getvalue())})
    assert big.status_code == 413 and "limit of 2,000 bytes" in big.json()["detail"]
    with pytest.raises(ServiceError, match="has 2,001 bytes: over the limit of 2,000 bytes") as refused:
        service.add_item("a", "x", b"\0" * 2_001)
    assert refused.value.status == 413
    wide = client.post("/items", json={"item_id": "a", "text": "x", "image_base64": b64(png_bytes(60))})
    assert wide.status_code == 413 and "60x60 pixels" in wide.json()["detail"]
    body = client.post("/items", json={"item_id": "a", "text": "x", "image_base64": "A" * 30_000})
    assert body.status_code == 413 and "request body is larger" in body.json()["detail"]
    assert (
        client.post("/items", json={"item_id": "a", "text": "x", "image_base64": b64(png_bytes(30))}).status_code == 201
    )


def test_a_vision_model_needs_an_image_and_encodes_it(data_dir: Path, private_cache: None) -> None:
    model = vision_model()
    client = TestClient(create_app(model, load_dataset(data_dir)))
    assert client.get("/health").json()["new_items_need_image"] is True
    missing = client.post("/items", json={"item_id": "v1", "text": "no picture"})
    assert missing.status_code == 422 and "needs image_base64" in missing.json()["detail"]
    picture = png_bytes(tiny.CLIP_IMAGE_SIZE, (10, 200, 90))
    added = client.post("/items", json={"item_id": "v1", "text": "green", "image_base64": b64(picture)})
    assert added.status_code == 201 and added.json()["encoded_from"] == ["image"]
    service: RecommenderService = client.app.state.service  # type: ignore[attr-defined]
    pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(picture)).convert("RGB"))).permute(2, 0, 1)[None]
    with torch.inference_mode():
        expected = model.embed_items(pixel_values=pixels.contiguous()).embeddings[0]
    torch.testing.assert_close(service.snapshot().table[-1], expected, rtol=1e-5, atol=1e-5)
    body = client.post("/recommend", json={"history": ["v1"], "k": 100, "exclude_seen": False}).json()
    assert len(body["items"]) == NUM_ITEMS + 1


def test_an_id_model_serves_but_cannot_add_items(tmp_path: Path, private_cache: None) -> None:
    ids = [f"item-{n}" for n in range(1, 11)]
    data = write_dataset(
        tmp_path / "id-data",
        name="ids",
        item_ids=ids,
        item_texts=[f"Item number {n}" for n in range(1, 11)],
        user_ids=["a", "b"],
        user_items=[ids[:4], ids[3:9]],
        provenance={},
        preprocessing={},
    )
    model = PMMRec(user=tiny.tiny_user_encoder(), item_tower=tiny.tiny_id_tower(num_items=10)).eval()
    client = TestClient(create_app(model, load_dataset(data)))
    assert client.get("/health").json()["can_add_items"] is False
    assert len(client.post("/recommend", json={"user_id": "a", "k": 3}).json()["items"]) == 3
    refused = client.post("/items", json={"item_id": "new", "text": "Item number 11"})
    assert refused.status_code == 409 and "ID item tower" in refused.json()["detail"]


def test_requests_during_appends_see_a_consistent_catalogue(encoded: RecommenderService) -> None:
    service = RecommenderService(
        encoded.model, encoded.item_ids, encoded.item_texts, encoded.snapshot().table.clone(), options=ServeOptions(spare_items=3)
    )
    added = 40
    errors: list[BaseException] = []
    sizes: list[list[int]] = [[], [], []]
    stop = threading.Event()

    def read(seen: list[int]) -> None:
        try:
            while not stop.is_set():
                result = service.recommend(history=["1", "2"], k=1000, exclude_seen=False)
                assert len(result["items"]) == result["catalogue_size"]
                assert len({item["item_id"] for item in result["items"]}) == len(result["items"])
                seen.append(result["catalogue_size"])
        except BaseException as exc:  # reported below
            errors.append(exc)

    readers = [threading.Thread(target=read, args=(seen,)) for seen in sizes]
    for thread in readers:
        thread.start()
    try:
        for n in range(added):  # past the 3 spare slots: the table is reallocated while readers run
            service.add_item(f"live-{n}", f"Live item {n}")
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert not errors, errors[0]
    assert all(seen == sorted(seen) for seen in sizes)  # each reader sees the catalogue only grow
    assert max(max(seen) for seen in sizes) > min(min(seen) for seen in sizes)  # reads overlapped the appends
    assert service.num_items == NUM_ITEMS + added
    assert service.recommend(history=[f"live-{added - 1}"], k=1)["catalogue_size"] == NUM_ITEMS + added


def test_an_unexpected_failure_is_a_500_and_the_server_keeps_answering(
    client: TestClient, service: RecommenderService, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(**_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "recommend_async", broken)  # what the route awaits
    failing = TestClient(client.app, raise_server_exceptions=False)
    assert failing.post("/recommend", json={"history": ["1"]}).status_code == 500
    assert failing.get("/health").status_code == 200


# ---- command line ------------------------------------------------------------------------------------


def test_serve_command_reports_a_bad_model_in_one_line(tmp_path: Path, data_dir: Path) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path / "absent"), "--data", str(data_dir)])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_serve_without_the_serve_extra_names_the_install_command(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text_model().save_pretrained(tmp_path / "model")  # paths are checked first
    for name in [name for name in sys.modules if name.startswith("pmmrec.serving")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if FastAPI were not installed
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path / "model"), "--data", str(data_dir)])
    assert result.exit_code == 1
    assert "fastapi is missing" in result.output and "pip install 'pmmrec[serve]'" in result.output


def test_serve_command_refuses_a_busy_port_before_encoding(tmp_path: Path, data_dir: Path) -> None:
    import socket

    text_model().save_pretrained(tmp_path / "model")  # paths are checked first, then the port, then the encoding
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            cli_app, ["serve", "--model", str(tmp_path / "model"), "--data", str(data_dir), "--port", str(port)]
        )
    assert result.exit_code == 1
    assert f"--port {port}: cannot listen" in result.output and "Traceback" not in result.output


def test_serve_command_runs_uvicorn_on_the_loaded_service(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, private_cache: None
) -> None:
    import uvicorn

    calls: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.update(app=app, **kwargs))
    monkeypatch.setenv("PMMREC_STATE", str(tmp_path / "state-root"))  # the default state folder lives under it
    text_model().save_pretrained(tmp_path / "model")
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(
            cli_app, ["serve", "--model", str(tmp_path / "model"), "--data", str(data_dir), "--port", "8123", "--quiet"]
        )
        assert torch.get_num_threads() == 1  # one torch thread per request
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert calls["host"] == "127.0.0.1" and calls["port"] == 8123
    health = TestClient(calls["app"]).get("/health").json()  # type: ignore[arg-type]
    assert health["items"] == NUM_ITEMS
    assert health["store"].startswith(str(tmp_path / "state-root" / "serve" / "serving-tiny-"))
    assert f"pmmrec serve: {NUM_ITEMS} items + 0 live items (in {health['store']}), item encoders ready" in result.output  # cold


@pytest.mark.parametrize(
    ("flag", "value", "rule"),
    [
        ("--ann", "annoy", "Input should be 'faiss', 'usearch', 'hnswlib' or 'ivf'"),
        ("--port", "0", "Input should be greater than or equal to 1"),
        ("--port", "70000", "Input should be less than or equal to 65535"),
        ("--threads", "0", "Input should be greater than or equal to 1"),
        ("--batch-workers", "0", "Input should be greater than or equal to 1"),
        ("--batch-wait-ms", "-0.5", "Input should be greater than or equal to 0"),
        ("--ann-min-items", "-5", "Input should be greater than or equal to 0"),
    ],
)
def test_serve_command_refuses_bad_options_in_one_line_naming_the_flag(
    data_dir: Path, flag: str, value: str, rule: str
) -> None:
    """Values are checked by ServeOptions before anything loads: one line, the flag, the value, the rule."""
    result = CliRunner().invoke(cli_app, ["serve", "--model", "m", "--data", str(data_dir), flag, value])
    assert result.exit_code == 1, result.output
    assert result.output == f"error: {flag} {value}: {rule}\n"


def test_serve_command_refuses_a_short_api_key_in_one_line(tmp_path: Path, data_dir: Path) -> None:
    key = tmp_path / "key"
    key.write_text("short", encoding="utf-8")
    text_model().save_pretrained(tmp_path / "model")  # paths are checked first
    model = str(tmp_path / "model")
    result = CliRunner().invoke(cli_app, ["serve", "--model", model, "--data", str(data_dir), "--api-key-file", str(key)])
    assert result.exit_code == 1 and "the key must be at least 16 characters" in result.output
