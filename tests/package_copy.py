"""A throw-away copy of the pmmrec package, edited by a test to prove how many files an addition touches.

Used by the "where to add things" tests (docs/architecture.md): copy the package, make the addition, list the
files that differ, then run a script against the copy in a child process that prints `FACTS {json}`.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1] / "pmmrec"
TESTS = Path(__file__).resolve().parent


def copy_package(root: Path) -> Path:
    """A copy of the package under `root/tree/pmmrec`; returns the folder to put on the path (`root/tree`)."""
    tree = root / "tree"
    shutil.copytree(PACKAGE, tree / "pmmrec", ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def insert_before(path: Path, anchor: str, text: str) -> None:
    """Insert `text` just before `anchor`, which must occur exactly once in `path` (else the file changed shape)."""
    content = path.read_text(encoding="utf-8")
    assert content.count(anchor) == 1, f"{path.name}: {anchor!r} not found once: update where the addition goes"
    path.write_text(content.replace(anchor, text + anchor), encoding="utf-8")


def changed_files(tree: Path) -> list[str]:
    """Files of the copy that differ from the package or are new (relative paths)."""
    found = []
    for path in sorted((tree / "pmmrec").rglob("*.py")):
        original = PACKAGE / path.relative_to(tree / "pmmrec")
        if not original.is_file() or not filecmp.cmp(path, original, shallow=False):
            found.append(str(path.relative_to(tree)))
    return found


def run_in_copy(tree: Path, script: str, tmp_path: Path, timeout: int) -> dict[str, Any]:
    """Run `script` (argv[1]: a work folder) against the copy, offline, with a private cache; its FACTS line."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tree), str(TESTS)]),
        "PMMREC_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the repository: its pmmrec/ would come first on the path
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("FACTS ")]
    facts = json.loads(line.removeprefix("FACTS "))
    assert Path(facts["package"]).is_relative_to(tree)  # the copy ran, not the package
    return facts
