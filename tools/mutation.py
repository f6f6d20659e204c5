"""Mutation testing of pmmrec's core modules with mutmut; `make mutation` runs it and writes mutation.json.

Which code is mutated (GROUPS), and which fast tests may kill a mutant (TESTS), are listed below. mutmut records
which tests call each function and runs only those against that function's mutants. Two things are adjusted
around mutmut (version pinned in the Makefile), both by patching its mutation visitor in this process before it
forks its workers:

- functions decorated only with ``@torch.inference_mode()`` / ``@torch.no_grad()`` are mutated too (mutmut skips
  every decorated function, which would leave ``rank_targets`` and the server's ranking untested); the decorator
  stays on the trampoline and on every mutant, so behaviour is unchanged;
- a file may be limited to some of its functions (``path::Class.method,function``), so the server's ranking is
  measured without the rest of the HTTP application.

Usage: ``python tools/mutation.py [--output mutation.json] [--keep]`` from the repository root. Without ``--keep``
the mutants/ folder of an earlier run is removed first, so every figure comes from this run.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Module group -> files ("path" or "path::Qualified.name,other").
GROUPS: dict[str, list[str]] = {
    "evaluation": ["pmmrec/evaluation.py"],
    "objectives": [
        "pmmrec/objectives/__init__.py",
        "pmmrec/objectives/corruption.py",
        "pmmrec/objectives/next_item.py",
        "pmmrec/objectives/nicl.py",
        "pmmrec/objectives/nid.py",
        "pmmrec/objectives/rcl.py",
    ],
    "split and windows": [
        "pmmrec/data/split.py",
        "pmmrec/data/loading.py::_left_pad,TrainSequences,EvalSequences,_stack_left_padded,BatchCollator._collate",
    ],
    "training wiring": ["pmmrec/training/module.py", "pmmrec/training/trainer.py"],
    "server ranking": ["pmmrec/serving/app.py::RecommenderService.recommend,RecommenderService._rank"],
    "manifest verification": ["pmmrec/model/manifest.py"],
}

# The fast tests that cover those modules (a mutant runs only those of them that call its function).
TESTS: list[str] = [
    "tests/test_evaluation.py",
    "tests/test_objectives.py",
    "tests/test_data_split.py",
    "tests/test_data_loading.py",
    "tests/test_pipeline_reference.py",
    "tests/test_training.py",
    "tests/test_speed_paths.py",
    "tests/test_serving.py",
    "tests/test_assembly.py",
]
DESELECT: list[str] = [
    "tests/test_data_loading.py::test_spawned_worker_receives_picklable_state",  # 10 s, a process start
]

TARGETS = {"evaluation": 0.90, "objectives": 0.90, "split and windows": 0.90, "all": 0.80}
KILLED = {"killed", "timeout", "caught by type check"}
GRAD_MODE_DECORATORS = {"torch.inference_mode()", "torch.no_grad()"}


def _files() -> dict[str, set[str] | None]:
    """path -> qualified names to mutate (None: the whole file)."""
    files: dict[str, set[str] | None] = {}
    for entries in GROUPS.values():
        for entry in entries:
            path, _, names = entry.partition("::")
            files[path] = {name.strip() for name in names.split(",")} if names else None
    return files


def _group_of(path: str) -> str:
    for group, entries in GROUPS.items():
        if any(entry.partition("::")[0] == path for entry in entries):
            return group
    raise KeyError(path)


def _allowed_lines(path: str, names: set[str]) -> set[int]:
    """First lines of every function definition inside the named functions or classes of `path`."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    lines: set[int] = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualified = f"{prefix}{child.name}"
                if qualified in names or any(qualified.startswith(f"{n}.") for n in names):
                    for inner in ast.walk(child):
                        if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            lines.add(min([inner.lineno, *(d.lineno for d in inner.decorator_list)]))
                else:
                    visit(child, f"{qualified}.")

    visit(tree, "")
    missing = {n for n in names if not any(n == f or f.startswith(f"{n}.") for f in _qualified_names(tree))}
    if missing:
        raise SystemExit(f"tools/mutation.py: {path} has no {sorted(missing)}")
    return lines


def _qualified_names(tree: ast.AST, prefix: str = "") -> list[str]:
    names = []
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(f"{prefix}{child.name}")
            names += _qualified_names(child, f"{prefix}{child.name}.")
    return names


