"""The fast training paths compute the same thing as the slow ones (issue 5).

- distinct-item encoding (each distinct item once, scattered to its slots) == encoding every slot, padding and
  duplicates included, at full token width (the reference's way);
- the frozen-prefix cache (in memory, or a memory-mapped fp16 file) == running the frozen layers every step;
  the file is reused by a second build and never reused after the frozen weights or the images change;
- a frozen item tower's per-epoch table == encoding; the Trainer uses it and measures its data-wait share.
"""

from __future__ import annotations

import json
from pathlib import Path

import batches
import numpy as np
import pytest
import tiny
import torch

from pmmrec.components.kinds import masked_mean
from pmmrec.data import BatchCollator, SequenceBatch, load_dataset
from pmmrec.data.builders import write_dataset
from pmmrec.inference import encode_catalogue
from pmmrec.prefix_cache import FrozenPrefixCache
from pmmrec.training.config import TrainConfig
from pmmrec.training.module import TrainingModule, item_tower_frozen
from pmmrec.training.trainer import Trainer


def _naive_losses(module: TrainingModule, batch: SequenceBatch, collator: BatchCollator) -> dict[str, torch.Tensor]:
    """The reference's way: every slot (padding and duplicates too) through the full encoders at full width."""
    model = module.model
    flat = batch.item_seq.reshape(-1)
    text_tokens = text_mask = image_tokens = None
    if model.text is not None:
        text_tokens, text_mask = model.text(collator.text_ids[flat], collator.text_mask[flat])  # type: ignore[index]
    if model.vision is not None:
        blank = np.zeros((tiny.CLIP_IMAGE_SIZE, tiny.CLIP_IMAGE_SIZE, 3), np.uint8)
        store = collator.image_store
        assert store is not None
        pixels = np.stack([store.get(collator.item_ids[int(i) - 1]) if i > 0 else blank for i in flat])
        image_tokens = model.vision(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous())
    slot_embeddings = model.fusion(tiny.fusion_tokens(text_tokens, text_mask, image_tokens))  # type: ignore[misc]
    values, first = np.unique(flat.numpy(), return_index=True)  # each distinct item's first slot
    first = torch.as_tensor(first[values > 0])
    assert torch.equal(torch.as_tensor(values[values > 0]), batch.unique_items)
    mask = batch.seq_mask
    per_slot = slot_embeddings.view(*mask.shape, -1) * mask.unsqueeze(-1)
    states = model.encode_users(per_slot[:, :-1], mask[:, :-1])
    states = torch.cat([states, states.new_zeros(states.shape[0], 1, states.shape[2])], dim=1)
    items = slot_embeddings[first]
    losses = {"rec": module.next_item(states, items, batch.slot_index, mask, batch.unique_items, module.log_popularity)}
    if module.nicl is not None:
        text_pooled = masked_mean(text_tokens, text_mask)[first]  # type: ignore[arg-type]
        image_pooled = masked_mean(image_tokens, None)[first]  # type: ignore[arg-type]
        losses["nicl"] = module.nicl(text_pooled, image_pooled, batch.slot_index, mask)
    return losses


def _assert_losses_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert float(a[name].detach()) == pytest.approx(float(b[name].detach()), abs=atol), name


def test_distinct_item_encoding_gives_the_loss_and_gradient_of_encoding_every_slot(tmp_path: Path) -> None:
    collator = batches.collator(tmp_path)
    batch = batches.batch(collator)
    module = batches.module(batches.model(), nicl=0.4)
    fast = module(batch, corruption_seed=0)
    naive = _naive_losses(module, batch, collator)
    assert set(fast) == {"rec", "nicl"}
    _assert_losses_close(fast, naive, atol=1e-5)
    trainable = [p for p in module.parameters() if p.requires_grad]
    fast_grads = torch.autograd.grad(fast["rec"] + fast["nicl"], trainable, allow_unused=True)
    naive_grads = torch.autograd.grad(naive["rec"] + naive["nicl"], trainable, allow_unused=True)
    for fast_grad, naive_grad in zip(fast_grads, naive_grads, strict=True):
        assert (fast_grad is None) == (naive_grad is None)
        if fast_grad is not None:
            torch.testing.assert_close(fast_grad, naive_grad, atol=1e-5, rtol=1e-4)


