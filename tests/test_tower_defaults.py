"""Issue 28.1: training defaults that depend on the item tower, explicit values winning over them, their help texts,
and run folders written under other defaults still resuming with their own values."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import yaml

from pmmrec.components.options import DEFAULT_DIM
from pmmrec.data import load_dataset
from pmmrec.training.config import (
    PRETRAIN_BATCH_SIZE,
    TOWER_DEFAULTS,
    TOWER_DEPENDENT,
    ModelConfig,
    TrainConfig,
    finetune_defaults,
    pretrain_defaults,
)
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.config_yaml import dump_train_config
from pmmrec.training.flat_options import config_field
from pmmrec.training.jobs import build_model

ID = {"model": {"item_tower": "id"}}


def value_at(config: TrainConfig, path: str) -> object:
    """The value at a dotted TrainConfig path (`model.dim`)."""
    value: object = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


@pytest.fixture(autouse=True)
def _environment(isolated: Path) -> None:
    """Every test here runs in the isolated environment (private cache, offline, one thread)."""


def test_an_id_run_without_options_resolves_to_the_id_defaults(tiny_dataset: Path) -> None:
    config = load_train_config(finetune_defaults(), overrides=ID)
    assert {path: value_at(config, path) for path in TOWER_DEFAULTS["id"]} == TOWER_DEFAULTS["id"]
    assert config.model.dim is not None and config.model.dim < DEFAULT_DIM  # not MiniLM's width (issue 28.1)
    recorded = yaml.safe_load(dump_train_config(config))  # what RUN/config.yaml records: the resolved values
    assert recorded["batch_size"] == TOWER_DEFAULTS["id"]["batch_size"]
    assert recorded["model"]["dim"] == TOWER_DEFAULTS["id"]["model.dim"]
    model = build_model(config.model, load_dataset(tiny_dataset), config.max_length, config.seed)
    assert model.item_tower is not None
    assert model.dim == model.item_tower.config.dim == model.user.config.dim == config.model.dim
    # Built in Python, a config follows the same rule.
    assert TrainConfig(model=ModelConfig(item_tower="id")).batch_size == TOWER_DEFAULTS["id"]["batch_size"]
    assert TrainConfig(model=ModelConfig(item_tower="id")).model.dim == TOWER_DEFAULTS["id"]["model.dim"]


def test_content_runs_keep_the_defaults_they_had() -> None:
    """The content tower's defaults are those of before issue 28.1 (batch 32, 20 items, 1e-3, 50 epochs, patience 5,
    the text backbone's width), under the full recipe (a GPU's; tests/test_cpu_recipe.py: a CPU's)."""
    config = load_train_config(finetune_defaults(), overrides={"recipe": "full"})
    before = (32, 20, 1e-3, 50, 5, None)
    assert (config.batch_size, config.max_length, config.fresh_lr, config.max_epochs, config.patience) == before[:5]
    assert config.model.dim is before[5]
    assert TrainConfig(recipe="full").batch_size == before[0]  # built in Python: the same rule


def test_pretrain_keeps_its_own_batch_size() -> None:
    for tower in ("content", "id"):
        config = load_train_config(pretrain_defaults(), overrides={"model": {"item_tower": tower}})
        assert config.batch_size == PRETRAIN_BATCH_SIZE, tower
        assert config.fresh_lr == TOWER_DEFAULTS[tower]["fresh_lr"], tower


def test_explicit_values_win_over_tower_defaults(tmp_path: Path) -> None:
    given = {"batch_size": 7, "fresh_lr": 0.01, "max_epochs": 3}
    config = load_train_config(finetune_defaults(), overrides=given | {"model": {"item_tower": "id", "dim": 32}})
    assert {key: getattr(config, key) for key in given} == given and config.model.dim == 32
    path = tmp_path / "never.yaml"
    path.write_text("patience: null\nmodel: {item_tower: id, dim: null}\n")
    from_file = load_train_config(finetune_defaults(), path)
    assert from_file.patience is None  # null: never stop early, not "the default"
    assert from_file.model.dim is None  # null: the given components' width, else 384
    assert from_file.batch_size == TOWER_DEFAULTS["id"]["batch_size"]  # keys left out still take the ID defaults
    assert TrainConfig(model=ModelConfig(item_tower="id", dim=48)).model.dim == 48
    path.write_text("batch_size: null\nmodel: {item_tower: id}\n")
    with pytest.raises(Exception, match="batch_size"):  # a batch size has no "none": refused, naming the key
        load_train_config(finetune_defaults(), path)


