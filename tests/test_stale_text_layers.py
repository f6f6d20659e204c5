"""Text layers updated every N steps from gradients gathered on a table (`tower_update_every`, issue 28.1).

The projection of the table's mean states is the text-only tower's embedding; the gathered gradient is the sum of the
steps' exact gradients while the layers stand still; a run trains the top layer only at its updates and never the
frozen bottom; settings where it cannot apply are refused by name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import torch

from pmmrec.data import load_dataset
from pmmrec.errors import ConfigError
from pmmrec.inference import encode_catalogue, make_collator
from pmmrec.model import PMMRec
from pmmrec.training.stale_items import (
    StaleTextLayers,
    catalogue_word_pieces,
    encoder_with_gradients,
    update_steps,
)
from pmmrec.training.trainer import Trainer

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _environment(isolated: Path) -> None:
    """The isolated environment (private cache, offline, one thread)."""


def _stale(
    tiny_dataset: Path, every: int = 2, words: bool = False, pieces: bool = True
) -> tuple[StaleTextLayers, object, object]:
    dataset = load_dataset(tiny_dataset)
    narrow = 16  # d below the backbone's width (32): the table must hold backbone states, not embeddings
    text = tiny.tiny_text_encoder(seed=1, dim=narrow)
    if words:  # word-piece embeddings, made non-zero so that a missing or doubled mean shows
        text.add_word_embeddings_table()
        with torch.no_grad():
            text.word_embeddings.weight.normal_(generator=torch.Generator().manual_seed(3))
    model = PMMRec.assemble(text=text, user=tiny.tiny_user_encoder(seed=2, dim=narrow)).eval()
    model.bind_catalogue(dataset.item_ids)
    collator = make_collator(model, dataset)
    order = list(range(1, dataset.num_items + 1))
    encode = encoder_with_gradients(model, collator, CPU)
    word_pieces = catalogue_word_pieces(collator, dataset.num_items, CPU) if words and pieces else None
    stale = StaleTextLayers(every, model, encode, order, steps_per_epoch=every, chunk_size=7, word_pieces=word_pieces)
    return stale, model, collator


@pytest.mark.parametrize("words", [False, True], ids=["tokens", "word-embeddings"])
def test_the_projected_table_is_the_towers_embedding(tiny_dataset: Path, words: bool) -> None:
    """Guards against the deferred projection not commuting with the tower's mean (a wrong item for every step), and
    against the word-piece embeddings' mean being lost or counted twice on the table's path."""
    stale, model, collator = _stale(tiny_dataset, words=words)
    exact = encode_catalogue(model, collator, stale.table.shape[0] - 1, CPU)
    items = torch.arange(1, stale.table.shape[0])
    with torch.no_grad():
        assert torch.allclose(stale.embed(items), exact[1:], atol=1e-5)
    assert stale.table.shape[1] == model.text.projection.in_features != model.dim  # the backbone's width, not d


def test_word_embeddings_without_their_pieces_are_refused(tiny_dataset: Path) -> None:
    """Guards against a table path that silently leaves out the word-piece embeddings the evaluation adds."""
    with pytest.raises(ValueError, match="give word_pieces"):
        _stale(tiny_dataset, words=True, pieces=False)


@pytest.mark.parametrize("words", [False, True], ids=["tokens", "word-embeddings"])
def test_the_gathered_gradient_is_the_sum_of_the_steps_gradients(tiny_dataset: Path, words: bool) -> None:
    """Guards against a lost, doubled or misplaced item gradient: with the layers unchanged between the steps, the
    update's gradient equals that of the steps' losses computed through the whole tower (the word-piece embeddings,
    trained every step, included)."""
    stale, model, collator = _stale(tiny_dataset, words=words)
    generator = torch.Generator().manual_seed(0)
    steps = [torch.tensor([1, 4, 5, 9]), torch.tensor([2, 4, 9, 11, 12])]  # item 4 and 9 read twice
    targets = [torch.randn(len(items), model.dim, generator=generator) for items in steps]
    for step, (items, target) in enumerate(zip(steps, targets, strict=True), start=1):
        (stale.embed(items) * target).sum().backward()
        due = stale.gather(step)
    assert due and stale.backpropagate() == 7  # distinct items read
    layers = [p for p in model.text.backbone.parameters() if p.requires_grad]
    if words:
        layers.append(model.text.word_embeddings.weight)
    gathered = [p.grad.clone() for p in layers]
    projection = model.text.projection.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    encode = encoder_with_gradients(model, collator, CPU)
    for items, target in zip(steps, targets, strict=True):
        _, embeddings = encode(items.tolist())
        (embeddings * target).sum().backward()
    for mine, exact in zip(gathered, (p.grad for p in layers), strict=True):
        assert torch.allclose(mine, exact, atol=1e-5)
    assert torch.allclose(projection, model.text.projection.weight.grad, atol=1e-5)
    assert stale.steps_gathered == 0 and not stale.sums.any()


def test_a_run_updates_the_trained_layer_at_its_updates_only(tiny_dataset: Path, tmp_path: Path) -> None:
    """Guards against layers that never train (no update) or train on other steps, and a frozen bottom that moves."""
    model = tiny.text_model()
    before = {name: p.detach().clone() for name, p in model.text.backbone.named_parameters()}
    trained = {name for name, p in model.text.backbone.named_parameters() if p.requires_grad}
    config = tiny.train_config(tower_update_every=2, epochs=1)  # 4 steps
    trainer = Trainer(model, load_dataset(tiny_dataset), config, tmp_path / "run", progress=False)
    updates = []
    original = StaleTextLayers.backpropagate

    def counted(self: StaleTextLayers) -> int:
        updates.append(self.steps_gathered)
        return original(self)

    StaleTextLayers.backpropagate = counted  # type: ignore[method-assign]
    try:
        trainer.run()
    finally:
        StaleTextLayers.backpropagate = original  # type: ignore[method-assign]
    assert updates == [2, 2]  # after steps 2 and 4 (the epoch's end: nothing left for a flush)
    after = dict(trainer.model.text.backbone.named_parameters())
    moved = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert trained and moved and moved <= trained


def _pooled_mlp_model() -> PMMRec:
    return PMMRec.assemble(text=tiny.tiny_text_encoder(seed=1), user=tiny.tiny_user_encoder(seed=2), fusion=tiny.tiny_pooled_mlp())


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        (lambda: tiny.text_model(), {"freeze": ["text"]}, "no text layer is trained"),
        (_pooled_mlp_model, {}, r"needs the text-only mean tower \(fusion/text_only\); this model has fusion/pooled_mlp"),
    ],
)
def test_settings_it_cannot_apply_to_are_refused_by_name(
    tiny_dataset: Path, tmp_path: Path, model: object, options: dict, message: str
) -> None:
    """Guards against a silent exact run (or a crash mid-run) where the option was asked for and cannot apply."""
    config = tiny.train_config(tower_update_every=4, **options)
    with pytest.raises(ConfigError, match=f"--tower-update-every 4: {message}"):
        Trainer(model(), load_dataset(tiny_dataset), config, tmp_path / "run", progress=False)  # type: ignore[operator]


def test_the_time_left_spreads_each_update_over_its_steps() -> None:
    """Guards against an estimate from the cheap steps alone (an update every N steps can be most of the time)."""
    from pmmrec.training.progress import RunClock

    clock = RunClock(steps_per_epoch=40, total_steps=80, may_stop_early=False, test=False, step_seconds=0.1)
    assert clock.seconds_left(40) == pytest.approx(4.0)
    clock.periodic(every=20, seconds=6.0)
    assert clock.seconds_per_step() == pytest.approx(0.1 + 0.3)
    assert clock.seconds_left(40) == pytest.approx(40 * 0.4)


def test_the_time_left_counts_an_update_as_the_mean_of_those_timed() -> None:
    """Guards against the time left swinging with the last update alone (an update's time varies with the items it
    runs: the last one alone missed by about twice as much, benchmarks/eta_accuracy.py), and against the first
    estimate outliving the measurements."""
    from pmmrec.training.progress import RunClock

    clock = RunClock(steps_per_epoch=40, total_steps=80, may_stop_early=False, test=False, step_seconds=0.1)
    clock.periodic(every=20, seconds=9.0)  # the estimate
    clock.periodic(every=20, seconds=6.0, measured=True)
    assert clock.update_seconds == pytest.approx(6.0)  # the estimate is not averaged in
    clock.periodic(every=20, seconds=8.0, measured=True)
    clock.periodic(every=20, seconds=10.0, measured=True)
    assert clock.update_seconds == pytest.approx(8.0)
    clock.periodic(every=20, seconds=30.0)  # a later estimate does not replace measurements
    assert clock.seconds_per_step() == pytest.approx(0.1 + 8.0 / 20)


def test_an_epoch_is_cut_into_equal_parts_ending_with_it() -> None:
    """Guards against an update spent on an epoch's few leftover steps (166 steps by 40: 4 parts, not 4 and 6)."""
    assert update_steps(166, 40) == {42, 83, 124, 166}
    assert update_steps(4, 3) == {4} and update_steps(5, 100) == {5} and update_steps(6, 1) == set(range(1, 7))


