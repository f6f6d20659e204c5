"""A new objective is its own file and its import line in pmmrec/objectives/__init__.py (issue 23;
docs/architecture.md, *Where to add things*).

The test copies the package, adds a throw-away `toy` objective (a penalty on the user states' squared norm) in
exactly those two files and runs the copy in a subprocess: `pmmrec finetune --help` lists `--toy-weight` with its
description, `pmmrec finetune --toy-weight 0.5` trains it (its loss logged under its name, its weight and options in
the run's config.yaml), and a run without the flag keeps its fine-tuning weight of 0 (not trained, not logged).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from package_copy import changed_files, copy_package, run_in_copy

TOY_OBJECTIVE = '''"""A throw-away objective: scale x the mean squared norm of the valid user states."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from pmmrec.objectives.base import Objective, register_objective


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: float = Field(0.01, ge=0.0, description="Factor of the squared norm.")


@register_objective
class ToyLoss(Objective):
    name: ClassVar[str] = "toy"
    options_key: ClassVar[str] = "toy"
    config_class: ClassVar[type[BaseModel]] = ToyConfig
    pretrain_weight: ClassVar[float] = 0.2
    weight_description: ClassVar[str] = "Weight of the toy state-norm penalty."
    options_description: ClassVar[str] = "Toy penalty options."

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config

    def step_loss(self, step) -> Tensor:
        states = step.states[step.input_mask]
        return self.config.scale * states.float().pow(2).sum(-1).mean()
'''

REGISTRATION = "from pmmrec.objectives.toy import ToyConfig, ToyLoss  # noqa: F401\n"

SCRIPT = """
import json, sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

import pmmrec
import tiny
from pmmrec.cli import app

root = Path(sys.argv[1])
data = tiny.write_tiny_dataset(root / "data")
parts = tiny.save_tiny_components(root / "parts")
runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


facts = {"package": pmmrec.__file__, "help": cli("finetune", "--help")}
for run, extra in (("with", ["--toy-weight", "0.5"]), ("without", [])):
    cli("finetune", "--data", data, "--out", root / run, "--text", parts["text"], "--user", parts["user"], "--epochs", "1", "--max-steps", "3",
        "--batch-size", "4", "--max-length", "8", "--device", "cpu", "--quiet", *extra)
    lines = [json.loads(line) for line in (root / run / "log.jsonl").read_text().splitlines()]
    config = yaml.safe_load((root / run / "config.yaml").read_text())
    facts[run] = {
        "toy_losses": [line["toy"] for line in lines if "toy" in line],
        "steps": sum("rec" in line for line in lines),
        "weight": config["objectives"]["weights"]["toy"],
        "options": config["objectives"]["toy"],
    }
print("FACTS " + json.dumps(facts))
"""


def objective_tree(root: Path) -> Path:
    """A copy of the package with the toy objective added; returns the folder to put on the path."""
    tree = copy_package(root)
    (tree / "pmmrec" / "objectives" / "toy.py").write_text(TOY_OBJECTIVE, encoding="utf-8")
    init = tree / "pmmrec" / "objectives" / "__init__.py"
    text = init.read_text(encoding="utf-8")
    anchor = "from pmmrec.objectives.step import TrainingStep\n"
    assert text.count(anchor) == 1, "objectives/__init__.py changed shape: update where the toy's import goes"
    init.write_text(text.replace(anchor, anchor + REGISTRATION), encoding="utf-8")
    return tree


@pytest.mark.slow
def test_a_new_objective_is_a_file_and_its_import(tmp_path: Path) -> None:
    tree = objective_tree(tmp_path)
    assert changed_files(tree) == ["pmmrec/objectives/__init__.py", "pmmrec/objectives/toy.py"]
    facts = run_in_copy(tree, SCRIPT, tmp_path, timeout=900)
    shown = " ".join(facts["help"].split())
    assert "--toy-weight" in shown and "Weight of the toy state-norm penalty." in shown
    trained, skipped = facts["with"], facts["without"]
    assert trained["weight"] == 0.5 and trained["options"] == {"scale": 0.01}
    assert len(trained["toy_losses"]) == trained["steps"] >= 3
    assert all(isinstance(loss, float) and loss > 0 for loss in trained["toy_losses"])
    assert skipped["weight"] == 0.0 and skipped["toy_losses"] == [] and skipped["steps"] >= 3
