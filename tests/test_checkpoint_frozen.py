"""Checkpoints leave the frozen weights out (frozen.json names them and holds one sha256 of their values); a resume
takes them from the run's own components after checking them against it (docs/training.md, "Stopping and
resuming"). Checkpoints written before hold every weight and still load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tiny
import torch
from safetensors.torch import load_file
from tiny import StraightRun

from pmmrec.data import load_dataset
from pmmrec.errors import ArtefactError
from pmmrec.training import run_dir as ckpt
from pmmrec.training.trainer import Trainer

pytestmark = pytest.mark.robustness


def _module(seed: int) -> torch.nn.Sequential:
    """A frozen first layer (a backbone) under a trained second one."""
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    module[0].requires_grad_(False)
    return module


def _progress() -> dict[str, Any]:
    return {"epoch": 1, "step_in_epoch": 0, "global_step": 4, "best": 0.5, "best_epoch": 1, "stale_epochs": 0,
            "history": []}  # fmt: skip


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_checkpoint_leaves_the_frozen_weights_out_and_a_resume_has_them(tmp_path: Path) -> None:
    module = _module(0)
    frozen = ckpt.frozen_parameters(module)
    assert frozen is not None and frozen["names"] == ["0.bias", "0.weight"]
    with torch.no_grad():
        module[1].weight.add_(1.0)  # trained since the start
    folder = tmp_path / "last"
    ckpt.save_checkpoint(folder, module, {"step": torch.tensor(1)}, _progress(), frozen)
    assert sorted(load_file(str(folder / ckpt.WEIGHTS))) == ["1.bias", "1.weight"]
    assert json.loads((folder / ckpt.FROZEN).read_text()) == frozen
    restored = _module(0)  # the run's start again: its frozen weights are the checkpoint's
    assert not _same(restored, module)
    _, progress = ckpt.load_checkpoint(folder, restored)
    assert progress == _progress() and _same(restored, module)


@pytest.mark.parametrize("other", ["another start", "nothing frozen", "one more frozen"])
def test_frozen_weights_that_are_not_the_checkpoints_are_refused(tmp_path: Path, other: str) -> None:
    module = _module(0)
    folder = tmp_path / "last"
    ckpt.save_checkpoint(folder, module, {}, _progress(), ckpt.frozen_parameters(module))
    restored = _module(1 if other == "another start" else 0)
    restored[1].requires_grad_(other != "one more frozen")
    if other == "nothing frozen":
        restored[0].requires_grad_(True)
    before = {name: tensor.clone() for name, tensor in restored.state_dict().items()}
    with pytest.raises(ArtefactError, match=r"frozen\.json: the checkpoint's frozen weights \(2, sha256 \w{12}\) are "
                       r"not this run's .*; resume with the same components"):  # fmt: skip
        ckpt.load_checkpoint(folder, restored)
    assert all(torch.equal(before[name], tensor) for name, tensor in restored.state_dict().items())  # nothing loaded


def test_a_checkpoint_with_every_weight_still_loads(tmp_path: Path) -> None:
    module = _module(0)
    folder = tmp_path / "last"
    ckpt.save_checkpoint(folder, module, {}, _progress())  # as before frozen.json existed
    assert not (folder / ckpt.FROZEN).exists() and len(load_file(str(folder / ckpt.WEIGHTS))) == 4
    restored = _module(1)
    ckpt.load_checkpoint(folder, restored)
    assert _same(restored, module)


@pytest.mark.parametrize("text", ["{", '{"names": [], "sha256": "0"}', '{"names": ["0.bias"]}'])
def test_a_broken_frozen_json_is_named(tmp_path: Path, text: str) -> None:
    module = _module(0)
    folder = tmp_path / "last"
    ckpt.save_checkpoint(folder, module, {}, _progress(), ckpt.frozen_parameters(module))
    (folder / ckpt.FROZEN).write_text(text)
    with pytest.raises(ArtefactError, match=r"frozen\.json"):
        ckpt.load_checkpoint(folder, _module(0))


def test_a_run_over_a_frozen_text_encoder_checkpoints_without_it(straight_run: StraightRun) -> None:
    """The resume tests (tests/test_resume.py) resume this run: the frozen encoder comes back from its component."""
    folder = straight_run.run / "checkpoints" / "last"
    names = json.loads((folder / ckpt.FROZEN).read_text())["names"]
    saved = load_file(str(folder / ckpt.WEIGHTS))
    assert names and not set(names) & set(saved)
    assert {name.split(".")[1] for name in names} == {"text"}  # the text encoder's backbone, frozen by the CPU recipe
    assert any(name.startswith("model.text.") for name in saved)  # its word pieces and projection train


def test_text_layers_trained_from_a_table_resume_with_a_frozen_bottom(
    tiny_dataset: Path, tmp_path: Path, isolated: Path
) -> None:
    """`--tower-update-every`: the top layer trains at its updates (in the checkpoint), the bottom stays frozen
    (left out): a resume of the finished run restores the trained layer and accepts the bottom."""
    config = tiny.train_config(tower_update_every=2, epochs=1)
    first = Trainer(tiny.text_model(), load_dataset(tiny_dataset), config, tmp_path / "run", progress=False)
    first.run()
    frozen = json.loads((tmp_path / "run" / "checkpoints" / "last" / ckpt.FROZEN).read_text())["names"]
    trained = {name for name, p in first.module.named_parameters() if p.requires_grad}
    assert any(".backbone." in name for name in frozen) and any(".backbone." in name for name in trained)
    resumed = Trainer(tiny.text_model(), load_dataset(tiny_dataset), config, tmp_path / "run", resume=True,
                      progress=False)  # fmt: skip
    resumed.run()
    assert _same(resumed.module, first.module)