def _patch_mutmut() -> None:
    """Configure mutmut from this file and widen/narrow what its visitor mutates (see the module docstring)."""
    import libcst as cst
    from libcst.metadata import PositionProvider

    import mutmut.configuration as configuration

    settings: dict[str, Any] = {
        "source_paths": ["pmmrec"],
        "only_mutate": sorted(_files()),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "no:randomly", "-q", *(f"--deselect={d}" for d in DESELECT)],
        "pytest_add_cli_args_test_selection": [t for t in TESTS if (ROOT / t).is_file()],
        "process_isolation": "forkserver",
        "timeout_multiplier": 20.0,
        "timeout_constant": 20.0,
        "use_git_change_detection": False,
    }
    configuration._config_reader = lambda: (lambda key, default: settings.get(key, default))  # type: ignore[assignment]
    configuration.reset_config()

    from mutmut.mutation import file_mutation

    scopes = {path: (_allowed_lines(path, names) if names is not None else None) for path, names in _files().items()}
    current: dict[str, set[int] | None] = {"lines": None}
    create_mutations = file_mutation.create_mutations

    def create_mutations_in_scope(filename: str, code: str, *args: Any, **kwargs: Any) -> Any:
        relative = Path(filename).resolve().relative_to(ROOT).as_posix() if Path(filename).is_absolute() else filename
        current["lines"] = scopes.get(Path(relative).as_posix())
        return create_mutations(filename, code, *args, **kwargs)

    skip = file_mutation.MutationVisitor._skip_node_and_children

    def skip_out_of_scope(self: Any, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.FunctionDef):
            allowed = current["lines"]
            position = self.get_metadata(PositionProvider, node, None)
            if allowed is not None and (position is None or position.start.line not in allowed):
                return True
            rendered = [cst.Module(body=[]).code_for_node(d.decorator) for d in node.decorators]
            if rendered and all(text in GRAD_MODE_DECORATORS for text in rendered):
                return skip(self, node.with_changes(decorators=[]))
        return skip(self, node)

    file_mutation.create_mutations = create_mutations_in_scope  # type: ignore[assignment]
    file_mutation.MutationVisitor._skip_node_and_children = skip_out_of_scope  # type: ignore[method-assign]


def _report(seconds: float) -> dict[str, Any]:
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    modules: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    for path in sorted(_files()):
        data = SourceFileMutationData(path=path)
        data.load()
        group = modules.setdefault(
            _group_of(path), {"files": [], "killed": 0, "survived": 0, "total": 0, "statuses": Counter(), "survivors": []}
        )
        group["files"].append(path)
        for name, code in sorted(data.exit_code_by_key.items()):
            status = status_by_exit_code[code]
            group["statuses"][status] += 1
            if status in {"skipped", "not checked"}:
                continue
            group["total"] += 1
            if status in KILLED:
                group["killed"] += 1
            else:
                group["survived"] += 1
                try:
                    diff = get_diff_for_mutant(name, path=path)
                except Exception as exc:  # a report without a diff beats no report
                    diff = f"(no diff: {exc})"
                group["survivors"].append({"mutant": name, "status": status, "diff": diff})
    for group in modules.values():
        group["score"] = round(group["killed"] / group["total"], 4) if group["total"] else None
        group["statuses"] = dict(group["statuses"])
        totals.update(killed=group["killed"], total=group["total"])
    score = round(totals["killed"] / totals["total"], 4) if totals["total"] else None
    return {
        "tool": "mutmut",
        "command": "make mutation",
        "seconds": round(seconds),
        "score": score,
        "killed": totals["killed"],
        "total": totals["total"],
        "targets": TARGETS,
        "tests": TESTS,
        "modules": modules,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "mutation.json")
    parser.add_argument("--keep", action="store_true", help="reuse mutants/ and mutmut's cached results")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from mutants/")
    parser.add_argument("--group", action="append", choices=sorted(GROUPS), help="only these module groups")
    args = parser.parse_args(argv)
    if args.group:
        for name in set(GROUPS) - set(args.group):
            del GROUPS[name]
    import os

    os.chdir(ROOT)
    if not args.keep and not args.report_only:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    _patch_mutmut()
    started = time.monotonic()
    if not args.report_only:
        from mutmut.__main__ import cli

        try:
            cli(["run", "--max-children", str(args.max_children)], standalone_mode=False)
        except SystemExit as exc:
            if exc.code not in (0, None):
                return int(exc.code) if isinstance(exc.code, int) else 1
    report = _report(time.monotonic() - started)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nmutation score {report['score']} ({report['killed']}/{report['total']} killed) -> {args.output}")
    for name, group in report["modules"].items():
        print(f"  {name:24s} {group['score']}  ({group['killed']}/{group['total']}, {len(group['survivors'])} survivors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
