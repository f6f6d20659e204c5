"""Fast restarts: a server over a model folder answers with the user encoder and the cached table while its item
encoders load in the background; what needs them waits (or gets a 503 saying why), and the cache key is the
manifest's pinned file hashes, so it is known before the item encoders are loaded and follows every file.
"""

from __future__ import annotations

import copy
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_bytes
from tiny import (
    NUM_ITEMS,
    png_bytes,
    tiny_id_tower,
    tiny_text_encoder,
    tiny_user_encoder,
    vision_only_model,
)
from tiny import text_only_model as text_model

from pmmrec.data import load_dataset
from pmmrec.errors import ArtefactError
from pmmrec.integrity import tensors_digest
from pmmrec.model import PMMRec, read_manifest
from pmmrec.serving import Limits, RecommenderService, ServeOptions, ServiceError, build_service, load_service
from pmmrec.serving import runner as runner_module
from pmmrec.serving.served_model import ServedModel
from pmmrec.serving.table_cache import (
    cache_path,
    load_table,
    manifest_fingerprint,
    model_fingerprint,
    save_table,
    table_key,
    table_key_parts,
)


def _load(model: Path, data: Path, state: Path) -> Any:
    return load_service(str(model), data, ServeOptions(device="cpu", quiet=True, state_dir=state, poll_interval=0))


def _gated(folder: Path) -> tuple[ServedModel, threading.Event]:
    """A ServedModel of `folder` whose item side loads only once the returned event is set."""
    manifest = read_manifest(folder)
    opened = threading.Event()
    ready = ServedModel.from_folder(folder, manifest)

    def load() -> PMMRec:
        opened.wait(30)
        return PMMRec.from_pretrained(folder, preloaded={"user": ready.user})

    served = ServedModel(ready.user, types=ready.types, key=lambda: ready.key, load=load, manifest=manifest)
    return served, opened