def test_frozen_prefix_cache_equals_the_uncached_path(tmp_path: Path) -> None:
    collator = batches.collator(tmp_path)
    batch = batches.batch(collator)
    module = batches.module(batches.model(), nicl=0.4)
    cache = FrozenPrefixCache.for_model(module.model, collator, batches.CPU, cache_dir=tmp_path / "prefix")
    assert cache is not None and cache.caches_text and cache.caches_image
    assert isinstance(cache.text_prefix, torch.Tensor)  # small: kept in memory, nothing written
    assert not (tmp_path / "prefix").exists()
    uncached = module(batch, corruption_seed=0)
    module.prefix_cache = cache
    _assert_losses_close(module(batch, corruption_seed=0), uncached, atol=1e-5)
    # In training mode too (dropout in the trainable top layers): same seed, same masks, same losses.
    module.train()
    module.prefix_cache = None
    torch.manual_seed(7)
    uncached_train = module(batch, corruption_seed=0)
    module.prefix_cache = cache
    torch.manual_seed(7)
    _assert_losses_close(module(batch, corruption_seed=0), uncached_train, atol=1e-5)
    # The evaluation table built on cached prefixes equals encoding the catalogue from raw inputs.
    torch.testing.assert_close(
        cache.item_table(module.model), encode_catalogue(module.model, collator, batches.NUM_ITEMS, batches.CPU), atol=1e-5, rtol=1e-4
    )


def test_frozen_item_tower_table_equals_encoding(tmp_path: Path) -> None:
    collator = batches.collator(tmp_path)
    batch = batches.batch(collator)
    model = batches.model()
    module = batches.module(model)
    for slot in ("text", "vision", "fusion"):
        getattr(model, slot).requires_grad_(False)
    assert item_tower_frozen(model)
    encoded = module(batch, corruption_seed=0)
    module.item_table = encode_catalogue(model, collator, batches.NUM_ITEMS, batches.CPU)
    from_table = module(batch, corruption_seed=0)
    _assert_losses_close(from_table, encoded, atol=1e-5)
    from_table["rec"].backward()  # only the user encoder (nothing of the tower) gets gradients
    assert any(p.grad is not None for p in model.user.parameters())
    assert all(p.grad is None for slot in ("text", "vision", "fusion") for p in getattr(model, slot).parameters())
    # NICL needs per-modality states: with NICL active the Trainer keeps encoding (table_per_epoch is off).
    assert batches.module(model, nicl=0.4).nicl is not None


def test_trainer_uses_the_table_for_a_frozen_tower_and_logs_data_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PMMREC_CACHE", str(tmp_path / "cache"))
    item_ids = [f"i{n}" for n in range(1, batches.NUM_ITEMS + 1)]
    sequences = [[item_ids[int(i) - 1] for i in sequence] for sequence in batches.sequences() * 2]
    root = write_dataset(
        tmp_path / "data",
        name="tiny",
        item_ids=item_ids,
        item_texts=batches.texts(),
        user_ids=[f"u{n}" for n in range(len(sequences))],
        user_items=sequences,
        provenance={"source": "test"},
        preprocessing={},
    )
    dataset = load_dataset(root)
    options = {"epochs": 1, "batch_size": 4, "max_steps": 2, "max_length": 7, "device": "cpu", "freeze": ["text"]}
    model = batches.model(vision=False)
    trainer = Trainer(model, dataset, TrainConfig.model_validate(options), tmp_path / "run", progress=False)
    assert trainer.table_per_epoch
    calls = 0
    original = model.encode_items

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    trainer._step = _wrap_step(trainer, lambda: calls)  # type: ignore[method-assign]
    monkeypatch.setattr(model, "encode_items", counting)
    trainer.run()
    assert trainer.module.item_table is not None and trainer.module.item_table.shape == (batches.NUM_ITEMS + 1, tiny.DIM)
    assert trainer.encode_calls_during_steps == [0, 0]  # type: ignore[attr-defined]
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [record for record in steps if record["event"] == "step"]
    assert len(steps) == 2 and all(record["data_wait_s"] >= 0 and record["step_s"] > 0 for record in steps)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0.0 <= summary["data_wait_share"] <= 1.0
    # With a trainable text encoder the item tower is encoded at every step.
    unfrozen = Trainer(
        batches.model(vision=False),
        dataset,
        TrainConfig.model_validate({**options, "freeze": []}),
        tmp_path / "run2",
        progress=False,
    )
    assert not unfrozen.table_per_epoch


