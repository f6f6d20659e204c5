"""Serving: the HTTP API in-process (FastAPI TestClient) over tiny seeded models and a tiny dataset folder.

Rankings are checked against the library's own `recommend` job (the CLI's path), items added over HTTP against
the same job's `extra_items`, and every refusal for its status code and a message naming what is wrong.
The tiny dataset (serving preset), models and image helpers come from tiny.py.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tiny
from fastapi.testclient import TestClient
from PIL import Image
from tiny import NUM_ITEMS

from pmmrec.api import recommend as recommend_job
from pmmrec.data import load_dataset
from pmmrec.model import PMMRec
from pmmrec.serving import create_app

NUM_USERS = tiny.SERVING_USERS
text_model = tiny.text_only_model
vision_model = tiny.vision_only_model


# ---- reading -----------------------------------------------------------------------------------------


def test_health_reports_the_manifest_catalogue_and_limits(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["modalities"] == ["text"] and body["dim"] == tiny.DIM and body["max_length"] == 8
    assert body["items"] == NUM_ITEMS and body["users"] == NUM_USERS and body["added_items"] == 0
    assert set(body["model"]["manifest"]["components"]) == {"text", "fusion", "user"}
    assert body["model"]["manifest"]["components"]["text"]["type"] == "text_encoder/hf"
    assert body["can_add_items"] is True and body["new_items_need_image"] is False
    assert body["limits"]["max_k"] == 1000


def test_health_of_a_saved_model_lists_references_and_weight_hashes(
    tmp_path: Path, data_dir: Path, private_cache: None
) -> None:
    from pmmrec.serving import ServeOptions, load_service

    text_model().save_pretrained(tmp_path / "model")
    service = load_service(str(tmp_path / "model"), data_dir, ServeOptions(device="cpu", quiet=True))
    body = TestClient(create_app(service=service)).get("/health").json()
    assert body["model"]["reference"] == str(tmp_path / "model")
    components = body["model"]["manifest"]["components"]
    assert {"type", "requested", "resolved_commit", "sha256"} <= set(components["text"])


def test_health_names_hub_references_and_resolved_commits(
    tmp_path: Path, data_dir: Path, publish: Callable[..., str], private_cache: None
) -> None:
    from pmmrec.serving import ServeOptions, load_service

    tiny.tiny_text_encoder(seed=1).save_pretrained(tmp_path / "text")
    text_commit = publish(tmp_path / "text", "pmmrec-test/text", tag="v1")
    PMMRec.assemble(text="hub:pmmrec-test/text@v1", user=tiny.tiny_user_encoder(seed=2)).save_pretrained(
        tmp_path / "model"
    )
    model_commit = publish(tmp_path / "model", "pmmrec-test/model", tag="v2")
    service = load_service("hub:pmmrec-test/model@v2", data_dir, ServeOptions(device="cpu", quiet=True))
    body = TestClient(create_app(service=service)).get("/health").json()
    assert body["model"]["reference"] == "hub:pmmrec-test/model@v2"
    manifest = body["model"]["manifest"]
    assert manifest["resolved_commit"] == model_commit
    assert manifest["components"]["text"]["requested"] == "hub:pmmrec-test/text@v1"
    assert manifest["components"]["text"]["resolved_commit"] == text_commit
    assert manifest["components"]["user"]["created"] is False and len(manifest["components"]["user"]["sha256"]) == 64


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_recommend_for_a_user_matches_the_recommend_job(
    client: TestClient, model: PMMRec, data_dir: Path, exclude_seen: bool
) -> None:
    body = client.post("/recommend", json={"user_id": "user5", "k": 7, "exclude_seen": exclude_seen}).json()
    expected = recommend_job(model, data_dir, user="user5", k=7, exclude_seen=exclude_seen)
    assert [item["item_id"] for item in body["items"]] == [r.item_id for r in expected]
    np.testing.assert_allclose(
        [item["score"] for item in body["items"]], [r.score for r in expected], rtol=1e-5, atol=1e-5
    )
    assert [item["rank"] for item in body["items"]] == list(range(1, 8))
    assert body["items"][0]["text"] == expected[0].text
    sequence = load_dataset(data_dir).sequences[5]
    assert body["history_length"] == len(sequence)
    assert body["excluded"] == (len(set(sequence.tolist())) if exclude_seen else 0)


def test_recommend_for_a_history_matches_the_recommend_job(client: TestClient, model: PMMRec, data_dir: Path) -> None:
    history = ["3", "17", "4", "22"]
    body = client.post("/recommend", json={"history": history, "k": 5, "exclude_seen": True}).json()
    expected = recommend_job(model, data_dir, history=history, k=5, exclude_seen=True)
    assert [item["item_id"] for item in body["items"]] == [r.item_id for r in expected]
    assert not set(history) & {item["item_id"] for item in body["items"]}
    assert body["user_id"] is None and body["catalogue_size"] == NUM_ITEMS


def test_k_larger_than_the_catalogue_returns_every_unseen_item(client: TestClient) -> None:
    body = client.post("/recommend", json={"history": ["1", "2", "2"], "k": 1000, "exclude_seen": True}).json()
    assert len(body["items"]) == NUM_ITEMS - 2
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_a_long_history_uses_its_last_max_length_items(client: TestClient) -> None:
    long = [str(1 + n % NUM_ITEMS) for n in range(200)]
    tail = client.post("/recommend", json={"history": long[-8:], "k": 10, "exclude_seen": False}).json()
    full = client.post("/recommend", json={"history": long, "k": 10, "exclude_seen": False}).json()
    assert [i["item_id"] for i in full["items"]] == [i["item_id"] for i in tail["items"]]


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"user_id": "nobody"}, 404, "unknown user id 'nobody'"),
        ({"history": ["1", "missing-a", "missing-b"]}, 404, "'missing-a', 'missing-b'"),
        ({"history": ["1"], "k": 0}, 422, "body.k"),
        ({"history": ["1"], "k": 1001}, 422, "less than or equal to 1000"),
        ({"history": ["1"] * 1001}, 422, "body.history"),
        ({"history": []}, 422, "body.history"),
        ({"history": ["1"], "user_id": "user1"}, 422, "exactly one of user_id and history"),
        ({"k": 5}, 422, "exactly one of user_id and history"),
        ({"history": ["1"], "colour": "red"}, 422, "body.colour"),
        ({"history": "1 2 3"}, 422, "body.history"),
        ({"history": ["1"], "k": "ten"}, 422, "body.k"),
    ],
)
def test_recommend_refuses_bad_requests_clearly(client: TestClient, payload: dict, status: int, needle: str) -> None:
    response = client.post("/recommend", json=payload)
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]


def test_malformed_json_is_a_422_not_a_crash(client: TestClient) -> None:
    response = client.post("/recommend", content=b'{"history": [', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert client.get("/health").status_code == 200


def test_items_users_and_images_can_be_looked_up(client: TestClient, data_dir: Path) -> None:
    dataset = load_dataset(data_dir)
    item = client.get("/items/7").json()
    assert item == {
        "item_id": "7",
        "text": dataset.item_texts[6],
        "index": 7,
        "has_image": True,
        "added": False,
        "image_url": "/images/7",
    }
    assert client.get("/items/nope").status_code == 404
    assert "unknown item id 'nope'" in client.get("/items/nope").json()["detail"]
    image = client.get("/images/7")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (tiny.CLIP_IMAGE_SIZE, tiny.CLIP_IMAGE_SIZE)
    assert client.get("/images/nope").status_code == 404
    word = dataset.item_texts[6].split()[1]
    found = client.get("/items", params={"q": word.upper()}).json()["items"]
    assert "7" in [entry["item_id"] for entry in found] and all(word in entry["text"] for entry in found)
    assert client.get("/items", params={"q": "7"}).json()["items"][0]["item_id"] == "7"  # exact id first
    assert client.get("/items", params={"limit": 0}).status_code == 422
    users = client.get("/users", params={"q": "user", "limit": 3}).json()
    assert users == {"users": ["user0", "user1", "user2"], "total": NUM_USERS}
    history = client.get("/users/user3", params={"last": 2}).json()
    assert history["length"] == len(dataset.sequences[3])
    assert [entry["index"] for entry in history["history"]] == dataset.sequences[3][-2:].tolist()
    assert client.get("/users/nobody").status_code == 404


def test_the_page_and_the_openapi_spec_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/recommend", "/items", "/items/{item_id}", "/health", "/users"} <= set(spec["paths"])
    assert {"404", "422"} <= set(spec["paths"]["/recommend"]["post"]["responses"])


def test_unbatched_serving_ranks_like_batched(encoded: object) -> None:
    """Guards against the `--no-batching` path (each request ranked on its own) answering differently."""
    from pmmrec.serving import RecommenderService, ServeOptions

    def fresh(batching: bool) -> RecommenderService:
        return RecommenderService(
            encoded.model, encoded.item_ids, encoded.item_texts, encoded.snapshot().table.clone(),  # type: ignore[attr-defined]
            users=encoded.view.users, options=ServeOptions(batching=batching),  # type: ignore[attr-defined]
        )  # fmt: skip

    batched, unbatched = fresh(True), fresh(False)
    try:
        for request in ({"history": ["3", "17", "4"], "k": 5}, {"user_id": "user2", "k": 8, "exclude_seen": False}):
            one, other = batched.recommend(**request), unbatched.recommend(**request)  # type: ignore[arg-type]
            assert [i["item_id"] for i in one["items"]] == [i["item_id"] for i in other["items"]]
            assert len(one["items"]) == request["k"]
    finally:
        batched.close()
        unbatched.close()


def test_the_int8_scan_answers_as_the_float32_product(encoded: object) -> None:
    """`--scan int8` (here on the tiny catalogue: `int8_min_items=0`) must answer every request as `--scan fp32`
    does: the same items in the same order, the same scores to float32 precision; bodies in RecommendResponse's
    shape and field order (the route sends them without FastAPI's validation)."""
    from pmmrec.serving import RecommenderService, ServeOptions
    from pmmrec.serving.routes import RankedItem, RecommendResponse

    def fresh(scan: str) -> RecommenderService:
        return RecommenderService(
            encoded.model, encoded.item_ids, encoded.item_texts, encoded.snapshot().table.clone(),  # type: ignore[attr-defined]
            users=encoded.view.users, options=ServeOptions(scan=scan, int8_min_items=0),  # type: ignore[attr-defined, arg-type]
        )  # fmt: skip

    fast, plain = fresh("int8"), fresh("fp32")
    assert fast.catalogue.int8_ready.wait(60)  # built in the background
    assert fast.snapshot().int8 is not None and plain.snapshot().int8 is None
    requests = [{"user_id": user, "k": k, "exclude_seen": seen} for user in list(fast.view.users)[:6] for k in (1, 7, 1000) for seen in (True, False)]
    requests += [{"history": [str(i), str(i + 3)], "k": 1000} for i in range(1, 20, 3)]
    try:
        with TestClient(create_app(service=fast)) as client:
            for request in requests:
                body = client.post("/recommend", json=request).json()
                expected = plain.recommend(**request)  # type: ignore[arg-type]
                assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in expected["items"]], request
                np.testing.assert_allclose([i["score"] for i in body["items"]], [i["score"] for i in expected["items"]], rtol=1e-5, atol=1e-5)
                assert list(body) == list(RecommendResponse.model_fields)
                assert all(list(item) == list(RankedItem.model_fields) for item in body["items"])
                assert RecommendResponse.model_validate(body).model_dump() == body
    finally:
        fast.close()
        plain.close()
