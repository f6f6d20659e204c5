"""Issue 24, point 2: training knows only the items of its time. The full softmax scores only the items of the
training sequences (plus `known_items`), a never-trained item's ID row gets no gradient and is zeroed, and
evaluation ranks it below every trained item. Tiny seeded components and a hand-made dataset throughout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch

from pmmrec.components import IdItemTower
from pmmrec.data import (
    BatchCollator,
    EvalSequences,
    TrainSequences,
    known_items,
    leave_one_out,
    load_dataset,
    write_dataset,
)
from pmmrec.errors import ArtefactError, ConfigError
from pmmrec.evaluation import rank_targets, rank_targets_with_unscored
from pmmrec.model import PMMRec
from pmmrec.training.trainer import Trainer

NEW = "i8"  # the item that only ever is a last (test) item: unknown at training time


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with tiny.isolated_environment(tmp_path, monkeypatch):
        yield


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Items i1..i8; i8 occurs only as some users' last item (a new item), i7 as one user's second-last only."""
    items = [f"i{n}" for n in range(1, 9)]
    users = [
        ["i1", "i2", "i3", "i4", NEW],
        ["i2", "i3", "i4", "i5", "i6"],
        ["i3", "i4", "i5", "i6", NEW],
        ["i1", "i3", "i5", "i7", "i2"],
        ["i4", "i5", "i6", "i1", "i2", "i3"],
        ["i6", "i5", "i4", "i3", NEW],
    ]
    return write_dataset(
        tmp_path_factory.mktemp("data") / "known",
        name="known",
        item_ids=items,
        item_texts=[f"The {tiny.WORDS[n]} {tiny.WORDS[n + 9]}" for n in range(8)],
        user_ids=[f"u{n}" for n in range(len(users))],
        user_items=users,
        provenance={"source": "tests"},
        preprocessing={},
    )


def _id_model(num_items: int) -> PMMRec:
    from pmmrec.components import IdItemTowerConfig, SASRecConfig, SASRecUserEncoder

    torch.manual_seed(0)
    tower = IdItemTower(IdItemTowerConfig(dim=16, num_items=num_items), item_ids=[f"i{n}" for n in range(1, 9)])
    return PMMRec.assemble(
        item_tower=tower, user=SASRecUserEncoder(SASRecConfig(dim=16, max_length=4, layers=1, heads=2))
    )


def test_known_items_are_the_training_items_plus_the_ones_given(dataset_dir: Path) -> None:
    dataset = load_dataset(dataset_dir)
    split = leave_one_out(dataset.sequences)
    assert known_items(split, dataset.item_ids).tolist() == [1, 2, 3, 4, 5, 6]  # i7: second-last only; i8: last only
    assert known_items(split, dataset.item_ids, ["i8"]).tolist() == [1, 2, 3, 4, 5, 6, 8]
    with pytest.raises(ConfigError, match="not in the catalogue: \\['nope'\\]"):
        known_items(split, dataset.item_ids, ["nope"])


def test_full_softmax_candidates_are_the_known_items_only() -> None:
    """Guards against the full softmax listing the whole catalogue (future items as negatives at every step)."""
    collator = BatchCollator([f"i{n}" for n in range(1, 7)], None, None, None)
    collator.all_items_as_candidates = True
    collator.known_items = np.array([1, 2, 4, 5])
    batch = collator([np.array([0, 2, 5]), np.array([4, 4, 1])])
    assert batch.unique_items.tolist() == [1, 2, 4, 5]
    assert batch.unique_items[batch.slot_index][batch.seq_mask].tolist() == [2, 5, 4, 4, 1]
    with pytest.raises(ConfigError, match="not in the collator's known_items"):
        collator([np.array([1, 3])])


def test_a_never_trained_item_row_gets_no_gradient_and_ranks_below_every_trained_item(
    tmp_path: Path, dataset_dir: Path
) -> None:
    dataset = load_dataset(dataset_dir)
    model = _id_model(dataset.num_items)
    trainer = Trainer(
        model, dataset, tiny.train_config(max_length=4, epochs=2, batch_size=8), tmp_path / "run", progress=False
    )
    assert trainer.module.full_softmax  # softmax auto: full for an ID tower
    weight = trainer.module.model.item_tower.embeddings.weight  # type: ignore[union-attr]
    assert torch.equal(weight[7], torch.zeros(16)) and torch.equal(weight[8], torch.zeros(16))  # i7, i8 zeroed
    batch = next(iter(trainer._loader(0, 0)))
    assert batch.unique_items.tolist() == [1, 2, 3, 4, 5, 6]
    losses = trainer.module(batch, corruption_seed=0)
    losses["rec"].backward()
    assert weight.grad is not None
    assert torch.equal(weight.grad[8], torch.zeros(16)) and torch.equal(weight.grad[7], torch.zeros(16))
    assert bool(weight.grad[1:7].abs().sum(dim=1).gt(0).all())  # every known item's row learns
    weight.grad = None

    trainer.run()
    saved = PMMRec.from_pretrained(tmp_path / "run" / "best")
    tower = saved.item_tower
    assert isinstance(tower, IdItemTower) and tower.untrained_rows == [7, 8]
    assert torch.equal(tower.embeddings.weight[7:9], torch.zeros(2, 16))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["known_items"] == 6
    # Test targets i8 (users 0, 2, 5) rank after every trained candidate: 1 + trained items outside the history.
    from pmmrec.inference import evaluate_split, make_collator

    split = leave_one_out(dataset.sequences)
    ranks = evaluate_split(
        saved, split, "test", make_collator(saved, dataset), dataset.num_items, torch.device("cpu")
    ).ranks
    for user in (0, 2, 5):
        history = set(split.test_history[user].tolist())
        assert ranks[user] == 1 + len({1, 2, 3, 4, 5, 6} - history)


