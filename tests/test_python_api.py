"""The model's own API, as a downstream user reaches for it: encode items from content, recommend for a history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from PIL import Image

from pmmrec import api
from pmmrec.data import load_dataset, write_dataset
from pmmrec.errors import ConfigError
from pmmrec.inference import encode_catalogue, make_collator
from pmmrec.model import PMMRec

ITEMS = [f"i{n}" for n in range(1, 17)]
TEXTS = [f"A {'quiet' if n % 2 else 'loud'} story number {n} about {'cats' if n % 3 else 'ships'}" for n in range(16)]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    users = [[ITEMS[(5 * start + step) % len(ITEMS)] for step in range(7)] for start in range(6)]
    return write_dataset(
        tmp_path_factory.mktemp("data") / "tiny",
        name="tiny",
        item_ids=ITEMS,
        item_texts=TEXTS,
        user_ids=[f"u{n}" for n in range(6)],
        user_items=users,
        provenance={"source": "tests"},
        preprocessing={},
    )


@pytest.fixture(scope="module")
def model() -> PMMRec:
    return PMMRec.assemble(text=tiny.tiny_text_encoder(), user=tiny.tiny_user_encoder()).eval()


def test_encode_items_equals_the_catalogue_table(model: PMMRec, dataset_dir: Path) -> None:
    """Raw texts go through the same preparation as the dataset's catalogue (the one way items become inputs)."""
    dataset = load_dataset(dataset_dir)
    table = encode_catalogue(model, make_collator(model, dataset), dataset.num_items, torch.device("cpu"))
    encoded = model.encode_items(texts=dataset.item_texts, batch_size=5)  # several batches
    assert encoded.shape == (len(ITEMS), model.dim) and encoded.dtype == torch.float32
    torch.testing.assert_close(encoded, table[1:], rtol=1e-5, atol=1e-5)


def test_recommend_matches_the_recommend_command(model: PMMRec, dataset_dir: Path) -> None:
    candidates = model.encode_items(texts=TEXTS)
    history = [3, 4, 9]  # rows of candidates = i4, i5, i10
    scores, indices = model.recommend(history, candidates, k=5)
    expected = api.recommend(model, dataset_dir, history=["i4", "i5", "i10"], k=5)
    assert [ITEMS[i] for i in indices.tolist()] == [entry.item_id for entry in expected]
    np.testing.assert_allclose(scores.numpy(), [entry.score for entry in expected], rtol=1e-5, atol=1e-5)
    assert not set(indices.tolist()) & set(history)  # seen items are left out by default
    kept_scores, kept = model.recommend(history, candidates, k=len(ITEMS), exclude_seen=False)
    assert len(kept) == len(ITEMS) and set(history) <= set(kept.tolist())
    assert bool((kept_scores[:-1] >= kept_scores[1:]).all())


def test_recommend_and_evaluate_leave_a_given_model_where_it_is(
    model: PMMRec, dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without `device`, a model object is used where it is, even where the default device would be CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the default device would now be cuda:0
    ranked = api.recommend(model, dataset_dir, history=["i4", "i5"], k=3)
    assert len(ranked) == 3 and model.device == torch.device("cpu")
    metrics = api.evaluate(model, dataset_dir, ks=(5,), progress=False)
    assert 0 <= metrics["ndcg@5"] <= 1 and model.device == torch.device("cpu")


def test_recommend_refuses_bad_input_clearly(model: PMMRec) -> None:
    candidates = model.encode_items(texts=TEXTS[:4])
    with pytest.raises(ConfigError, match="history is empty"):
        model.recommend([], candidates)
    with pytest.raises(ConfigError, match=r"history indices must lie in 0\.\.3"):
        model.recommend([4], candidates)
    with pytest.raises(ConfigError, match=r"candidates must be \[N, 32\]"):
        model.recommend([0], candidates[:, :8])
    with pytest.raises(ConfigError, match="reads item texts"):
        model.encode_items(images=[None])


def test_encode_items_reads_images_through_the_vision_preprocessor() -> None:
    vision_model = PMMRec.assemble(vision=tiny.tiny_clip_encoder(), user=tiny.tiny_user_encoder()).eval()
    pictures = [Image.new("RGB", (48, 40), colour) for colour in ((200, 10, 10), (10, 200, 10))]
    encoded = vision_model.encode_items(images=[*pictures, None])  # None: an item without a picture
    assert vision_model.vision is not None
    pixels = vision_model.vision.preprocessor([*pictures, None])
    with torch.inference_mode():
        expected = vision_model.embed_items(pixel_values=pixels).embeddings
    torch.testing.assert_close(encoded, expected)
    with pytest.raises(ConfigError, match="reads item images"):
        vision_model.encode_items(texts=["no picture given"])
