"""What a training command does before any model is loaded (issue 26): it refuses a run folder it cannot use and
prints its first lines (the run folder and the settings that differ from the command's defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tiny
import torch
from typer.testing import CliRunner

from pmmrec.cli import app
from pmmrec.errors import ConfigError


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_tiny_dataset(tmp_path_factory.mktemp("run-start") / "data")


@pytest.fixture
def model_building_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the run's model ends the command with one line: what was printed before it came first."""

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise ConfigError("the model is being built")

    monkeypatch.setattr("pmmrec.training.jobs.build_model", stop)


@pytest.mark.usefixtures("model_building_stops")
@pytest.mark.parametrize("mode", ["pretrain", "finetune"])
def test_a_run_prints_its_folder_and_changed_settings_before_loading_anything(
    mode: str, data: Path, tmp_path: Path
) -> None:
    """Bug guarded: the run folder and configuration came only after the components were loaded (minutes)."""
    run = tmp_path / "run"
    result = invoke(mode, "--data", data, "--out", run, "--lr", "0.002", "--seed", "7", "--quiet")
    assert result.exit_code == 1 and result.stderr == "error: the model is being built\n"
    lines = result.stdout.splitlines()
    assert lines[0] == f"run folder: {run}"
    assert lines[1] == f"configuration that differs from {mode}'s defaults (all of it in {run / 'config.yaml'}):"
    cpu_recipe = mode == "finetune" and not torch.cuda.is_available()  # a text run on a CPU: the CPU recipe
    assert lines[-1].startswith("recipe: cpu (") == cpu_recipe
    assert [line.split() for line in lines[2 : len(lines) - cpu_recipe]] == [
        ["lr", "0.002", "(default", "none)"],
        ["seed", "7", "(default", "42)"],
    ]


@pytest.mark.usefixtures("model_building_stops")
def test_a_run_with_its_defaults_says_so(data: Path, tmp_path: Path) -> None:
    result = invoke("finetune", "--data", data, "--out", tmp_path / "run", "--quiet")
    lines = result.stdout.splitlines()
    cpu_recipe = not torch.cuda.is_available()
    assert lines[0] == f"run folder: {tmp_path / 'run'}" and len(lines) == 2 + cpu_recipe
    assert lines[-1].startswith("recipe: cpu (") == cpu_recipe
    assert lines[1] == f"configuration: finetune's defaults (all of it in {tmp_path / 'run' / 'config.yaml'})"


@pytest.mark.usefixtures("model_building_stops")
def test_an_id_run_lists_its_tower_not_the_towers_own_defaults(data: Path, tmp_path: Path) -> None:
    """The ID tower's batch size, width, learning rate and epoch cap are its defaults (issue 28.1), not changes."""
    result = invoke("finetune", "--data", data, "--out", tmp_path / "run", "--item-tower", "id", "--quiet")
    changed = [line.split() for line in result.stdout.splitlines()[2:]]
    assert changed == [["model.item_tower", "id", "(default", "content)"]]


@pytest.fixture
def no_model_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was built before the run folder was checked")

    monkeypatch.setattr("pmmrec.training.jobs.build_model", refuse)


@pytest.mark.usefixtures("no_model_building")
def test_an_unusable_run_folder_is_refused_before_any_model_loads(data: Path, tmp_path: Path) -> None:
    """Bug guarded: a non-empty --out (or a file) was refused only once the model had been built."""
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    result = invoke("finetune", "--data", data, "--out", used)
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {used} is not empty (notes.txt); use --resume or another --out"
    result = invoke("finetune", "--data", data, "--out", used, "--resume")
    assert result.output.strip() == f"error: --resume: {used} holds notes.txt but no pmmrec run"
    file = tmp_path / "file"
    file.write_text("")
    result = invoke("pretrain", "--data", data, "--out", file)
    assert result.output.strip() == f"error: --out {file}: is a file, not a run folder"


@pytest.mark.usefixtures("no_model_building")
def test_a_device_this_machine_lacks_is_refused_before_any_model_loads(data: Path, tmp_path: Path) -> None:
    result = invoke("finetune", "--data", data, "--out", tmp_path / "run", "--device", "tpu")
    assert result.exit_code == 1
    assert result.output.strip() == "error: --device tpu: not a device; the choices are cpu, cuda, cuda:N and mps"


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: a path error must come first."""
    from pmmrec.model import PMMRec

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded before the paths were checked")

    monkeypatch.setattr(PMMRec, "from_pretrained", classmethod(refuse))


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("command", ["evaluate", "recommend", "serve", "finetune", "pretrain"])
def test_a_missing_data_folder_is_one_line_before_any_model_loads(command: str, data: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    extra = {
        "recommend": ["--user", "u1"],
        "finetune": ["--out", tmp_path / "run"],
        "pretrain": ["--out", tmp_path / "run"],
    }
    model = [] if command in ("finetune", "pretrain") else ["--model", data]  # never reached: --data comes first
    result = invoke(command, *model, "--data", missing, *extra.get(command, []))
    assert result.exit_code == 1
    assert result.output.strip() == f"error: --data {missing}: no such dataset folder"


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("command", ["evaluate", "recommend", "serve"])
def test_a_missing_model_folder_is_one_line_before_anything_loads(command: str, data: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-model"
    extra = ["--user", "u1"] if command == "recommend" else []
    result = invoke(command, "--model", missing, "--data", data, *extra)
    assert result.exit_code == 1
    assert result.output.strip() == f"error: --model {missing}: no such model folder"


@pytest.mark.usefixtures("no_model_loading")
def test_an_id_tower_given_as_model_names_its_run_model(data: Path, tmp_path: Path) -> None:
    tower = tiny.tiny_id_tower().save_pretrained(tmp_path / "tower")
    result = invoke("evaluate", "--model", tower, "--data", data)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: --model {tower}: is a single component (item_tower), not an assembled model; give the model folder "
        "of the run that trained it (RUN/model)"
    )
