"""Shared fixtures: tiny seeded components built once per session and deep-copied per test; an offline Hub cache."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path

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