def _wrap_step(trainer: Trainer, calls: object) -> object:
    """Record how many encode_items calls each training step made."""
    original = trainer._step
    trainer.encode_calls_during_steps = []  # type: ignore[attr-defined]

    def step(batch: SequenceBatch, global_step: int) -> dict[str, float]:
        before = calls()  # type: ignore[operator]
        values = original(batch, global_step)
        trainer.encode_calls_during_steps.append(calls() - before)  # type: ignore[attr-defined,operator]
        return values

    return step


def test_memmap_cache_is_reused_and_never_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    collator = batches.collator(tmp_path)
    batch = batches.batch(collator)
    module = batches.module(batches.model())
    model = module.model
    folder = tmp_path / "prefix"
    uncached = module(batch, corruption_seed=0)
    cache = FrozenPrefixCache.for_model(model, collator, batches.CPU, memory_budget=0, cache_dir=folder)
    assert cache is not None
    assert isinstance(cache.text_prefix, np.memmap) and cache.text_prefix.dtype == np.float16
    assert isinstance(cache.image_prefix, np.memmap)
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2 and not any(".tmp" in name for name in files)
    module.prefix_cache = cache
    _assert_losses_close(module(batch, corruption_seed=0), uncached, atol=2e-3)  # fp16 storage

    counts = {"text": 0, "image": 0}

    def count(encoder: torch.nn.Module, label: str) -> None:
        original = encoder.frozen_prefix

        def counted(*args: torch.Tensor) -> torch.Tensor:
            counts[label] += 1
            return original(*args)

        monkeypatch.setattr(encoder, "frozen_prefix", counted)

    count(model.text, "text")  # type: ignore[arg-type]
    count(model.vision, "image")  # type: ignore[arg-type]
    # Same frozen weights and inputs: the second build reads both files; a trainable top layer may change freely.
    with torch.no_grad():
        model.text.layers[-1].output.dense.weight.add_(0.5)  # type: ignore[union-attr]
    again = FrozenPrefixCache.for_model(model, collator, batches.CPU, memory_budget=0, cache_dir=folder)
    assert again is not None and counts == {"text": 0, "image": 0}
    np.testing.assert_array_equal(np.asarray(again.text_prefix), np.asarray(cache.text_prefix))
    # A frozen weight changes: the text file is stale and rebuilt under a new key; images still reused.
    with torch.no_grad():
        model.text.backbone.embeddings.word_embeddings.weight.mul_(1.01)  # type: ignore[union-attr]
    FrozenPrefixCache.for_model(model, collator, batches.CPU, memory_budget=0, cache_dir=folder)
    assert counts["text"] > 0 and counts["image"] == 0
    assert len(list(folder.glob("text-*.npy"))) == 2
    # One stored image changes: the image file is stale too.
    changed = BatchCollator(
        collator.item_ids,
        collator.text_ids,
        collator.text_mask,
        batches.write_images(tmp_path / "images2.lmdb", collator.item_ids, changed="i5"),
        image_size=tiny.CLIP_IMAGE_SIZE,
    )
    FrozenPrefixCache.for_model(model, changed, batches.CPU, memory_budget=0, cache_dir=folder)
    assert counts["image"] > 0
    assert len(list(folder.glob("image-*.npy"))) == 2
