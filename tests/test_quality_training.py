"""Issue 12, training side: every training interaction trains, popularity follows the windows, the full-catalogue
softmax, learning rates by what is trained, training until validation stops improving, and the split record that
`pmmrec evaluate` reads back. Tiny seeded components and a tiny dataset throughout."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from tiny import isolated_environment, save_tiny_components, text_model, write_tiny_dataset
from tiny import train_config as config

from pmmrec import api
from pmmrec.data import BatchCollator, TrainSequences, leave_one_out, load_dataset, tile_ends
from pmmrec.model import PMMRec
from pmmrec.objectives import NextItemConfig, NextItemLoss
from pmmrec.training.jobs import train
from pmmrec.training.module import TrainingModule
from pmmrec.training.optim import slot_learning_rates
from pmmrec.training.trainer import Trainer


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with isolated_environment(tmp_path, monkeypatch):
        yield


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def _targets_of(window: np.ndarray) -> list[int]:
    """The items a window trains as next-item targets (every real item after the first real slot)."""
    real = window[window > 0]
    return real[1:].tolist()


# ---- windows -------------------------------------------------------------------------------------------------------


def test_tiles_make_every_training_interaction_a_target_exactly_once() -> None:
    """Guards against training only each user's last max_len + 1 items (the old TrainSequences)."""
    rng = np.random.default_rng(0)
    sequences = [rng.integers(1, 50, size=length) for length in (1, 2, 3, 4, 5, 9, 10, 11, 40, 97)]
    train = TrainSequences(sequences, max_len=4)
    targets: collections.Counter[tuple[int, int]] = collections.Counter()
    for row, end in train.windows:
        start = max(0, end - 5)
        window = train[train.windows.index((row, end))]
        assert window[window > 0].tolist() == sequences[row][start:end].tolist()
        targets.update((row, position) for position in range(start + 1, end))
    expected = {(row, position) for row, sequence in enumerate(sequences) for position in range(1, len(sequence))}
    assert set(targets) == expected and set(targets.values()) == {1}
    assert tile_ends(10, 4) == [10, 6, 2] and tile_ends(1, 4) == [1]
    by_row = [[end for row, end in train.windows if row == user] for user in range(len(sequences))]
    assert by_row == [tile_ends(len(sequence), 4) for sequence in sequences]  # vectorised == the rule


def test_one_epoch_of_the_trainer_trains_every_training_interaction(tmp_path: Path, dataset_dir: Path) -> None:
    """Every training item but each user's first is a target in the batches of one epoch (tiles, the default)."""
    dataset = load_dataset(dataset_dir)
    trainer = Trainer(text_model(), dataset, config(max_length=3), tmp_path / "run", progress=False)
    seen: collections.Counter[int] = collections.Counter()
    for batch in trainer._loader(0, 0):
        for row in batch.item_seq.numpy():
            seen.update(_targets_of(row))
    expected: collections.Counter[int] = collections.Counter()
    for sequence in trainer.split.train:
        expected.update(sequence[1:].tolist())
    assert seen == expected
    # The popularity correction counts exactly the training interactions (whole sequences, first items included).
    counts = torch.zeros(dataset.num_items + 1)
    for sequence in trainer.split.train:
        counts += torch.bincount(torch.as_tensor(sequence), minlength=dataset.num_items + 1)
    expected_log_p = torch.log((counts / counts[1:].sum()).clamp_min(1e-8))
    assert torch.allclose(trainer.module.log_popularity[1:], expected_log_p[1:].float())


def test_random_crops_cover_every_interaction_within_the_documented_epochs() -> None:
    """One window per user per epoch, full length where possible; 60 epochs cover every position of sequences up to
    three windows long (docs/training.md states the per-epoch chance max_len / (n - max_len))."""
    rng = np.random.default_rng(1)
    sequences = [rng.integers(1, 30, size=length) for length in (2, 5, 8, 12)]
    crops = TrainSequences(sequences, max_len=4, scheme="crop", seed=3)
    covered: set[tuple[int, int]] = set()
    for epoch in range(60):
        crops.set_epoch(epoch)
        assert len(crops) == len(sequences)
        for row, end in crops.windows:
            assert min(len(sequences[row]), 5) <= end <= len(sequences[row])
            covered.update((row, position) for position in range(max(0, end - 5) + 1, end))
    assert covered == {(row, p) for row, sequence in enumerate(sequences) for p in range(1, len(sequence))}
    first = TrainSequences(sequences, max_len=4, scheme="crop", seed=3)
    first.set_epoch(7)
    crops.set_epoch(7)
    assert first.windows == crops.windows  # seeded by (seed, epoch): resumable