def test_a_given_user_encoders_width_wins_over_the_id_default(tmp_path: Path, tiny_dataset: Path) -> None:
    assert TOWER_DEFAULTS["id"]["model.dim"] != tiny.DIM  # else this test could not fail
    user = tiny.tiny_user_encoder(max_length=tiny.MAX_LENGTH).save_pretrained(tmp_path / "user")
    config = load_train_config(finetune_defaults(), overrides={"model": {"item_tower": "id", "user": str(user)}})
    assert config.model.dim is None
    assert config.batch_size == TOWER_DEFAULTS["id"]["batch_size"]  # only the width is the given encoder's
    model = build_model(config.model, load_dataset(tiny_dataset), tiny.MAX_LENGTH, config.seed)
    assert model.item_tower is not None and model.dim == model.item_tower.config.dim == tiny.DIM


def test_help_texts_state_each_towers_default() -> None:
    assert set(TOWER_DEPENDENT) == set(TOWER_DEFAULTS["id"]) >= set(TOWER_DEFAULTS["content"])
    for path in TOWER_DEPENDENT:
        description = config_field(path).description or ""
        for tower, name in (("id", "ID"), ("content", "content")):
            value = TOWER_DEFAULTS[tower].get(path)
            if value is not None:
                shown = f"{value:g}" if isinstance(value, float) else str(value)
                assert f"{shown} for {name} towers" in description, (path, description)
    assert "the text backbone's width (384 for minilm) for content towers" in (config_field("model.dim").description or "")
    assert f"pretrain: {PRETRAIN_BATCH_SIZE}" in (config_field("batch_size").description or "")


def test_a_run_saved_under_other_defaults_resumes_without_repeating_them(tmp_path: Path, tiny_dataset: Path) -> None:
    """Resuming starts from the run's own config.yaml: options it left out keep the values it ran with."""
    run = tmp_path / "run"
    common = ("--data", tiny_dataset, "--out", run, "--item-tower", "id", "--quiet", "--device", "cpu")
    tiny.run_cli("finetune", *common, "--max-steps", "1", "--batch-size", "3", "--max-length", tiny.MAX_LENGTH)
    assert yaml.safe_load((run / "config.yaml").read_text())["batch_size"] == 3
    tiny.run_cli("finetune", *common, "--max-steps", "1", "--resume")  # neither --batch-size nor --max-length again
    changed = tiny.run_cli("finetune", *common, "--max-steps", "1", "--batch-size", "5", "--resume", expect=1)
    assert "differs from this run's options in batch_size (3 -> 5)" in changed


def test_a_saved_config_of_the_old_defaults_keeps_their_meaning(tmp_path: Path, tiny_dataset: Path) -> None:
    """An ID run written before issue 28.1 saved `dim: null` (then 384) and batch 32: resuming builds that again."""
    old = yaml.safe_load(dump_train_config(load_train_config(finetune_defaults(), overrides=ID)))  # as written then
    old.update(batch_size=32, max_epochs=50, fresh_lr=0.001, max_length=tiny.MAX_LENGTH)
    old["model"]["dim"] = None
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(old, sort_keys=False))
    resumed = load_train_config(finetune_defaults(), overrides=ID, saved=saved)
    assert yaml.safe_load(dump_train_config(resumed)) == old
    assert dump_train_config(resumed) == saved.read_text()  # what --resume compares
    model = build_model(resumed.model, load_dataset(tiny_dataset), resumed.max_length, resumed.seed)
    assert model.dim == DEFAULT_DIM
