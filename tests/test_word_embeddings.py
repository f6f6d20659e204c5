"""Word-piece embeddings of the text encoder (`word_embeddings`, `--text-word-embeddings`, issue 28.1).

They start at zero (the encoder's function unchanged), give the same tokens from a cached prefix as from the text,
survive save and load, train at the fresh parts' rate, and a run creates them for a fresh encoder, adds them to a
given one and refuses them where no text encoder is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import torch

from pmmrec.components import HFTextEncoder
from pmmrec.data import load_dataset
from pmmrec.errors import ConfigError
from pmmrec.training.config import ModelConfig
from pmmrec.training.jobs import build_model
from pmmrec.training.optim import FRESH_PARTS
from pmmrec.training.trainer import Trainer


@pytest.fixture(autouse=True)
def _environment(isolated: Path) -> None:
    """The isolated environment (private cache, offline, one thread)."""


TEXTS = ["Toy Story (1995). Genres: Animation.", "GoldenEye (1995). Genres: Action, Thriller.", "Heat (1995)."]


def _inputs(encoder: HFTextEncoder) -> dict[str, torch.Tensor]:
    return encoder.prepare(TEXTS)


def _with_random_words(seed: int = 0) -> HFTextEncoder:
    encoder = tiny.tiny_text_encoder(seed=1)
    encoder.add_word_embeddings_table()
    with torch.no_grad():
        encoder.word_embeddings.weight.normal_(generator=torch.Generator().manual_seed(seed))
    return encoder


def test_a_new_table_leaves_the_encoder_unchanged() -> None:
    """Guards against a table that changes a pretrained encoder before it has trained (a transfer spoilt at step 0)."""
    encoder = tiny.tiny_text_encoder(seed=1)
    inputs = _inputs(encoder)
    with torch.no_grad():
        before = encoder.tokens(inputs).tokens
        encoder.add_word_embeddings_table()
        after = encoder.tokens(inputs).tokens
    assert encoder.config.word_embeddings and encoder.word_embeddings is not None
    assert torch.equal(before, after)
    assert encoder.fresh_parameter_prefixes() == ("word_embeddings.",)


def test_the_cached_prefix_path_adds_the_same_words() -> None:
    """Guards against word embeddings that the training path (cached frozen prefixes) adds and serving does not,
    or the other way round."""
    encoder = _with_random_words()
    inputs = _inputs(encoder)
    with torch.no_grad():
        direct = encoder.tokens(inputs).tokens
        prefix = encoder.frozen_prefix_of(inputs)
        cached = encoder.tokens(inputs, prefix).tokens
        plain = HFTextEncoder.forward_from_prefix(encoder, prefix, inputs["attention_mask"])[0]
    assert torch.allclose(direct, cached, atol=1e-6)
    expected = plain + encoder.word_embeddings(inputs["input_ids"].long())
    assert torch.allclose(direct, expected, atol=1e-6)
    assert not torch.allclose(direct, plain, atol=1e-3)  # the words count


def test_save_and_load_keep_the_table(tmp_path: Path) -> None:
    """Guards against a table lost on save (a config that says word_embeddings with weights that do not load)."""
    encoder = _with_random_words()
    encoder.save_pretrained(tmp_path / "text")
    loaded = HFTextEncoder.from_pretrained(tmp_path / "text")
    assert loaded.config.word_embeddings
    assert torch.equal(loaded.word_embeddings.weight, encoder.word_embeddings.weight)
    inputs = _inputs(encoder)
    with torch.no_grad():
        assert torch.allclose(loaded.tokens(inputs).tokens, encoder.tokens(inputs).tokens, atol=1e-6)
    assert "word piece" in (tmp_path / "text" / "README.md").read_text(encoding="utf-8")


def test_a_run_trains_them_at_the_fresh_rate(tiny_dataset: Path, tmp_path: Path) -> None:
    """Guards against word embeddings trained at the pretrained layers' rate (10 times too slow by default) or not
    trained at all, on the table's path (`tower_update_every`) as on the exact one."""
    for every in (1, 2):
        model = tiny.text_model()
        model.text.add_word_embeddings_table()
        config = tiny.train_config(tower_update_every=every, epochs=1, fresh_lr=3e-3, pretrained_lr=1e-4)
        trainer = Trainer(model, load_dataset(tiny_dataset), config, tmp_path / f"run{every}", progress=False)
        rates = {group["slot"]: group["lr"] for group in trainer.optimizer.param_groups}
        assert rates["text"] == 1e-4 and rates[f"text{FRESH_PARTS}"] == 3e-3
        trainer.run()
        assert trainer.model.text.word_embeddings.weight.abs().sum() > 0


def test_a_run_creates_adds_or_refuses_them(tiny_dataset: Path, tmp_path: Path) -> None:
    """Guards against the option being ignored (a fresh or given encoder without the table) or silently dropped
    where there is no text encoder."""
    dataset = load_dataset(tiny_dataset)
    given = tmp_path / "text"
    tiny.tiny_text_encoder(seed=1).save_pretrained(given)
    model = build_model(ModelConfig(text=str(given), text_word_embeddings=True), dataset, max_length=8, seed=0)
    assert model.text.word_embeddings is not None and model.text.config.word_embeddings
    plain = build_model(ModelConfig(text=str(given)), dataset, max_length=8, seed=0)
    assert plain.text.word_embeddings is None
    with pytest.raises(ConfigError, match="--text-word-embeddings: an ID tower has no text encoder"):
        build_model(ModelConfig(item_tower="id", text_word_embeddings=True), dataset, max_length=8, seed=0)
