"""Serving: where `pmmrec serve` keeps live items by default (one folder per model, shared on request, items of the
old shared folder copied once), the start-up line that counts them, and ID models served (issue 26)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import tiny
import torch
from fastapi.testclient import TestClient
from tiny import NUM_ITEMS
from typer.testing import CliRunner

from pmmrec.cli import app as cli_app
from pmmrec.components import IdItemTower, IdItemTowerConfig
from pmmrec.data import load_dataset
from pmmrec.model import PMMRec
from pmmrec.serving import RecommenderService, ServeOptions, create_app, load_service
from pmmrec.serving.server import startup_line
from pmmrec.serving.state_dir import copy_shared_items, count_items, dataset_state_dir
from pmmrec.serving.store import ITEMS_DB

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PMMREC_STATE", str(tmp_path / "state-root"))
    return tmp_path / "state-root"


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two text models of the same data that differ in their user encoder (so in their key)."""
    root = tmp_path_factory.mktemp("models")
    first = tiny.text_only_model().save_pretrained(root / "a")
    PMMRec(user=tiny.tiny_user_encoder(seed=5), text=tiny.tiny_text_encoder(seed=1), fusion=tiny.tiny_text_only()).save_pretrained(root / "b")
    return first, root / "b"


def _start(model: Path, data: Path, **options: object) -> RecommenderService:
    return load_service(str(model), data, ServeOptions(device="cpu", quiet=True, poll_interval=0, **options),  # type: ignore[arg-type]
                        default_state=True)  # fmt: skip


def test_live_items_belong_to_their_model_unless_shared(state_root: Path, data_dir: Path, two_models: tuple[Path, Path]) -> None:
    first, second = two_models
    service = _start(first, data_dir)
    try:
        service.add_item("mine", "An item added to the first model")
        own = Path(service.store_location)
    finally:
        service.close()
    shared = dataset_state_dir(load_dataset(data_dir))
    assert own.parent.parent == shared and own.parent.name.startswith("model-") and own.name == ITEMS_DB
    other = _start(second, data_dir)
    try:  # the second model has its own folder: the first one's item is not served by it
        assert Path(other.store_location).parent != own.parent and other.live_loaded == 0
        assert "mine" not in other.catalogue.index
    finally:
        other.close()
    for model in (first, second):  # --share-live-items: the dataset's folder, one store for both
        service = _start(model, data_dir, share_live_items=True)
        try:
            assert Path(service.store_location) == shared / ITEMS_DB
            if model == first:
                service.add_item("ours", "An item shared by both models")
            else:
                assert service.live_loaded == 1 and "ours" in service.catalogue.index and "mine" not in service.catalogue.index
        finally:
            service.close()
    again = _start(first, data_dir)
    try:  # the own folder already existed: nothing is copied again, the first model keeps its own item
        assert again.live_loaded == 1 and "mine" in again.catalogue.index and not again.notes
    finally:
        again.close()


def test_items_stored_before_per_model_folders_are_copied_once_and_announced(
    state_root: Path, data_dir: Path, two_models: tuple[Path, Path]
) -> None:
    """A user's live items are data they added: the shared folder's items reach every model's first start."""
    first, _ = two_models
    shared = dataset_state_dir(load_dataset(data_dir))
    before = _start(first, data_dir, share_live_items=True)  # as every server stored them before issue 26
    try:
        before.add_item("old-1", "An item added before per-model folders")
        before.add_item("old-2", "Another one")
    finally:
        before.close()
    service = _start(first, data_dir)
    try:
        assert service.live_loaded == 2 and {"old-1", "old-2"} <= set(service.catalogue.index)
        assert startup_line(service).startswith(f"pmmrec serve: {NUM_ITEMS} items + 2 live items (in {service.store_location})")
        (note,) = service.notes
        assert note.startswith(f"copied the 2 live items of {shared}") and "--share-live-items" in note
        service.add_item("new", "Added after the copy")
        own = Path(service.store_location).parent
    finally:
        service.close()
    assert count_items(shared / ITEMS_DB) == 2  # the shared store is left as it was
    assert copy_shared_items(shared, own) == 0 and count_items(own / ITEMS_DB) == 3  # never twice