def test_the_run_time_is_announced_once_the_first_update_is_timed() -> None:
    """Guards against the time line printed from the update's rough estimate (3 table encodings: about 30% high on
    a 9-minute run) when a measured update is a few steps away, and against printing it twice."""
    from pmmrec.training.progress import RunClock

    plain = RunClock(steps_per_epoch=40, total_steps=80, may_stop_early=False, test=False)
    for _ in range(3):
        plain.step(0.1)
    assert not plain.announce_due(4)
    plain.step(0.1)
    assert plain.announce_due(4) and not plain.announce_due(4)  # once
    stale = RunClock(steps_per_epoch=40, total_steps=80, may_stop_early=False, test=False)
    stale.periodic(every=20, seconds=9.0)  # the estimate, before any update ran
    for _ in range(10):
        stale.step(0.1)
    assert not stale.announce_due(4)
    stale.periodic(every=20, seconds=6.0, measured=True)
    assert stale.announce_due(4) and not stale.announce_due(4)
    assert stale.seconds_per_step() == pytest.approx(0.1 + 6.0 / 20)


def _frozen_words_model() -> PMMRec:
    """A text-only model whose backbone is frozen (the CPU recipe's), its projection and word pieces trained."""
    text = tiny.tiny_text_encoder(seed=1)
    text.set_trainable_layers(0)
    text.add_word_embeddings_table()
    return PMMRec.assemble(text=text, user=tiny.tiny_user_encoder(seed=2))


