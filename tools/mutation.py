"""Mutation testing of pmmrec's core modules with mutmut; `make mutation` runs it and writes mutation.json.

Which code is mutated, and which fast tests may kill its mutants, are listed per module group in GROUPS below; each
group runs in its own process with its own mutants/ folder. mutmut records which of the group's tests call each
function and runs only those (fastest first, stopping at the first failure) against that function's mutants. Two things are adjusted
around mutmut (version pinned in the Makefile), both by patching its mutation visitor in this process before it
forks its workers:

- functions decorated only with ``@torch.inference_mode()`` / ``@torch.no_grad()`` are mutated too (mutmut skips
  every decorated function, which would leave ``rank_targets`` and the server's ranking untested); the decorator
  stays on the trampoline and on every mutant, so behaviour is unchanged;
- a file may be limited to some of its functions (``path::Class.method,function``), so the server's ranking is
  measured without the rest of the HTTP application.

Usage: ``python tools/mutation.py [--group NAME ...] [--output mutation.json]``. Every group starts from an empty
mutants/ folder, so each figure comes from this run; with --group, the other groups' figures are kept from the
existing output file.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

@dataclass(frozen=True)
class Group:
    """Files to mutate ("path" or "path::Qualified.name,other") and the fast tests that cover them."""

    files: list[str]
    tests: list[str]
    sample: str = "37"  # the default sample (see below)


PIPELINE = "tests/test_pipeline_reference.py"
SURVIVORS = "tests/test_mutation_survivors.py"
FILES = "tests/test_stranger_files.py"
GROUPS: dict[str, Group] = {
    "evaluation": Group(
        ["pmmrec/evaluation.py"],
        [
            "tests/test_evaluation.py",
            f"{PIPELINE}::test_pmmrec_evaluate_equals_a_naive_per_user_evaluation",
            f"{SURVIVORS}::test_a_chunk_is_recounted_when_the_targets_block_rounds_its_score_differently",
        ],
    ),
    "objectives": Group(
        [
            "pmmrec/objectives/__init__.py",
            "pmmrec/objectives/corruption.py",
            "pmmrec/objectives/next_item.py",
            "pmmrec/objectives/nicl.py",
            "pmmrec/objectives/nid.py",
            "pmmrec/objectives/rcl.py",
        ],
        ["tests/test_objectives.py", f"{PIPELINE}::test_training_module_losses_equal_loops_over_users_and_positions"],
    ),
    "split and windows": Group(
        [
            "pmmrec/data/split.py",
            "pmmrec/data/windows.py",
            "pmmrec/data/loading.py::EvalSequences,_stack_left_padded,BatchCollator._collate",
        ],
        [
            "tests/test_data_split.py",
            "tests/test_data_loading.py",
            "tests/test_quality_training.py::test_tiles_make_every_training_interaction_a_target_exactly_once",
            "tests/test_quality_training.py::test_random_crops_cover_every_interaction_within_the_documented_epochs",
            "tests/test_quality_training.py::test_last_window_scheme_counts_only_what_it_trains",
            f"{PIPELINE}::test_pmmrec_evaluate_equals_a_naive_per_user_evaluation",
            f"{PIPELINE}::test_the_popularity_table_counts_the_training_split_only",
        ],
    ),
    "training wiring": Group(
        # gather_candidates runs only under several processes (tests/test_distributed.py, too slow to mutate)
        ["pmmrec/training/module.py::TrainingModule,item_tower_frozen", "pmmrec/training/trainer.py"],
        [
            PIPELINE,
            "tests/test_training.py",
            "tests/test_speed_paths.py",
            "tests/test_quality_training.py::test_softmax_auto_is_full_for_id_towers_and_in_batch_for_content",
            f"{SURVIVORS}::test_resume_skips_exactly_the_batches_already_trained",
        ],
        sample="7",
    ),
    "server ranking": Group(
        [
            "pmmrec/ranking.py",
            "pmmrec/serving/int8_scan.py",
            "pmmrec/serving/service.py::RecommenderService.recommend,RecommenderService.recommend_async,"
            "RecommenderService._query,RecommenderService._answer,RecommenderService._rank,"
            "RecommenderService._history_indices",
        ],
        [
            f"{PIPELINE}::test_the_server_and_pmmrec_recommend_rank_like_the_naive_loop",
            f"{PIPELINE}::test_the_server_refuses_bad_requests_with_status_and_reason",
            "tests/test_serving.py",
            "tests/test_ranking.py",
            "tests/test_int8_scan.py",
            "tests/test_serving_ops.py::test_the_ann_index_is_cached_and_follows_added_items",
        ],
    ),
    "server start-up": Group(
        ["pmmrec/serving/served_model.py", "pmmrec/serving/table_cache.py"],
        [
            "tests/test_serving_startup.py",
            "tests/test_serving_durable.py::test_live_items_survive_a_restart_bit_for_bit",
            "tests/test_serving_durable.py::test_a_duplicate_in_the_store_is_a_conflict_and_nothing_changes",
            "tests/test_serving_durable.py::test_the_table_cache_is_reused_and_rebuilt_when_anything_changes",
        ],
    ),
    "manifest verification": Group(
        ["pmmrec/model/manifest.py"],
        [
            "tests/test_assembly.py",
            "tests/test_integrity.py::test_a_model_without_file_checksums_loads_only_unverified",
            f"{FILES}::test_manifest_claims_are_checked_against_the_components",
            f"{FILES}::test_data_split_json_is_pinned_and_written_before_the_rename",
        ],
    ),
    # Issue 25: what pmmrec accepts from a stranger's folder, and the guards of the five survivors of the spot-check.
    "stranger input": Group(
        [
            "pmmrec/jsonfile.py",
            "pmmrec/budget.py",
            "pmmrec/arguments.py",
            "pmmrec/imaging.py",
            "pmmrec/data/lmdb_check.py",
            "pmmrec/components/backbone_schema.py",
            "pmmrec/components/tokenizer_files.py",
            "pmmrec/components/base.py::check_tensor_values",
        ],
        [
            "tests/test_stranger_kinds.py",
            FILES,
            "tests/test_stranger_edges.py",
            "tests/test_hostile_files.py",
            "tests/test_data_split.py",
        ],
    ),
    "crash recovery, prefix cache and fusion": Group(
        [
            "pmmrec/recovery.py::_recover_name",
            "pmmrec/prefix_cache.py::FrozenPrefixCache.for_model,_input_digest,_state_digest,_config_digest",
            "pmmrec/components/fusion_merge_attention.py::MergeAttentionFusion.forward",
        ],
        [SURVIVORS, "tests/test_recovery.py"],
    ),
}
DESELECT: list[str] = [
    "tests/test_data_loading.py::test_spawned_worker_receives_picklable_state",  # 10 s, a process start
]

# Which mutants `make mutation` runs by default (Group.sample): those whose number within their function ends in the
# given digits, a fixed sample: "37" about 20%, "7" about 10% for the largest group (training wiring). The whole set
# (about 3,500 mutants) takes hours on a shared 2-core machine; `--sample all` runs it.
TARGETS = {"evaluation": 0.90, "objectives": 0.90, "split and windows": 0.90, "all": 0.80}
KILLED = {"killed", "timeout", "caught by type check"}
GRAD_MODE_DECORATORS = {"torch.inference_mode()", "torch.no_grad()"}


def _files(groups: list[str] | None = None) -> dict[str, set[str] | None]:
    """path -> qualified names to mutate (None: the whole file), for the given groups (default: all)."""
    files: dict[str, set[str] | None] = {}
    for name, group in GROUPS.items():
        if groups is not None and name not in groups:
            continue
        for entry in group.files:
            path, _, names = entry.partition("::")
            files[path] = {name.strip() for name in names.split(",")} if names else None
    return files


def _group_of(path: str) -> str:
    for name, group in GROUPS.items():
        if any(entry.partition("::")[0] == path for entry in group.files):
            return name
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


def _patch_mutmut(group: str) -> None:
    """Configure mutmut for one group and widen/narrow what its visitor mutates (see the module docstring)."""
    import libcst as cst
    import mutmut.configuration as configuration
    from libcst.metadata import PositionProvider

    files = _files([group])
    settings: dict[str, Any] = {
        "source_paths": ["pmmrec"],
        "only_mutate": sorted(files),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", *(f"--deselect={d}" for d in DESELECT)],
        "pytest_add_cli_args_test_selection": GROUPS[group].tests,
        "process_isolation": "forkserver",
        "timeout_multiplier": 20.0,
        "timeout_constant": 30.0,
        "use_git_change_detection": False,
    }
    configuration._config_reader = lambda: (lambda key, default: settings.get(key, default))  # type: ignore[assignment]
    configuration.reset_config()

    from mutmut.mutation import file_mutation

    scopes = {path: (_allowed_lines(path, names) if names is not None else None) for path, names in files.items()}
    current: dict[str, set[int] | None] = {"lines": None}
    create_mutations = file_mutation.create_mutations

    def create_mutations_in_scope(filename: str, code: str, *args: Any, **kwargs: Any) -> Any:
        path = Path(filename)
        relative = path.resolve().relative_to(ROOT).as_posix() if path.is_absolute() else path.as_posix()
        current["lines"] = scopes.get(relative)
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


def _group_report(group: str, seconds: float, sample: str | None) -> dict[str, Any]:
    """Counts, score and survivors (with their diffs) of one group, read from mutants/."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    report: dict[str, Any] = {
        "files": GROUPS[group].files,
        "tests": GROUPS[group].tests,
        "seconds": round(seconds),
        "killed": 0,
        "survived": 0,
        "total": 0,
        "statuses": {},
        "survivors": [],
    }
    statuses: Counter[str] = Counter()
    for path, names in sorted(_files([group]).items()):
        data = SourceFileMutationData(path=path)
        data.load()
        for name, code in sorted(data.exit_code_by_key.items()):
            if names is not None and not _in_scope(name, names):
                continue
            status = status_by_exit_code[code]
            statuses[status] += 1
            if status in {"skipped", "not checked"}:
                continue
            report["total"] += 1
            if status in KILLED:
                report["killed"] += 1
                continue
            report["survived"] += 1
            try:
                diff = get_diff_for_mutant(name, path=path)
            except Exception as exc:  # a report without a diff beats no report
                diff = f"(no diff: {exc})"
            report["survivors"].append({"mutant": name, "status": status, "diff": diff})
    report["statuses"] = dict(statuses)
    report["sample"] = f"mutants numbered ...{'/'.join(sample)} in each function" if sample else "all mutants"
    report["score"] = round(report["killed"] / report["total"], 4) if report["total"] else None
    return report