def test_the_copy_never_replaces_a_store_that_appeared_meanwhile(tmp_path: Path) -> None:
    shared, own = tmp_path / "shared", tmp_path / "own"
    shared.mkdir()
    with sqlite3.connect(shared / ITEMS_DB) as db:
        db.execute("CREATE TABLE items (seq INTEGER PRIMARY KEY, item_id TEXT)")
        db.execute("INSERT INTO items (item_id) VALUES ('a')")
    assert copy_shared_items(shared, own) == 1 and count_items(own / ITEMS_DB) == 1
    with sqlite3.connect(own / ITEMS_DB) as db:
        db.execute("INSERT INTO items (item_id) VALUES ('added-here')")
    assert copy_shared_items(shared, own) == 0 and count_items(own / ITEMS_DB) == 2
    assert sorted(p.name for p in own.iterdir()) == [ITEMS_DB]  # no staging file left behind


def _id_model(folder: Path, data_dir: Path) -> tuple[Path, list[str]]:
    """An ID model over the dataset's items whose last 5 rows were never trained (as `pmmrec finetune` marks the
    items of no training sequence); returns the folder and those items' ids."""
    ids = load_dataset(data_dir).item_ids
    torch.manual_seed(0)
    tower = IdItemTower(IdItemTowerConfig(dim=tiny.DIM, num_items=len(ids)), item_ids=list(ids))
    tower.train_only(torch.arange(1, len(ids) - 4))
    PMMRec(user=tiny.tiny_user_encoder(seed=2), item_tower=tower).save_pretrained(folder)
    return folder, ids[-5:]


def test_an_id_model_is_served_never_recommends_untrained_rows_and_refuses_new_items(
    state_root: Path, data_dir: Path, two_models: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26: `pmmrec serve` stopped an ID model at start-up ("an ID-based model has no content encoder") when
    the shared store held an item a content model had added. It now starts, leaves such items out (saying so),
    ranks with its ID table without ever recommending a never-trained row, and answers 409 to POST /items."""
    import uvicorn

    content = _start(two_models[0], data_dir, share_live_items=True)
    try:
        content.add_item("by-text", "An item a content model added")
    finally:
        content.close()
    model, untrained = _id_model(tmp_path / "id-model", data_dir)
    calls: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.update(app=app, **kwargs))
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(
            cli_app, ["serve", "--model", str(model), "--data", str(data_dir), "--quiet", "--share-live-items"]
        )
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert f"pmmrec serve: {NUM_ITEMS} items + 0 live items (in " in result.output
    assert "1 live items in " in result.output and "are not served: this model has an ID item tower" in result.output
    client = TestClient(calls["app"])  # type: ignore[arg-type]
    body = client.post("/recommend", json={"user_id": "user0", "k": NUM_ITEMS, "exclude_seen": False}).json()
    ranked = [item["item_id"] for item in body["items"]]
    assert len(ranked) == NUM_ITEMS - len(untrained) and not set(ranked) & set(untrained)
    refused = client.post("/items", json={"item_id": "new", "text": "A new film"})
    assert refused.status_code == 409 and "ID item tower" in refused.json()["detail"]


@pytest.mark.parametrize("named", [["--state", "STATE"], ["--store", "postgresql://u@h/db"]])
def test_sharing_is_refused_in_one_line_where_a_store_is_named(data_dir: Path, tmp_path: Path, named: list[str]) -> None:
    """--share-live-items picks the default folder; beside --state or --store it would do nothing, silently."""
    args = [value.replace("STATE", str(tmp_path)) for value in named]
    result = CliRunner().invoke(cli_app, ["serve", "--model", "m", "--data", str(data_dir), "--share-live-items", *args])
    assert result.exit_code == 1, result.output
    assert result.output == f"error: --share-live-items applies without --state and --store; {named[0]} already names the store\n"


def test_an_id_model_starts_in_its_own_folder_and_says_it_cannot_add(state_root: Path, data_dir: Path, tmp_path: Path) -> None:
    model, _ = _id_model(tmp_path / "id-model", data_dir)
    service = _start(model, data_dir)
    try:
        health = TestClient(create_app(service=service)).get("/health").json()
        assert health["can_add_items"] is False and "ID item tower" in health["add_items_refusal"]
        assert Path(service.store_location).parent.name.startswith("model-") and not service.notes
    finally:
        service.close()

