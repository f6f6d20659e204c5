"""Shared fixtures: tiny seeded components built once per session and deep-copied per test; the isolated environment;
the tiny datasets; an offline Hub cache; one fake Hub; one uninterrupted training run for the resume tests.

Plain helpers (builders, the dataset writer, the CLI runner) are in tiny.py; no test module imports another.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tiny

from pmmrec.components import (
    CLIPVisionEncoder,
    EfficientNetEncoder,
    HFTextEncoder,
    IdItemTower,
    MergeAttentionFusion,
    SASRecUserEncoder,
)


@pytest.fixture(scope="session")
def _session_text_encoder() -> HFTextEncoder:
    return tiny.tiny_text_encoder()


@pytest.fixture(scope="session")
def _session_clip_encoder() -> CLIPVisionEncoder:
    return tiny.tiny_clip_encoder()


@pytest.fixture(scope="session")
def _session_efficientnet_encoder() -> EfficientNetEncoder:
    return tiny.tiny_efficientnet_encoder()


@pytest.fixture(scope="session")
def _session_fusion() -> MergeAttentionFusion:
    return tiny.tiny_fusion()


@pytest.fixture(scope="session")
def _session_user_encoder() -> SASRecUserEncoder:
    return tiny.tiny_user_encoder()


@pytest.fixture(scope="session")
def _session_id_tower() -> IdItemTower:
    return tiny.tiny_id_tower()


@pytest.fixture
def text_encoder(_session_text_encoder: HFTextEncoder) -> HFTextEncoder:
    """A tiny seeded BERT text encoder (d=32, 3 layers, MiniLM tokenizer); a private copy per test.

    The weights are copied; the tokenizer (read-only, and slow to deep-copy) is shared.
    """
    tokenizer = _session_text_encoder.tokenizer
    return copy.deepcopy(_session_text_encoder, memo={id(tokenizer): tokenizer})


@pytest.fixture
def clip_encoder(_session_clip_encoder: CLIPVisionEncoder) -> CLIPVisionEncoder:
    """A tiny seeded CLIP vision encoder (d=32, 32 px images); a private copy per test."""
    return copy.deepcopy(_session_clip_encoder)


@pytest.fixture
def efficientnet_encoder(_session_efficientnet_encoder: EfficientNetEncoder) -> EfficientNetEncoder:
    """A randomly initialised EfficientNet-Lite0 encoder (d=32, 64 px images); a private copy per test."""
    return copy.deepcopy(_session_efficientnet_encoder)


@pytest.fixture
def fusion(_session_fusion: MergeAttentionFusion) -> MergeAttentionFusion:
    """A tiny seeded merge-attention fusion (d=32, 4 heads); a private copy per test."""
    return copy.deepcopy(_session_fusion)


@pytest.fixture
def user_encoder(_session_user_encoder: SASRecUserEncoder) -> SASRecUserEncoder:
    """A tiny seeded SASRec user encoder (d=32, max length 8); a private copy per test."""
    return copy.deepcopy(_session_user_encoder)


@pytest.fixture
def id_tower(_session_id_tower: IdItemTower) -> IdItemTower:
    """A tiny seeded ID item tower over 10 items; a private copy per test."""
    return copy.deepcopy(_session_id_tower)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run a module's tiny-model tests on one intra-op thread (faster for tiny ops, robust on a busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip fsync in artefact writes: it guards against power loss, which no test observes, and costs seconds.

    The atomicity that tests do check (staging folder + rename) is untouched.
    """
    monkeypatch.setattr(os, "fsync", lambda fd: None)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty Hugging Face cache used offline for the duration of one test.

    huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE into `constants` at import time, so both the
    environment (for child code that re-reads it) and the already-imported constants are patched.
    """
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    yield cache


@pytest.fixture
def publish(hub_cache: Path) -> Callable[..., str]:
    """publish(folder, repo_id, tag=None) -> commit: lay an artefact into the test's offline Hub cache."""
    from pmmrec.hub import publish_to_local_cache

    def _publish(folder: Path, repo_id: str, tag: str | None = None) -> str:
        return publish_to_local_cache(folder, repo_id, cache_dir=hub_cache, tag=tag)

    return _publish


# ---- the isolated environment and the tiny datasets ----------------------------------------------------------


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private pmmrec cache, the Hub offline, one torch thread (see tiny.isolated_environment); yields tmp_path."""
    with tiny.isolated_environment(tmp_path, monkeypatch):
        yield tmp_path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training preset of the tiny dataset (30 items, 15 users, no images); read-only."""
    return tiny.write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_image_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The training preset with synthetic 32 px images; read-only."""
    return tiny.write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny-images", images=True)


@pytest.fixture(scope="module")
def serving_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A serving dataset with images, the tiny text model and text+vision model saved, a private token cache
    (one set per test module: the server tests write state beside them)."""
    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PMMREC_CACHE", str(root / "cache"))
        data = tiny.write_tiny_dataset(root / "data", preset="serving")
        tiny.text_only_model().save_pretrained(root / "model")
        tiny.text_vision_model().save_pretrained(root / "vision-model")
    return {"root": root, "data": data, "model": root / "model", "vision": root / "vision-model", "cache": root / "cache"}