def test_ranking_with_unscored_items_matches_hand_computed_ranks() -> None:
    """Scores of one user: item 1: 3, item 2: 1 (history), item 3: unscored (zero row, 0), item 4: -1, item 5: 2."""
    table = torch.tensor([[0.0], [3.0], [1.0], [0.0], [-1.0], [2.0]])
    states = torch.ones(3, 1)
    targets = torch.tensor([4, 3, 1])
    indptr, history = torch.tensor([0, 1, 2, 3]), torch.tensor([2, 2, 2])
    plain = rank_targets(states, table, targets, indptr, history)
    assert plain.tolist() == [4, 3, 1]  # target 4 is beaten by items 1, 5 and the unscored 3 (0 > -1)
    ranks = rank_targets_with_unscored(states, table, targets, indptr, history, torch.tensor([3]))
    assert ranks.tolist() == [3, 4, 1]  # 4: beaten by 1 and 5 only; 3: after the scored non-history items 1, 4, 5
    assert rank_targets_with_unscored(states, table, targets, indptr, history, None).tolist() == [4, 3, 1]
    everything = rank_targets_with_unscored(states, table, targets, torch.zeros(4, dtype=torch.long),
                                            torch.zeros(0, dtype=torch.long), torch.tensor([3]))  # fmt: skip
    assert everything.tolist() == [4, 5, 1]  # history included: item 2 (1 > -1) counts for target 4


def test_untrained_rows_survive_saving_and_a_bad_file_is_refused(tmp_path: Path) -> None:
    tower = tiny.tiny_id_tower(num_items=5)
    tower.train_only(torch.tensor([1, 3, 4]))
    assert tower.untrained_rows == [2, 5] and tower.untrained_indices(5).tolist() == [2, 5]
    tower.bind_catalogue([f"item-{n}" for n in (5, 4, 3, 2, 1)])  # the dataset lists the items in reverse
    assert tower.untrained_indices(5).tolist() == [1, 4]
    folder = tower.save_pretrained(tmp_path / "tower")
    loaded = IdItemTower.from_pretrained(folder)
    assert loaded.untrained_rows == [2, 5] and torch.equal(loaded.embeddings.weight[2], torch.zeros(tiny.DIM))
    (folder / "untrained_rows.json").write_text("[0, 9]")
    tiny.reseal(folder)
    with pytest.raises(ArtefactError, match=r"untrained_rows\.json: expected a list of row numbers in 1\.\.5"):
        IdItemTower.from_pretrained(folder)
    unsaved = tiny.tiny_id_tower(num_items=5)
    assert unsaved.untrained_indices(5).numel() == 0  # a tower no run has trained keeps every row as it is


def test_recommendations_never_hold_a_never_trained_item(tmp_path: Path, dataset_dir: Path) -> None:
    from pmmrec.inference import encode_catalogue, make_collator, top_k

    dataset = load_dataset(dataset_dir)
    model = _id_model(dataset.num_items)
    model.item_tower.train_only(torch.tensor([1, 2, 3, 4, 5, 6]))  # type: ignore[union-attr]
    table = encode_catalogue(model, make_collator(model, dataset), dataset.num_items, torch.device("cpu"))
    recommended = top_k(model, table, dataset.item_ids, dataset.item_texts, [1, 2], k=8)
    assert {r.item_id for r in recommended} == {"i1", "i2", "i3", "i4", "i5", "i6"}


def test_content_training_never_encodes_a_never_trained_item(dataset_dir: Path) -> None:
    dataset = load_dataset(dataset_dir)
    trainer_split = leave_one_out(dataset.sequences)
    collator = BatchCollator(dataset.item_ids, None, None, None)
    collator.all_items_as_candidates = True
    collator.known_items = known_items(trainer_split, dataset.item_ids)
    windows = TrainSequences(trainer_split.train, 4)
    batch = collator([windows[i] for i in range(len(windows))])
    assert 8 not in batch.unique_items.tolist() and 7 not in batch.unique_items.tolist()
    evaluation = collator.sequences_only([EvalSequences(trainer_split.test_history, trainer_split.test_target, 4)[0]])
    assert evaluation.targets.tolist() == [8]  # evaluation still ranks it: the whole catalogue