def _in_scope(mutant: str, names: set[str]) -> bool:
    """Whether a mutant (``pkg.mod.x_func__mutmut_3``, ``pkg.mod.xǁClassǁmethod__mutmut_3``) is in a file's scope."""
    mangled = mutant.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    qualified = mangled.removeprefix("x_") if mangled.startswith("x_") else ".".join(mangled.split("ǁ")[1:])
    return any(qualified == n or qualified.startswith(f"{n}.") for n in names)


def _run_group(group: str, part: Path, max_children: int, sample: str | None) -> int:
    """Mutate one group from scratch (mutants/ is removed first) and write its report to `part`.

    `sample`: last digits of the mutant numbers to run (e.g. "37": every mutant numbered ...3 or ...7 in each
    function, about 20%); None runs every mutant.
    """
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    _patch_mutmut(group)
    from mutmut.__main__ import cli

    started = time.monotonic()
    names = [f"*__mutmut_*[{sample}]"] if sample else []
    try:
        cli(["run", "--max-children", str(max_children), *names], standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code) if isinstance(exc.code, int) else 1
    part.write_text(json.dumps(_group_report(group, time.monotonic() - started, sample), indent=2) + "\n", encoding="utf-8")
    return 0


def _summary(modules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    killed = sum(m["killed"] for m in modules.values())
    total = sum(m["total"] for m in modules.values())
    return {
        "tool": "mutmut",
        "command": "make mutation",
        "seconds": sum(m["seconds"] for m in modules.values()),
        "score": round(killed / total, 4) if total else None,
        "killed": killed,
        "total": total,
        "targets": TARGETS,
        "modules": modules,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "mutation.json")
    parser.add_argument("--group", action="append", choices=sorted(GROUPS), help="only these module groups")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument(
        "--sample", help="last digits of the mutant numbers to run (default: each group's own); 'all' for every mutant"
    )
    parser.add_argument("--part", type=Path, help=argparse.SUPPRESS)  # internal: one group, in its own process
    parser.add_argument("--report-only", action="store_true", help=argparse.SUPPRESS)  # internal: re-read mutants/
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if args.part is not None:
        (group,) = args.group
        sample = args.sample or GROUPS[group].sample
        if args.report_only:
            args.part.write_text(json.dumps(_group_report(group, 0.0, sample), indent=2) + "\n", encoding="utf-8")
            return 0
        return _run_group(group, args.part, args.max_children, None if sample == "all" else sample)
    modules: dict[str, dict[str, Any]] = {}
    if args.output.is_file():  # keep the figures of groups not run this time
        modules = {k: v for k, v in json.loads(args.output.read_text()).get("modules", {}).items() if k in GROUPS}
    for group in args.group or list(GROUPS):
        part = ROOT / "mutants-report.json"
        command = [
            sys.executable, __file__, "--group", group, "--part", str(part),
            "--max-children", str(args.max_children), *(["--sample", args.sample] if args.sample else []),
        ]  # fmt: skip
        print(f"== mutating {group}: {', '.join(GROUPS[group].files)}", flush=True)
        if subprocess.run(command, check=False).returncode != 0 or not part.is_file():
            print(f"mutmut failed for {group}", file=sys.stderr)
            return 1
        modules[group] = json.loads(part.read_text())
        part.unlink()
        args.output.write_text(json.dumps(_summary(modules), indent=2) + "\n", encoding="utf-8")
    report = _summary(modules)
    print(f"\nmutation score {report['score']} ({report['killed']}/{report['total']} killed) -> {args.output}")
    for name, group in report["modules"].items():
        print(f"  {name:24s} {group['score']}  ({group['killed']}/{group['total']}, {len(group['survivors'])} survivors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