def test_a_warm_start_ranks_before_the_item_encoders_load_and_adding_waits_for_them(
    serving_env: dict[str, Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    cold = _load(serving_env["model"], serving_env["data"], state)  # encodes the catalogue and caches the table
    expected = cold.recommend(history=["3", "5"], k=NUM_ITEMS, exclude_seen=False)
    cold_added = cold.add_item("fresh", "A new item added after a cold start (2025)")
    cold_vector = cold.snapshot().table[cold_added["catalogue_size"]].clone()
    cold.close()
    for suffix in ("", "-wal", "-shm"):
        (state / f"items.sqlite3{suffix}").unlink(missing_ok=True)

    served, opened = _gated(serving_env["model"])
    warm = build_service(served, load_dataset(serving_env["data"]), options=ServeOptions(state_dir=state, poll_interval=0))
    try:
        assert served.state == "loading" and warm.view.health()["item_encoders"] == "loading"
        assert warm.recommend(history=["3", "5"], k=NUM_ITEMS, exclude_seen=False) == expected  # table from the cache
        assert warm.view.health()["can_add_items"] is True and warm.view.health()["new_items_need_image"] is False
        answers: list[Any] = []
        adder = threading.Thread(target=lambda: answers.append(warm.add_item("fresh", "A new item added after a cold start (2025)")))
        adder.start()
        adder.join(0.3)
        assert adder.is_alive() and not answers  # waiting for the item encoders
        opened.set()
        adder.join(30)
        assert answers and served.state == "ready" and warm.view.health()["item_encoders"] == "ready"
        assert torch.equal(warm.snapshot().table[answers[0]["catalogue_size"]], cold_vector)  # the same model
    finally:
        opened.set()
        warm.close()


def test_adding_answers_503_when_the_item_encoders_are_late_or_failed(
    serving_env: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = load_dataset(serving_env["data"])
    table = torch.zeros(NUM_ITEMS + 1, text_model().dim)
    served, opened = _gated(serving_env["model"])
    service = RecommenderService(
        served, list(dataset.item_ids), list(dataset.item_texts), table, options=ServeOptions(limits=Limits(max_encoder_wait_s=0))
    )
    try:
        with pytest.raises(ServiceError, match="still loading after 0 s") as late:
            service.add_item("late", "Too early")
        assert late.value.status == 503 and "late" not in service.item_ids
    finally:
        opened.set()
        service.close()

    def broken() -> PMMRec:
        raise ArtefactError("text/model.safetensors: truncated")

    failing = ServedModel(served.user, types=served.types, key=lambda: "k", load=broken)
    service = RecommenderService(failing, list(dataset.item_ids), list(dataset.item_texts), table, manifest={})
    try:
        with pytest.raises(ServiceError, match=r"failed to load \(text/model.safetensors: truncated\)") as failed:
            service.add_item("never", "Cannot be encoded")
        assert failed.value.status == 503 and service.view.health()["item_encoders"] == "failed"
        assert "the item encoders failed to load: text/model.safetensors: truncated" in caplog.text
        assert service.recommend(history=["3"], k=3)["items"]  # ranking does not need the item encoders
    finally:
        service.close()


def test_a_damaged_item_encoder_file_stops_the_start_even_with_a_cached_table(
    serving_env: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(serving_env["model"], model)
    state = tmp_path / "state"
    _load(model, serving_env["data"], state).close()
    weights = model / "text" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=r"text.*model\.safetensors"):
        _load(model, serving_env["data"], state)


def test_the_folder_key_follows_every_pinned_file_and_only_them(serving_env: dict[str, Path], tmp_path: Path) -> None:
    manifest = read_manifest(serving_env["model"])
    key = manifest_fingerprint(manifest)
    assert key is not None and key == manifest_fingerprint(read_manifest(serving_env["model"]))
    for slot, entry in manifest["components"].items():
        for name in entry["files"]:
            changed = {**manifest, "components": {**manifest["components"], slot: {**entry, "files": {**entry["files"], name: "0" * 64}}}}
            assert manifest_fingerprint(changed) != key, (slot, name)
    renamed = {**manifest, "components": {**manifest["components"], "fusion": {**manifest["components"]["fusion"], "requested": "x"}}}
    assert manifest_fingerprint(renamed) == key  # provenance is not content
    old = {**manifest, "components": {**manifest["components"], "user": {**manifest["components"]["user"], "files": None}}}
    assert manifest_fingerprint(old) is None  # an old manifest: the whole model is loaded at once instead
    no_user = {**manifest, "components": {s: e for s, e in manifest["components"].items() if s != "user"}}
    with pytest.raises(ArtefactError, match=r"pmmrec\.json: no user component"):
        ServedModel.from_folder(serving_env["model"], no_user)


def test_a_vision_model_restarts_warm_and_reports_both_modalities(serving_env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encodes: list[int] = []
    original = runner_module.encode_catalogue
    monkeypatch.setattr(runner_module, "encode_catalogue", lambda *a, **k: encodes.append(1) or original(*a, **k))
    state = tmp_path / "state"
    first = _load(serving_env["vision"], serving_env["data"], state)
    added = first.add_item("pictured", "A picture item (2025)", png_bytes(64, (20, 90, 200)))
    assert added["encoded_from"] == ["text", "image"]
    first.close()
    second = _load(serving_env["vision"], serving_env["data"], state)
    try:
        assert len(encodes) == 1 and second.served.needs_image and second.view.health()["modalities"] == ["text", "vision"]
        assert second.catalogue.added["pictured"].encoded_from == ["text", "image"]  # restored from its stored embedding
        with pytest.raises(ServiceError, match="needs image_base64"):
            second.add_item("bare", "No picture")
    finally:
        second.close()


# ---- what is loaded, from what, and where ---------------------------------------------------------------------


def test_the_background_load_reuses_the_user_encoder_and_follows_the_device(serving_env: dict[str, Path]) -> None:
    served = ServedModel.from_folder(serving_env["model"], read_manifest(serving_env["model"]))
    served.to(torch.device("meta"))  # a device unlike where weights are read: every part must be moved there
    whole = served.model(timeout=60)
    assert whole.user is served.user  # loaded once, not twice
    assert {p.device.type for p in whole.parameters()} == {"meta"} and served.state == "ready"


def test_a_component_swapped_for_another_valid_one_is_refused_at_start(serving_env: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(serving_env["model"], model)
    shutil.rmtree(model / "text")
    tiny_text_encoder(seed=9).save_pretrained(model / "text")  # self-consistent (its own checksums.json), not pinned
    with pytest.raises(ArtefactError, match=r"pmmrec\.json"):
        ServedModel.from_folder(model, read_manifest(model))


def test_unpinned_or_unverified_models_load_whole_at_once(
    serving_env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    shutil.copytree(serving_env["model"], model)
    manifest = read_manifest(model)
    served = ServedModel.from_folder(model, manifest)
    assert served.state == "loading"  # pinned and verified: the item side waits for start_loading
    served.join()
    monkeypatch.setenv("PMMREC_ALLOW_UNVERIFIED", "1")
    unverified = ServedModel.from_folder(model, manifest)
    assert unverified.state == "ready" and unverified.model().text is not None
    monkeypatch.delenv("PMMREC_ALLOW_UNVERIFIED")
    old = {**manifest, "components": {s: {k: v for k, v in e.items() if k != "files"} for s, e in manifest["components"].items()}}
    (model / "pmmrec.json").write_text(json.dumps(old), encoding="utf-8")  # written before pmmrec kept checksums
    with pytest.raises(ArtefactError, match="pins only the weights"):
        ServedModel.from_folder(model, read_manifest(model))  # as PMMRec.from_pretrained refuses it
    monkeypatch.setenv("PMMREC_ALLOW_UNVERIFIED", "1")
    assert ServedModel.from_folder(model, read_manifest(model)).state == "ready"


def test_an_id_tower_model_is_served_as_ids_and_refuses_new_items(tmp_path: Path) -> None:
    PMMRec(user=tiny_user_encoder(seed=2), item_tower=tiny_id_tower(num_items=NUM_ITEMS)).save_pretrained(tmp_path / "m")
    served = ServedModel.from_folder(tmp_path / "m", read_manifest(tmp_path / "m"))
    assert served.modalities == frozenset({"id"}) == served.model().modalities and served.item_inputs == []
    service = RecommenderService(served, [f"item-{n}" for n in range(1, NUM_ITEMS + 1)], ["t"] * NUM_ITEMS,
                                 torch.zeros(NUM_ITEMS + 1, served.dim))  # fmt: skip
    try:
        assert service.view.health()["modalities"] == ["id"] and "ID item tower (item_tower/id)" in service.served.add_refusal  # type: ignore[operator]
    finally:
        service.close()


# ---- the table's key and file ------------------------------------------------------------------------------


def test_the_table_key_follows_item_files_and_preprocessing_but_not_users(serving_env: dict[str, Path]) -> None:
    dataset = load_dataset(serving_env["data"])
    files = dataset.info["files"]

    def key_with(**info: Any) -> str:
        edited = copy.copy(dataset)
        edited.info = {**dataset.info, **info}
        return table_key(table_key_parts("model", edited, 256, torch.device("cpu")))

    base = key_with()
    assert key_with(files={**files, "users.tsv": {**files["users.tsv"], "sha256": "0" * 64}}) == base
    assert key_with(files={**files, "items.tsv": {**files["items.tsv"], "sha256": "0" * 64}}) != base
    assert key_with(preprocessing={"text": "lowercased"}) != base
    assert table_key(table_key_parts("other model", dataset, 256, torch.device("cpu"))) != base


def test_a_cached_table_of_another_dtype_is_not_served(tmp_path: Path) -> None:
    table = torch.randn(NUM_ITEMS + 1, 8, dtype=torch.float64)
    metadata = {"key": "k", "digest": tensors_digest({"table": table})}
    path = cache_path(tmp_path, "k")
    path.parent.mkdir(parents=True)
    path.write_bytes(safetensors_bytes({"table": table}, metadata=metadata))
    assert load_table(tmp_path, "k", (NUM_ITEMS + 1, 8)) is None
    save_table(tmp_path, "k", {}, table)  # written as float32: now it is served
    loaded = load_table(tmp_path, "k", (NUM_ITEMS + 1, 8))
    assert loaded is not None and torch.equal(loaded, table.float())


def test_models_without_a_text_encoder_have_a_fingerprint_too() -> None:
    vision, text = model_fingerprint(vision_only_model()), model_fingerprint(text_model())
    assert vision == model_fingerprint(vision_only_model()) and len(vision) == 64 and vision != text


def test_adds_waiting_for_the_item_encoders_do_not_hold_up_reads(serving_env: dict[str, Path]) -> None:
    """More adds wait than the server has request threads (anyio's 40): /recommend still answers at once."""
    from fastapi.testclient import TestClient

    from pmmrec.serving import create_app

    dataset = load_dataset(serving_env["data"])
    served, opened = _gated(serving_env["model"])
    service = RecommenderService(served, list(dataset.item_ids), list(dataset.item_texts),
                                 torch.zeros(NUM_ITEMS + 1, served.dim), users={"u": np.asarray([3, 5])})  # fmt: skip
    statuses: list[int] = []
    with TestClient(create_app(service=service)) as client:  # one event loop and thread pool for every request

        def add(n: int) -> None:
            statuses.append(client.post("/items", json={"item_id": f"w{n}", "text": "t"}).status_code)

        adders = [threading.Thread(target=add, args=(n,)) for n in range(45)]
        try:
            for thread in adders:
                thread.start()
            time.sleep(0.5)  # every add is now waiting for the item encoders
            assert not statuses and served.state == "loading"
            answer = client.post("/recommend", json={"user_id": "u", "k": 3})
            assert answer.status_code == 200 and len(answer.json()["items"]) == 3 and served.state == "loading"
        finally:
            opened.set()
            for thread in adders:
                thread.join(60)
    assert statuses == [201] * 45


def test_the_load_benchmarks_command_scenario_serves_a_content_model_from_the_table_cache_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/serve_load.py --scenario command with a text model: the server reads the synthetic rows from the
    table cache the benchmark wrote under the server's own key, and never encodes the catalogue."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_serve_command", Path(__file__).parents[1] / "benchmarks" / "_serve_command.py")
    assert spec is not None and spec.loader is not None
    command = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(command)
    text_model().save_pretrained(tmp_path / "model")
    folder = tmp_path / "catalogue"
    folder.mkdir()
    dim = command.write_catalogue(str(tmp_path / "model"), 40, 3, folder)
    state = tmp_path / "state"
    command.seed_state(folder, state)
    monkeypatch.setattr(runner_module, "encode_catalogue", lambda *a, **k: pytest.fail("the catalogue was encoded"))
    service = _load(folder / "model", folder / "data", state)
    expected = torch.randn(41, dim, generator=torch.Generator().manual_seed(3))
    expected *= 10.0 / expected.norm(dim=1, keepdim=True)
    expected[0] = 0.0
    assert torch.equal(service.snapshot().table[:41], expected)
    assert service.item_ids[:2] == ["syn-1", "syn-2"]