@pytest.fixture
def serving_env(serving_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """`serving_files` with its token cache in use and the Hub offline."""
    monkeypatch.setenv("PMMREC_CACHE", str(serving_files["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return serving_files


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny text encoder and user encoder saved as folders ("text", "user"); read-only."""
    return tiny.save_tiny_components(tmp_path_factory.mktemp("components"))


# ---- one fake Hub ------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tiny.FakeHub]:
    """The one fake Hub: pushes go to FakeHubApi (recorded, never sent); `fake_hub.online()` for failing look-ups."""
    import huggingface_hub

    tiny.FakeHubApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", tiny.FakeHubApi)
    hub = tiny.FakeHub(api=tiny.FakeHubApi, monkeypatch=monkeypatch, cache=tmp_path / "fake-hub-cache")
    try:
        yield hub
    finally:
        hub.close()


# ---- one uninterrupted training run (the reference of every resume test) ------------------------------------------

@pytest.fixture(scope="session")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tiny.StraightRun:
    """Two epochs of fine-tuning with NID and RCL on (objective heads and corruption RNG in the state), run once."""
    root = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as monkeypatch, tiny.isolated_environment(root, monkeypatch):
        data = tiny.write_tiny_dataset(root / "data")
        parts = tiny.save_tiny_components(root / "components")
        args = [
            "finetune", "--data", str(data), "--text", str(parts["text"]), "--user", str(parts["user"]),
            "--max-length", str(tiny.MAX_LENGTH), "--epochs", "2", "--batch-size", "4", "--lr", "0.003",
            "--seed", "7", "--nid-weight", "0.2", "--rcl-weight", "0.2", "--device", "cpu", "--quiet", "--no-refit",
        ]  # fmt: skip  (a refit's own resume: tests/test_refit.py)
        tiny.run_cli(*args, "--out", root / "run")
        shutil.rmtree(root / "pmmrec-cache", ignore_errors=True)
    return tiny.StraightRun(args=args, run=root / "run", epochs=2, steps_per_epoch=4)  # 15 users, batches of 4


# ---- serving: a tiny text model over the serving dataset, a fresh service and client per test ----------------


@pytest.fixture(scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Token caches in a temporary folder, offline hub, for the whole module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PMMREC_CACHE", str(tmp_path_factory.mktemp("pmmrec-cache")))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_tiny_dataset(tmp_path_factory.mktemp("serving") / "data", preset="serving")


@pytest.fixture(scope="module")
def model(private_cache: None) -> Any:
    return tiny.text_only_model()


@pytest.fixture(scope="module")
def encoded(model: Any, data_dir: Path) -> Any:
    """The catalogue encoded once per module (a RecommenderService)."""
    from pmmrec.data import load_dataset
    from pmmrec.serving import build_service

    return build_service(model, load_dataset(data_dir))


@pytest.fixture
def service(encoded: Any) -> Any:
    """A fresh service per test over the encoded table, so items added by one test never leak into another."""
    from pmmrec.serving import RecommenderService

    return RecommenderService(
        encoded.model,
        encoded.item_ids,
        encoded.item_texts,
        encoded.snapshot().table.clone(),
        users=encoded.view.users,
        image_store=encoded.view.image_store,
        dataset_name=encoded.view.dataset_name,
    )


@pytest.fixture
def client(service: Any) -> Any:
    """A FastAPI test client over the fresh service."""
    from fastapi.testclient import TestClient

    from pmmrec.serving import create_app

    return TestClient(create_app(service=service))


# ---- a stranger's folders: a warm worker that runs pmmrec in capped, forked children (tests/stranger.py) ----------


@pytest.fixture(scope="session")
def stranger_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny text model as a training run leaves it (with data_split.json) and a tiny dataset with images."""
    root = tmp_path_factory.mktemp("stranger")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PMMREC_CACHE", str(root / "cache"))
        data = tiny.write_tiny_dataset(root / "data", images=True)
        record = {"min_length": 3, "max_history": None, "max_length": tiny.MAX_LENGTH, "window": "tiles"}
        tiny.text_model().save_pretrained(root / "model", split_record=record)
    return {"root": root, "data": data, "model": root / "model"}


@pytest.fixture(scope="session")
def stranger_worker(stranger_folders: dict[str, Path]) -> Iterator[Any]:
    """The worker, warmed on the good folders (every lazy import done before the first fork)."""
    import stranger

    folders = stranger_folders
    env = {"PMMREC_CACHE": str(folders["root"] / "cache"), "HF_HUB_OFFLINE": "1"}
    model, data = str(folders["model"]), str(folders["data"])
    warm = [
        ["inspect", model],
        ["recommend", "--model", model, "--data", data, "--user", "u0", "--k", "3"],
        ["evaluate", "--model", model, "--data", data, "--quiet", "--k", "5"],
        ["data", "check", data],
    ]
    worker = stranger.Stranger(warm, env)
    try:
        yield worker
    finally:
        worker.close()
