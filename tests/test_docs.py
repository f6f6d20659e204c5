"""Docs that are generated from code stay in sync with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_the_code(tmp_path: Path) -> None:
    generated = tmp_path / "cli.md"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "typer",
            "pmmrec.cli",
            "utils",
            "docs",
            "--name",
            "pmmrec",
            "--title",
            "pmmrec command-line reference",
            "--output",
            str(generated),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert generated.read_text(encoding="utf-8") == committed, (
        "docs/cli.md is stale: regenerate with `python -m typer pmmrec.cli utils docs --name pmmrec "
        "--title 'pmmrec command-line reference' --output docs/cli.md`"
    )


def test_readme_gives_exactly_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick_start.splitlines() if line.startswith("make ")]
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_example_training_config_is_valid() -> None:
    from pmmrec.training.config import finetune_defaults, load_train_config

    config = load_train_config(finetune_defaults(), ROOT / "examples" / "finetune.yaml")
    assert config.component_lr == {"user": 5.0e-4} and config.objectives.weights.nid == 0.1
