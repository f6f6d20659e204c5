"""`--refit`: once validation has chosen the epoch, the model is trained again from the same start on every
interaction but each user's test target, for that many epochs, and that model is kept and tested (the CPU recipe's
default: docs/benchmarks.md, "Training on the validation targets too"). Tiny ID runs on the tiny dataset."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tiny
from safetensors.torch import load_file

from pmmrec.data import load_dataset
from pmmrec.errors import ConfigError, PmmrecWarning
from pmmrec.training.config import finetune_defaults, pretrain_defaults
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.refit import RefitTrainer
from pmmrec.training.setup import run_data


@pytest.fixture(autouse=True)
def _environment(isolated: Path) -> None:
    """Every test here runs in the isolated environment (private cache, offline, one thread)."""


def finetune(data: Path, run: Path, *extra: object) -> str:
    return tiny.run_cli(
        "finetune", "--data", data, "--out", run, "--item-tower", "id", "--dim", 16, "--max-length", tiny.MAX_LENGTH,
        "--batch-size", 4, "--epochs", 3, "--patience", 3, "--fresh-lr", "1e-3", "--device", "cpu", "--quiet", "--refit",
        *extra,
    )  # fmt: skip


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict[str, np.ndarray]:
    return {
        f"{path.parent.name}/{name}": tensor.numpy()
        for path in sorted(folder.glob("*/model.safetensors"))
        for name, tensor in load_file(str(path)).items()
    }


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.allclose(a[name], b[name], atol=1e-6) for name in a)


def test_the_refit_trains_the_chosen_epochs_on_the_validation_targets_too(tmp_path: Path, tiny_dataset: Path) -> None:
    run = tmp_path / "run"
    output = finetune(tiny_dataset, run)
    summary = json.loads((run / "summary.json").read_text())
    chosen = summary["best_epoch"]
    assert summary["refit"]["epochs"] == chosen and summary["valid"] and summary["test"]
    refit_epochs = [r for r in records(run / "refit") if r["event"] == "epoch"]
    assert [r["epoch"] for r in refit_epochs] == list(range(1, chosen + 1))  # the chosen count, no validation
    assert not [r for r in records(run / "refit") if r["event"] == "eval" and r["split"] == "valid"]
    assert summary["refit"]["train_windows"] >= summary["train_windows"]  # one more target per user
    # RUN/model is the refit's model (its split record says so); RUN/best the one validation chose
    assert json.loads((run / "model" / "data_split.json").read_text())["valid_targets_trained"] is True
    assert "valid_targets_trained" not in json.loads((run / "best" / "data_split.json").read_text())
    # The refit's last epoch is RUN/model; its checkpoint holds the same weights (a resume needs no best/ beside it).
    assert not (run / "refit" / "best").exists()
    checkpoint = load_file(str(run / "refit" / "checkpoints" / "last" / "training_module.safetensors"))
    model = {f"model.{key.replace('/', '.', 1)}": value for key, value in weights(run / "model").items()}
    assert model.keys() <= checkpoint.keys()
    assert all(np.allclose(value, checkpoint[key].numpy(), atol=0) for key, value in model.items())
    assert weights(run / "model").keys() == weights(run / "best").keys()
    assert not same(weights(run / "model"), weights(run / "best"))
    ranks = json.loads((run / "test_ranks.json").read_text())
    assert ranks["model"] == str(run / "model") and ranks["hr@10"] == summary["test"]["hr@10"]
    assert f"test of the refit ({chosen} epoch" in output and f"refit model written to {run}/model" in output
    assert "then a refit for as many epochs as validation chooses" in output
    assert "valid (the model validation chose, before the refit)" in (run / "model" / "README.md").read_text()


def test_the_refits_data_holds_each_users_validation_target(tiny_dataset: Path) -> None:
    dataset = load_dataset(tiny_dataset)
    config = tiny.train_config(model={"item_tower": "id"})
    plain, refit = run_data(dataset, config), run_data(dataset, config, valid_targets=True)
    split = plain.split
    for row in range(split.num_users):
        assert list(refit.train_set.sequences[row]) == [*plain.train_set.sequences[row], split.valid_target[row]]
    assert set(split.valid_target) <= set(refit.known_items)


def test_an_interrupted_refit_resumes_to_the_uninterrupted_model(
    tmp_path: Path, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = tmp_path / "straight"
    finetune(tiny_dataset, straight)
    assert json.loads((straight / "summary.json").read_text())["best_epoch"] >= 2  # a refit epoch after the first
    end_epoch = RefitTrainer._end_epoch

    def crash_after_the_first(self: RefitTrainer, progress: dict, epoch: int, seconds: float) -> None:
        end_epoch(self, progress, epoch, seconds)
        raise RuntimeError("crash after the refit's first epoch and its checkpoint")

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(RefitTrainer, "_end_epoch", crash_after_the_first)
        with pytest.raises(AssertionError) as failure:
            finetune(tiny_dataset, run)
    assert re.search(r"refit epoch 1/3: \d+s of training; run ~\d+s left\s*$", str(failure.value))  # then the crash
    assert not (run / "model").exists() and (run / "refit" / "checkpoints").is_dir()
    finetune(tiny_dataset, run, "--resume")
    assert same(weights(run / "model"), weights(straight / "model"))
    resumed, uninterrupted = (json.loads((r / "summary.json").read_text()) for r in (run, straight))
    assert resumed["test"] == pytest.approx(uninterrupted["test"]) and resumed["refit"] == uninterrupted["refit"]


def test_the_cpu_recipe_refits_and_a_flag_or_another_run_does_not() -> None:
    cpu = {"device": "cpu"}
    assert load_train_config(finetune_defaults(), overrides=cpu).refit is True
    assert load_train_config(finetune_defaults(), overrides=cpu | {"refit": False}).refit is False
    assert load_train_config(finetune_defaults(), overrides=cpu | {"model": {"item_tower": "id"}}).refit is False
    assert load_train_config(finetune_defaults(), overrides={"device": "cuda"}).refit is False
    with pytest.raises(ConfigError, match="refit: a fine-tuning option"):
        load_train_config(pretrain_defaults(), overrides=cpu | {"refit": True})


def test_a_run_saved_before_the_refit_resumes_without_one(tmp_path: Path) -> None:
    import yaml

    from pmmrec.training.config_yaml import dump_train_config

    old = yaml.safe_load(dump_train_config(load_train_config(finetune_defaults(), overrides={"device": "cpu"})))
    del old["refit"]
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(old, sort_keys=False))
    assert load_train_config(finetune_defaults(), overrides={"device": "cpu"}, saved=saved).refit is False


def test_a_refit_models_validation_figures_come_with_a_warning(tmp_path: Path, tiny_dataset: Path) -> None:
    from pmmrec import api

    run = tmp_path / "run"
    finetune(tiny_dataset, run)
    with pytest.warns(PmmrecWarning, match="trained on the validation targets too"):
        api.evaluate(run / "model", tiny_dataset, split="valid", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PmmrecWarning)
        api.evaluate(run / "model", tiny_dataset, split="test", progress=False)
        api.evaluate(run / "best", tiny_dataset, split="valid", progress=False)


def test_the_library_returns_the_refits_model_ready_to_use(tmp_path: Path, tiny_dataset: Path) -> None:
    """`pmmrec.api.finetune` returns the refit's model in eval mode (as a model read from its folder is: dropout off),
    with RUN/model's weights."""
    from pmmrec import api

    run = tmp_path / "run"
    options = {"item_tower": "id", "dim": 16, "max_length": tiny.MAX_LENGTH, "batch_size": 4, "epochs": 3,
               "patience": 3, "fresh_lr": 1e-3, "device": "cpu", "refit": True}  # fmt: skip
    result = api.finetune(tiny_dataset, run, progress=False, **options)
    assert "refit" in result.summary and not result.model.training
    saved = weights(run / "model")
    returned = {f"{slot}/{name}": tensor.detach().numpy() for slot, component in result.model.components().items()
                for name, tensor in component.state_dict().items()}  # fmt: skip
    assert same({key: returned[key] for key in saved}, saved)