def test_last_window_scheme_counts_only_what_it_trains() -> None:
    sequences = [np.array([1, 2, 3, 4, 5, 6]), np.array([2, 3])]
    last = TrainSequences(sequences, max_len=2, scheme="last")
    assert [last[i].tolist() for i in range(len(last))] == [[4, 5, 6], [0, 2, 3]]
    assert last.item_counts(6).tolist() == [0, 0, 1, 1, 1, 1, 1]


# ---- the full-catalogue softmax ----------------------------------------------------------------------------------


def test_full_softmax_scores_every_catalogue_item_without_popularity_correction(dataset_dir: Path) -> None:
    """Guards the standard SASRec cross-entropy: each position against all N items, own history items masked."""
    dataset = load_dataset(dataset_dir)
    split = leave_one_out(dataset.sequences)
    collator = BatchCollator(dataset.item_ids, None, None, None)
    collator.all_items_as_candidates = True
    batch = collator([TrainSequences(split.train, 4)[i] for i in range(5)])
    num_items = dataset.num_items
    assert batch.unique_items.tolist() == list(range(1, num_items + 1))
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(5, 5, 8, generator=generator, dtype=torch.float64)
    table = torch.randn(num_items, 8, generator=generator, dtype=torch.float64)
    log_p = torch.log(torch.rand(num_items + 1, generator=generator, dtype=torch.float64))
    loss = NextItemLoss(NextItemConfig(softmax="full"))(
        states, table, batch.slot_index, batch.seq_mask, batch.unique_items, log_p
    )
    seq = batch.item_seq
    terms = []
    for b in range(5):
        own = {int(i) for i in seq[b] if i > 0}
        for position in range(4):
            if seq[b, position] == 0 or seq[b, position + 1] == 0:
                continue
            target = int(seq[b, position + 1])
            logits = table @ states[b, position]
            for item in own - {target}:
                logits[item - 1] = float("-inf")
            terms.append(float(torch.logsumexp(logits, 0) - logits[target - 1]))
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_softmax_auto_is_full_for_id_towers_and_in_batch_for_content(dataset_dir: Path) -> None:
    dataset = load_dataset(dataset_dir)
    id_model = PMMRec.assemble(item_tower=tiny.tiny_id_tower(num_items=dataset.num_items), user=tiny.tiny_user_encoder())
    counts = torch.zeros(dataset.num_items + 1)
    assert TrainingModule(id_model, config(), counts).full_softmax
    assert not TrainingModule(text_model(), config(), counts).full_softmax
    assert TrainingModule(text_model(), config(objectives={"next_item": {"softmax": "full"}}), counts).full_softmax


def test_a_content_model_trains_with_the_full_softmax(tmp_path: Path, dataset_dir: Path) -> None:
    result = Trainer(text_model(), load_dataset(dataset_dir), config(objectives={"next_item": {"softmax": "full"}}),
                     tmp_path / "run", progress=False).run()  # fmt: skip
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["softmax"] == "full" and np.isfinite(result.best_valid["ndcg@10"])


# ---- learning rates, early stopping ------------------------------------------------------------------------------


def test_default_learning_rates_depend_on_what_is_trained(tmp_path: Path, dataset_dir: Path) -> None:
    """Fresh user encoders and ID tables get fresh_lr, encoders and transferred parts pretrained_lr."""
    dataset = load_dataset(dataset_dir)
    counts = torch.ones(dataset.num_items + 1)
    fresh = TrainingModule(text_model(), config(), counts)
    assert slot_learning_rates(fresh, config()) == {
        "text": 1e-4, "fusion": 1e-3, "user": 1e-3, "objectives": 1e-3,
    }  # fmt: skip
    paths = save_tiny_components(tmp_path / "parts")
    transferred = PMMRec.assemble(text=str(paths["text"]), user=str(paths["user"]))
    rates = slot_learning_rates(TrainingModule(transferred, config(), counts), config())
    assert rates["user"] == 1e-4 and rates["text"] == 1e-4
    assert slot_learning_rates(fresh, config(lr=5e-4))["user"] == 5e-4
    assert slot_learning_rates(fresh, config(component_lr={"user": 2e-3}, fresh_lr=7e-3))["fusion"] == 7e-3


