"""Docs that are generated from code stay in sync with it."""

from __future__ import annotations

import ast
import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(("goal", "expected"), [
    (["demo"], "bin/pmmrec demo --out demo_out"),
    (["demo-quick"], "bin/pmmrec demo --quick --out demo_out"),
    (["demo", "ARGS=--quick"], "bin/pmmrec demo --out demo_out --quick"),
])  # fmt: skip
def test_makefile_runs_the_demo_and_the_quick_demo(tmp_path: Path, goal: list[str], expected: str) -> None:
    """Issue 26: the quick demo is one make command. `make -n` prints the recipes without running them."""
    venv = tmp_path / "venv"  # absent: nothing could run even if a recipe did
    result = subprocess.run(["make", "-n", "-C", str(ROOT), f"VENV={venv}", *goal], capture_output=True, text=True, check=True)
    commands = [line.strip() for line in result.stdout.splitlines() if "bin/pmmrec demo" in line]
    assert commands == [f"{venv}/{expected}"]


def test_readme_states_how_long_each_demo_takes() -> None:
    """Issue 26: a newcomer knows before starting how long `make demo` and `make demo-quick` take on 2 cores."""
    quick_start = (ROOT / "README.md").read_text(encoding="utf-8").split("## Quick start", 1)[1].split("## ", 1)[0]
    for command in ("`make demo`", "`make demo-quick`"):
        sentence = next(part for part in re.split(r"(?<=\.)\s", quick_start) if command in part and "2-core" in part)
        assert re.search(r"\d+ (?:min|s)\b", sentence), sentence


def test_example_training_config_is_valid() -> None:
    from pmmrec.training.config import finetune_defaults
    from pmmrec.training.config_loading import load_train_config

    config = load_train_config(finetune_defaults(), ROOT / "examples" / "finetune.yaml")
    assert config.component_lr == {"user": 5.0e-4} and config.objectives.weights.nid == 0.1


CLAIM_DOCS = ("docs/robustness.md", "docs/training.md", "docs/benchmarks.md", "docs/testing.md")
_NAMED = re.compile(r"`(?:tests/)?(test_[A-Za-z0-9_*]+(?:\.py)?)(?:::(test_[A-Za-z0-9_*]+)(\.\.\.)?)?`")


def _tests_by_file() -> dict[str, set[str]]:
    """Test file name -> names of the test functions defined in it."""
    found = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found[path.name] = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}
    return found


def named_tests(text: str) -> list[tuple[str | None, str | None]]:
    """(file, test) pairs named in backticks: `test_x.py::test_y`, `tests/test_x.py`, `test_y`, with * or ... as a prefix."""
    pairs = []
    for first, second, dots in _NAMED.findall(text):
        if first.endswith(".py"):
            pairs.append((first, (second + ("*" if dots else "")) or None))
        else:
            pairs.append((None, first))
    return pairs


def missing_tests(text: str, tests: dict[str, set[str]]) -> list[str]:
    missing = []
    for file, test in named_tests(text):
        files = [name for name in tests if fnmatch.fnmatch(name, file)] if file else list(tests)
        if not files:
            missing.append(str(file))
        elif test and not any(fnmatch.fnmatch(name, test) for name_file in files for name in tests[name_file]):
            if file is None and any(fnmatch.fnmatch(name.removesuffix(".py"), test) for name in tests):
                continue  # `test_data_*`: a family of test files
            missing.append(f"{file or '*'}::{test}")
    return missing


def test_every_test_the_docs_name_exists() -> None:
    """Guards against docs that say "a test covers X" for a test that was renamed or removed."""
    tests = _tests_by_file()
    for doc in CLAIM_DOCS:
        path = ROOT / doc
        if path.is_file():
            assert missing_tests(path.read_text(encoding="utf-8"), tests) == [], doc
    assert named_tests((ROOT / "docs" / "robustness.md").read_text(encoding="utf-8"))  # the pattern finds them


def test_the_docs_check_catches_a_missing_test() -> None:
    tests = {"test_a.py": {"test_one", "test_two_things"}}
    text = "`test_a.py::test_one`, `test_a.py::test_two...`, `test_three`, `test_b.py`, `test_a.py::test_*`, `test_a*`"
    assert missing_tests(text, tests) == ["*::test_three", "test_b.py"]


def test_configs_are_the_demo_runs_settings() -> None:
    """configs/*.yaml (tools/demo_configs.py) give exactly the settings `pmmrec demo` trains its runs with
    (pmmrec/demo/rows.py): a change of the demo's settings fails here until the files are generated again."""
    import importlib.util

    from pmmrec.training.config import mode_defaults
    from pmmrec.training.config_loading import load_train_config

    spec = importlib.util.spec_from_file_location("demo_configs", ROOT / "tools" / "demo_configs.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    expected = tool.demo_configs("demo")
    files = sorted(path.name for path in (ROOT / "configs").glob("*.yaml"))
    assert files == sorted(expected), "regenerate with `python tools/demo_configs.py`"
    for name, (_usage, overrides) in expected.items():
        mode = overrides["mode"]
        from_file = load_train_config(mode_defaults(mode), ROOT / "configs" / name)
        from_rows = load_train_config(mode_defaults(mode), None, overrides)
        assert from_file == from_rows, f"configs/{name} differs from pmmrec/demo/rows.py: regenerate it"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "configs/" in readme
