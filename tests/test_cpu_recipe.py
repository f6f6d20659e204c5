"""Issue 28.1: `--recipe` (auto, full, cpu). A fine-tuning run with a text encoder on a CPU takes the CPU recipe's
defaults; explicit options win over them; a GPU, pre-training, an ID tower or a vision-only tower keep the full
recipe; the run says which and records it; a run saved before the option existed resumes (under full)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import yaml

from pmmrec.errors import ConfigError
from pmmrec.training.config import (
    CPU_RECIPE,
    RECIPE_DEPENDENT,
    TrainConfig,
    finetune_defaults,
    pretrain_defaults,
)
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.config_yaml import dump_train_config
from pmmrec.training.flat_options import config_field
from pmmrec.training.progress import start_lines
from pmmrec.training.run_dir import check_same_options

CPU = {"device": "cpu"}


def value_at(config: TrainConfig, path: str) -> object:
    value: object = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def recipe_values(config: TrainConfig) -> dict[str, object]:
    return {path: value_at(config, path) for path in CPU_RECIPE}


@pytest.fixture(autouse=True)
def _environment(isolated: Path) -> None:
    """Every test here runs in the isolated environment (private cache, offline, one thread)."""


def test_a_text_finetuning_run_on_a_cpu_takes_the_cpu_recipe() -> None:
    config = load_train_config(finetune_defaults(), overrides=CPU)
    assert config.recipe == "cpu"
    assert recipe_values(config) == CPU_RECIPE
    assert config.batch_size == 32 and config.max_epochs == 50  # keys the recipe leaves to the content tower
    assert yaml.safe_load(dump_train_config(config))["recipe"] == "cpu"  # recorded resolved, not as auto


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"device": "cuda"}, "a GPU"),
        ({"device": "mps"}, "a GPU"),
        ({"device": "cpu", "recipe": "full"}, "asked for"),
        ({"device": "cpu", "model": {"item_tower": "id"}}, "an ID tower"),
        ({"device": "cpu", "model": {"modalities": ["vision"]}}, "no text encoder"),
        ({"device": "cpu", "model": {"vision": "some/vision"}}, "a given vision encoder alone"),
    ],
)
def test_other_runs_keep_the_full_recipe(overrides: dict[str, object], why: str) -> None:
    config = load_train_config(finetune_defaults(), overrides=overrides)
    assert config.recipe == "full", why
    assert config.model.text_word_embeddings is False and config.epochs is None, why


def test_pretraining_keeps_the_full_recipe_unless_asked() -> None:
    assert load_train_config(pretrain_defaults(), overrides=CPU).recipe == "full"
    asked = load_train_config(pretrain_defaults(), overrides=CPU | {"recipe": "cpu"})
    assert asked.recipe == "cpu" and recipe_values(asked) == CPU_RECIPE | {"refit": False}  # a refit: fine-tuning's


def test_text_with_vision_and_a_given_text_encoder_take_it() -> None:
    both = load_train_config(finetune_defaults(), overrides=CPU | {"model": {"modalities": ["text", "vision"]}})
    assert both.recipe == "cpu"
    for parts in ({"text": "some/text"}, {"user": "some/user"}, {"text": "some/text", "user": "some/user"}):
        given = load_train_config(finetune_defaults(), overrides=CPU | {"model": parts})
        assert given.recipe == "cpu" and given.model.text_trainable_layers == 0, parts
        assert given.model.dim is None, parts  # a given component decides the width
        # a given user encoder's learned positions decide the sequence length; a fresh one takes the recipe's
        assert given.max_length == (20 if "user" in parts else CPU_RECIPE["max_length"]), parts


def test_explicit_values_win_over_the_recipe(tmp_path: Path) -> None:
    given = {"epochs": 3, "fresh_lr": 0.01, "patience": None}
    config = load_train_config(
        finetune_defaults(), overrides=CPU | given | {"model": {"text_trainable_layers": 1, "dim": 32}}
    )
    assert (config.epochs, config.fresh_lr, config.model.text_trainable_layers, config.model.dim) == (3, 0.01, 1, 32)
    assert config.pretrained_lr == CPU_RECIPE["pretrained_lr"] and config.model.text_word_embeddings is True
    path = tmp_path / "run.yaml"
    path.write_text("patience: null\nmodel: {text_word_embeddings: false}\n")
    from_file = load_train_config(finetune_defaults(), path, overrides=CPU)
    assert from_file.patience is None and from_file.model.text_word_embeddings is False  # null and false are given


def test_the_cpu_recipe_is_refused_where_it_cannot_apply() -> None:
    for model in ({"item_tower": "id"}, {"modalities": ["vision"]}):
        with pytest.raises(ConfigError, match=r"recipe cpu .* needs a content tower with a text encoder"):
            load_train_config(finetune_defaults(), overrides={"recipe": "cpu", "model": model})


def test_a_run_says_it_trains_under_the_cpu_recipe(tmp_path: Path) -> None:
    config = load_train_config(finetune_defaults(), overrides=CPU | {"fresh_lr": 0.01})
    lines = start_lines(config, tmp_path, resuming=False)
    assert lines[-1].startswith("recipe: cpu (") and "--recipe full" in lines[-1]
    changed = [line.split()[0] for line in lines if line.startswith("  ")]
    assert changed == ["fresh_lr", "device"]  # compared with the recipe's values, not the full recipe's
    full = load_train_config(finetune_defaults(), overrides=CPU | {"recipe": "full"})
    assert not any(line.startswith("recipe:") for line in start_lines(full, tmp_path, resuming=False))


def test_help_texts_state_the_cpu_recipes_values() -> None:
    for path in RECIPE_DEPENDENT:
        value = CPU_RECIPE[path]
        shown = str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else value
        assert f"under --recipe cpu: {shown}" in (config_field(path).description or ""), path
    help_text = tiny.run_cli("finetune", "--help")
    assert "--recipe" in help_text and "[default: auto]" in help_text


def test_a_run_saved_before_the_option_resumes_under_the_full_recipe(tmp_path: Path) -> None:
    """A config.yaml without `recipe` (or any option added since) resumes with the defaults it ran with."""
    old = yaml.safe_load(dump_train_config(load_train_config(finetune_defaults(), overrides=CPU | {"recipe": "full"})))
    del old["recipe"], old["model"]["text_word_embeddings"]
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(old, sort_keys=False))
    resumed = load_train_config(finetune_defaults(), overrides=CPU, saved=saved)
    assert resumed.recipe == "full" and resumed.model.dim is None and resumed.epochs is None
    assert check_same_options(saved, dump_train_config(resumed)) == ["recipe", "model.text_word_embeddings"]
    changed = load_train_config(finetune_defaults(), overrides=CPU | {"model": {"text_word_embeddings": True}}, saved=saved)
    with pytest.raises(ConfigError, match=r"model.text_word_embeddings \(None -> True\)"):
        check_same_options(saved, dump_train_config(changed))  # an added option given another value is a change


def test_an_old_run_folder_resumes_with_a_notice(tmp_path: Path, tiny_dataset: Path) -> None:
    run = tmp_path / "run"
    common = ("--data", tiny_dataset, "--out", run, "--item-tower", "id", "--quiet", "--device", "cpu")
    tiny.run_cli("finetune", *common, "--max-steps", "1", "--max-length", tiny.MAX_LENGTH)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["recipe"]  # as pmmrec 0.2 wrote it
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    output = tiny.run_cli("finetune", *common, "--max-steps", "1", "--resume")
    assert "was written before 1 option(s) existed (recipe); the run resumes with their defaults" in output


def test_a_saved_config_that_is_not_a_mapping_is_refused_not_read(tmp_path: Path) -> None:
    saved = tmp_path / "config.yaml"
    saved.write_text("- not\n- a mapping\n")
    current = dump_train_config(load_train_config(finetune_defaults(), overrides=CPU))
    with pytest.raises(ConfigError, match="differs from this run's options in its text"):
        check_same_options(saved, current)
    saved.write_text(current)
    assert check_same_options(saved, current) == []