def test_without_epochs_training_stops_when_validation_stops_improving(
    tmp_path: Path, dataset_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the default of `pmmrec finetune` without --epochs: early stopping on patience, capped by max_epochs."""
    from pmmrec.inference import EvaluationResult

    scores = iter([0.1, 0.3, 0.2, 0.25, 0.29, 0.5, 0.6])

    def fake_evaluate(self: Trainer, which: str) -> EvaluationResult:
        value = next(scores) if which == "valid" else 0.0
        return EvaluationResult(ranks=np.ones(3, dtype=np.int64), metrics={"ndcg@10": value, "hr@10": value})

    monkeypatch.setattr(Trainer, "_evaluate", fake_evaluate)
    cfg = config(epochs=None, patience=3, max_epochs=20)
    result = Trainer(text_model(), load_dataset(dataset_dir), cfg, tmp_path / "run", progress=False).run()
    assert len(result.history) == 5 and result.best_epoch == 2
    capped = Trainer(text_model(), load_dataset(dataset_dir), config(epochs=None, patience=None, max_epochs=2),
                     tmp_path / "capped", progress=False).run()  # fmt: skip
    assert len(capped.history) == 2


# ---- the split record and pmmrec evaluate ------------------------------------------------------------------------


def test_evaluate_splits_the_data_as_the_run_did(tmp_path: Path, dataset_dir: Path) -> None:
    """Guards against `pmmrec evaluate` using its own defaults instead of the run's min length and history cap."""
    paths = save_tiny_components(tmp_path / "parts")
    overrides = {**config().model_dump(exclude={"model"}), "min_length": 7, "max_history": 9, "max_length": 6}
    overrides["model"] = {"text": str(paths["text"]), "user": str(paths["user"])}
    train("finetune", dataset_dir, tmp_path / "run", overrides=overrides, progress=False)
    record = json.loads((tmp_path / "run" / "model" / "data_split.json").read_text())
    fingerprint = record.pop("dataset")
    assert record == {"min_length": 7, "max_history": 9, "max_length": 6, "window": "tiles"}
    assert fingerprint["name"] == load_dataset(dataset_dir).name and len(fingerprint["users_sha256"]) == 64
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = api.evaluate(tmp_path / "run" / "model", dataset_dir, ks=(10,), progress=False)
    assert metrics["num_users"] == summary["users"] < load_dataset(dataset_dir).num_users
    assert metrics["ndcg@10"] == pytest.approx(summary["test"]["ndcg@10"], abs=1e-6)
    overridden = api.evaluate(tmp_path / "run" / "model", dataset_dir, ks=(10,), min_length=3, progress=False)
    assert overridden["num_users"] == load_dataset(dataset_dir).num_users


def test_history_include_ranks_history_items_too(tmp_path: Path, dataset_dir: Path) -> None:
    """RecBole's protocol: the same model, history items left in the ranking, so no rank improves."""
    model = text_model()
    out = tmp_path / "include.json"
    api.evaluate(model, dataset_dir, ks=(10,), exclude_seen=False, json_path=out, progress=False)
    api.evaluate(model, dataset_dir, ks=(10,), exclude_seen=True, json_path=tmp_path / "exclude.json", progress=False)
    include = np.array(json.loads(out.read_text())["ranks"])
    exclude = np.array(json.loads((tmp_path / "exclude.json").read_text())["ranks"])
    assert (include >= exclude).all() and (include > exclude).any()


def test_baselines_are_evaluable_from_the_cli_like_models(tmp_path: Path, dataset_dir: Path) -> None:
    """`pmmrec evaluate --baseline popularity|content-knn` needs no --model; its ranks match the library's."""
    from tiny import run_cli

    from pmmrec.baselines import baseline_ranks

    out = tmp_path / "pop.json"
    text = run_cli("evaluate", "--data", dataset_dir, "--baseline", "popularity", "--k", "10", "--json")
    out.write_text(text)
    dataset = load_dataset(dataset_dir)
    expected = baseline_ranks("popularity", dataset, leave_one_out(dataset.sequences), "test")
    assert json.loads(out.read_text())["ranks"] == expected.tolist()
    knn = run_cli("evaluate", "--data", dataset_dir, "--baseline", "content-knn", "--split", "valid", "--k", "10")
    assert "(content-knn)" in knn
    assert "exactly one of --model and --baseline" in run_cli("evaluate", "--data", dataset_dir, expect=2)