def test_a_frozen_backbone_trains_from_its_table_exactly(tiny_dataset: Path, tmp_path: Path) -> None:
    """Guards the CPU recipe's fast path: the steps read the mean states of a frozen backbone from a table (one
    projection per item, not per token) and compute what the per-token path computes: the same losses and gradients
    of the projection, the word pieces and the user encoder."""
    dataset = load_dataset(tiny_dataset)
    trainer = Trainer(_frozen_words_model(), dataset, tiny.train_config(epochs=1), tmp_path / "run", progress=False)
    assert trainer.reads_text_table and not trainer.table_per_epoch
    with torch.no_grad():  # non-zero word pieces, so that a missing or doubled mean shows
        trainer.model.text.word_embeddings.weight.normal_(generator=torch.Generator().manual_seed(3))
    trainer.model.train()
    trainer._start_stale_layers()
    stale = trainer.module.stale
    assert stale is not None and stale.frozen and trainer.clock.update_every == 1  # no update ever runs
    batch = trainer.collator([trainer.train_set[i] for i in range(6)]).to(CPU)

    def losses_and_gradients() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        trainer.module.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout masks on both paths
        loss = sum(trainer.module(batch, corruption_seed=0).values())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.grad is not None}

    table_loss, table_grads = losses_and_gradients()
    trainer.module.stale = None  # the per-token path
    token_loss, token_grads = losses_and_gradients()
    assert torch.allclose(table_loss, token_loss, atol=1e-6)
    assert table_grads.keys() == token_grads.keys() and any("word_embeddings" in name for name in table_grads)
    assert not any("backbone" in name for name in table_grads)  # the frozen backbone gets none
    for name, grad in table_grads.items():
        assert torch.allclose(grad, token_grads[name], atol=1e-6), name


def test_a_frozen_backbones_run_reads_the_table_and_trains(tiny_dataset: Path, tmp_path: Path) -> None:
    """The run uses the table (batches without token rows) and trains the word pieces and the projection."""
    model = _frozen_words_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    trainer = Trainer(model, load_dataset(tiny_dataset), tiny.train_config(epochs=1), tmp_path / "run", progress=False)
    assert trainer._loader(0, 0).collate_fn == trainer.collator.sequences_only
    trainer.run()
    assert trainer.module.stale is not None and trainer.module.stale.frozen
    after = dict(trainer.model.named_parameters())
    assert not torch.equal(before["text.word_embeddings.weight"], after["text.word_embeddings.weight"].detach())
    assert not torch.equal(before["text.projection.weight"], after["text.projection.weight"].detach())
