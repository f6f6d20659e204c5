"""Fast, direct tests for one-line bugs that survived the suite or were caught only by slow tests (issue 25).

A spot-check with new one-line bugs found five that only the slow crash-point and resume subprocess tests, golden
files (which a regeneration would hide), or nothing at all caught. Each test here pins one of them in milliseconds
and names the bug it guards against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny
import torch

from pmmrec import evaluation
from pmmrec.components import MergeAttentionConfig, MergeAttentionFusion
from pmmrec.components.fusion_merge_attention import IMAGE_TYPE, TEXT_TYPE
from pmmrec.components.kinds import masked_mean
from pmmrec.recovery import recover, sibling


class _RoundingTorch:
    """torch, except that the first `mm` (the targets' own scores) comes out one float32 step lower, as a kernel
    that sums in another order can round it."""

    def __init__(self) -> None:
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def mm(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        result = torch.mm(*args, **kwargs)
        if self.calls == 1:
            return torch.nextafter(result, torch.full_like(result, float("-inf")))
        return result


def test_a_chunk_is_recounted_when_the_targets_block_rounds_its_score_differently(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against skipping the exact recount when a target's own block scores it differently from the small
    multiply (then every item tied with the target, rounded differently, counts against the user)."""
    generator = torch.Generator().manual_seed(0)
    items = torch.randn(9, 8, generator=generator)
    items[3] = items[5] = items[7] = items[2]  # three items tie exactly with the target (item 2)
    states = torch.randn(2, 8, generator=generator)
    targets = torch.tensor([2, 2])
    empty = torch.zeros(0, dtype=torch.long)
    indptr = torch.zeros(3, dtype=torch.long)
    expected = evaluation.rank_targets(states, items, targets, indptr, empty, block_columns=4)
    monkeypatch.setattr(evaluation, "torch", _RoundingTorch())
    rounded = evaluation.rank_targets(states, items, targets, indptr, empty, block_columns=4)
    assert torch.equal(rounded, expected)  # ties still count in the user's favour
    scores = states @ items.T
    naive = 1 + ((scores[:, 1:] > scores[:, 2:3]).sum(dim=1))
    assert torch.equal(expected, naive)


def test_the_frozen_prefix_cache_key_covers_the_items_token_ids(tmp_path: Path, isolated: Path) -> None:
    """Guards against a cache key that ignores the token ids: an item text edited to another text of the same
    length (same mask) must not reuse the stale prefixes stored for the old text."""
    from pmmrec.data import load_dataset
    from pmmrec.inference import make_collator
    from pmmrec.prefix_cache import FrozenPrefixCache

    model = tiny.text_model()
    data = tiny.write_tiny_dataset(tmp_path / "data")
    dataset = load_dataset(data)
    collator = make_collator(model, dataset)
    cache_dir = tmp_path / "prefixes"
    device = torch.device("cpu")
    first = FrozenPrefixCache.for_model(model, collator, device, memory_budget=0, cache_dir=cache_dir)
    assert first is not None
    stored = sorted(path.name for path in cache_dir.iterdir())
    edited = collator.text_ids.clone()
    row, column = 1, 1  # item 1, its first token after [CLS]: another word, the same length and mask
    edited[row, column] = 2000 if int(edited[row, column]) != 2000 else 2001
    collator.text_ids = edited
    second = FrozenPrefixCache.for_model(model, collator, device, memory_budget=0, cache_dir=cache_dir)
    assert second is not None
    assert sorted(path.name for path in cache_dir.iterdir()) != stored  # a new key, a new file
    fresh = model.text.frozen_prefix(edited[1:2], collator.text_mask[1:2])[collator.text_mask[1:2].bool()]
    cached = torch.tensor(np.array(second.text_prefix[second.text_offsets[1] : second.text_offsets[2]]), dtype=torch.float32)
    assert torch.allclose(cached, fresh, atol=1e-2)


def test_a_lone_incomplete_staging_folder_is_never_put_into_place(tmp_path: Path) -> None:
    """Guards against recovery renaming a staging folder into place when no moved-aside version says it was complete:
    a writer killed while staging a brand-new folder leaves only that `.tmp`, which is half written."""
    target = tmp_path / "artefact"
    staging = sibling(target, "0123456789ab", "tmp")
    staging.mkdir()
    (staging / "half.bin").write_bytes(b"\0" * 10)
    recover(target)
    assert not target.exists()
    assert not staging.exists()  # its writer is dead (no lock held): removed


def test_resume_skips_exactly_the_batches_already_trained(tmp_path: Path, isolated: Path) -> None:
    """Guards against a resume that replays most of an epoch: the loader of a resumed epoch yields exactly the
    batches after the checkpoint's step, in the same order."""
    from pmmrec.data import load_dataset
    from pmmrec.training.trainer import Trainer

    dataset = load_dataset(tiny.write_tiny_dataset(tmp_path / "data"))
    trainer = Trainer(tiny.text_model(), dataset, tiny.train_config(batch_size=2), tmp_path / "run", progress=False)
    whole = [batch.item_seq for batch in trainer._loader(0, 0)]
    assert len(whole) >= 4
    resumed = [batch.item_seq for batch in trainer._loader(0, 3)]
    assert len(resumed) == len(whole) - 3
    assert all(torch.equal(a, b) for a, b in zip(resumed, whole[3:], strict=True))


def test_image_tokens_get_the_image_type_embedding() -> None:
    """Guards against giving image tokens the text type embedding (the fusion could then not tell them apart)."""
    torch.manual_seed(0)
    fusion = MergeAttentionFusion(MergeAttentionConfig(dim=8, heads=2, dropout=0.0)).eval()
    with torch.no_grad():
        fusion.type_embeddings.weight.copy_(torch.randn(2, 8) * 3)
    text, image = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        output = fusion(tiny.fusion_tokens(text, mask, image))
        weights = fusion.type_embeddings.weight
        tokens = torch.cat([text + weights[TEXT_TYPE], image + weights[IMAGE_TYPE]], dim=1)
        valid = torch.cat([mask, torch.ones(2, 4, dtype=torch.bool)], dim=1)
        expected = masked_mean(fusion.layer(tokens, src_key_padding_mask=~valid), valid)
    assert torch.allclose(output, expected, atol=1e-6)
