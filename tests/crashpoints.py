"""Crash-point harness: kill a writing command before its N-th filesystem operation and check what it leaves.

Run by tests/test_crashpoints.py as `python tests/crashpoints.py REPORT.json WORKDIR [SCENARIO ...]`. This process
imports pmmrec once; every run of a command is a fork of it (milliseconds instead of seconds of imports), so each
command can be killed at each of its operations within CI time:

1. warm-up: run the command once on a copy of its starting folder (caches filled, so later runs do the same work);
2. count: run it once more with counting hooks on the operations in OPERATIONS; this gives its total N and a
   trace of what each operation touches, and its result (the new state);
3. for each kill point k (see choose_points: every operation that can change what a reader sees for small
   commands; for long ones every operation on the output's own name plus an even sample of the others): copy
   the starting folder, fork, install hooks that call
   os._exit the moment operation k is about to run (no finally, no atexit: the filesystem sees what a SIGKILL
   leaves), run the command;
4. check, in a fresh fork: the command's readers (load_component, load_dataset, PMMRec.from_pretrained, hub
   references) find the previous or the new state, complete and byte for byte, under the real name;
5. run the command again (training: --resume), in a fresh fork: it must finish with exactly the uninterrupted
   result and leave no staging or journal leftovers beside its output.

The scenarios (commands, starting folders, readers) are in crashpoint_scenarios.py. The kill hooks exist only
here, inside the forked children; production code has none.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
sys.path.insert(0, str(Path(__file__).parent))

KILLED = 77  # exit status of a child killed by the hook
OPERATIONS: tuple[tuple[Any, str], ...] = (
    (os, "rename"), (os, "replace"), (os, "unlink"), (os, "remove"), (os, "rmdir"), (os, "mkdir"),
    (os, "fsync"), (os, "link"), (os, "symlink"), (os, "truncate"), (shutil, "rmtree"),
)  # fmt: skip


# ---- forked runs with hooks ---------------------------------------------------------------------------------


def _install_hooks(kill_at: int | None, trace: list[str]) -> None:
    """Count every operation of OPERATIONS; os._exit(KILLED) right before operation number `kill_at`.

    fsync is counted but not performed: it guards against power loss, which a killed process does not model,
    and it costs a fifth of a second per command here.
    """
    for module, name in OPERATIONS:
        real = (lambda fd: None) if name == "fsync" else getattr(module, name)

        def hooked(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            trace.append(f"{_name} {' -> '.join(os.fspath(a) for a in args[:2] if isinstance(a, (str, Path)))}")
            if len(trace) == kill_at:
                os._exit(KILLED)
            return _real(*args, **kwargs)

        setattr(module, name, hooked)


def in_child(function: Callable[[], Any], *, log: Path, kill_at: int | None = None, count: bool = False) -> tuple[int, list[str]]:
    """Run `function` in a forked child (stdout/stderr to `log`); return (exit status, trace when counting)."""
    trace_file = log.with_suffix(".trace.json")
    pid = os.fork()
    if pid == 0:  # the child: never returns
        status = 1
        try:
            with open(log, "a") as out:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
            trace: list[str] = []
            if kill_at is not None or count:
                _install_hooks(kill_at, trace)
            function()
            if count:
                trace_file.write_text(json.dumps(trace))
            status = 0
        except BaseException:  # report, never propagate into the harness's own code
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    return code, json.loads(trace_file.read_text()) if count and code == 0 else []


def cli(*args: Any) -> None:
    """The `pmmrec` command line, in this process; a non-zero exit raises."""
    import click

    from pmmrec.cli import app

    try:
        app([str(a) for a in args], prog_name="pmmrec", standalone_mode=False)
    except click.exceptions.Exit as exc:
        if exc.exit_code:
            raise SystemExit(exc.exit_code) from None


def snapshot(path: Path) -> dict[str, str] | None:
    """relative path -> sha256 of every file under `path` (hidden names skipped); None when `path` is absent."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    }


def leftovers(folder: Path) -> list[str]:
    """Staging and journal entries (pmmrec's hidden `.NAME.*.tmp` / `.NAME.pmmrec-*`) anywhere under `folder`."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob(".*")
        if p.name.endswith((".tmp", ".old")) or ".pmmrec-" in p.name
    )


def every_visible_state(trace: list[str]) -> list[int]:
    """Every operation, except that of a run of consecutive fsyncs only the first and the last are kill points.

    An fsync changes nothing a later reader can see, so killing before any fsync of a run leaves the same folders.
    """
    return [
        k
        for k in range(1, len(trace) + 1)
        if not trace[k - 1].startswith("fsync")
        or k == 1
        or not trace[k - 2].startswith("fsync")
        or k == len(trace)
        or not trace[k].startswith("fsync")
    ]


# ---- scenarios ------------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """A writing command, its starting folder, and what must hold after a kill at any operation."""

    name: str
    prepare: Callable[[Path], None]  # inputs and the previous state, under the root folder
    command: Callable[[Path], None]
    targets: list[str]  # outputs whose previous or new state must be complete after a kill
    readers: Callable[[Path, list[str]], None]  # what users do next (root, operations done before the kill)
    rerun: Callable[[Path], None] | None = None  # default: the command again
    points: Callable[[list[str], Path], list[int]] | None = None  # kill points from the trace and the root
    exact: bool = True  # targets are byte-for-byte the previous or the new state
    after_kill: Callable[[Path, list[str], int, str], None] | None = None  # extra checks (root, trace, k, rerun log)
    result: dict[str, Any] = field(default_factory=dict)


# ---- the harness ------------------------------------------------------------------------------------------------


def choose_points(
    trace: list[str], targets: list[Path], rest: int = 16, kinds: tuple[str, ...] = (), inside_rmtree: int = 8
) -> list[int]:
    """Kill points: all of them for a small command (at most 32); else every operation on the targets' own names (creating the staging folder, the renames, deleting
    the old version, with the first `inside_rmtree` operations inside that deletion; only operations named in
    `kinds` when given), and at most `rest` others, evenly spread.

    Operations deep inside a staging folder all leave the same picture under the real names (the previous
    version, plus hidden staging), so a sample of them is enough; see every_visible_state for fsyncs.
    """
    visible = every_visible_state(trace)
    if len(visible) <= 32 and not kinds:
        return visible  # a small command: every point
    parents = {str(t.parent) for t in targets}
    critical: set[int] = set()
    for k in visible:
        words = trace[k - 1].split(" ", 1)
        first = words[1].split(" -> ")[0] if len(words) > 1 else ""
        if first and str(Path(first).parent) in parents and (not kinds or words[0] in kinds):
            critical.update(range(k, k + 1 + (inside_rmtree if words[0] == "rmtree" else 0)))
    others = [k for k in visible if k not in critical]
    step = max(1, -(-len(others) // rest))
    return sorted((critical & set(visible)) | set(others[::step]))


def _check_then_rerun(scenario: Scenario, root: Path, done: list[str], states_file: Path) -> None:
    """In one child: the readers on what the kill left, its snapshot, then the rerun and its snapshot."""
    scenario.readers(root, done)
    after_kill = {t: snapshot(root / t) for t in scenario.targets}
    print("---- rerun ----", flush=True)
    (scenario.rerun or scenario.command)(root)
    after_rerun = {t: snapshot(root / t) for t in scenario.targets}
    states_file.write_text(json.dumps({"after_kill": after_kill, "after_rerun": after_rerun}))


def run_scenario(scenario: Scenario, work: Path) -> dict[str, Any]:
    """Kill `scenario`'s command at each chosen operation; return counts, kill points, seconds and failures."""
    started = time.perf_counter()
    base, logs = work / "base", work / "logs"
    logs.mkdir(parents=True)
    failures: list[str] = []

    def fresh() -> Path:
        root = work / "root"  # one path for every run: outputs that record paths stay comparable
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(base, root, symlinks=True)
        return root

    def must(function: Callable[[], Any], label: str, log: Path, **kwargs: Any) -> list[str] | None:
        code, trace = in_child(function, log=log, **kwargs)
        if code != 0:
            failures.append(f"{label}: exit {code}: {log.read_text()[-1500:]}")
            return None
        return trace

    base.mkdir()
    if must(lambda: scenario.prepare(base), "prepare", logs / "prepare.log") is None:
        return {"failures": failures}
    previous = {t: snapshot(base / t) for t in scenario.targets}
    warm = fresh()
    with open(logs / "warm.log", "w") as out, contextlib.redirect_stdout(out):
        scenario.command(warm)  # here, not in a fork: lazy imports and caches then serve every fork
    counted = fresh()
    trace = must(lambda: scenario.command(counted), "counted run", logs / "count.log", count=True)
    if trace is None:
        return {"failures": failures}
    new = {t: snapshot(counted / t) for t in scenario.targets}
    (logs / "states-new.json").write_text(json.dumps(new))  # for reading a failure
    points = scenario.points(trace, counted) if scenario.points else choose_points(trace, [counted / t for t in scenario.targets])
    for k in points:
        root = fresh()
        log = logs / f"kill-{k}.log"
        code, _ = in_child(lambda root=root: scenario.command(root), log=log, kill_at=k)
        if code != KILLED:
            failures.append(f"k={k}: expected the kill (exit {KILLED}), got exit {code}: {log.read_text()[-800:]}")
            continue
        where = f"k={k} ({trace[k - 1]})"
        states_file, check_log = logs / f"states-{k}.json", logs / f"check-{k}.log"
        check = functools.partial(_check_then_rerun, scenario, root, trace[: k - 1], states_file)
        if must(check, f"{where}: readers after the kill, or the rerun", check_log) is None:
            continue
        states = json.loads(states_file.read_text())
        for target in scenario.targets:
            if scenario.exact and states["after_kill"][target] not in (previous[target], new[target]):
                failures.append(f"{where}: {target} is neither the previous nor the new state")
            if states["after_rerun"][target] != new[target]:
                failures.append(f"{where}: after the rerun, {target} differs from an uninterrupted run")
        stray = leftovers(root)
        if stray:
            failures.append(f"{where}: leftovers after the rerun: {stray}")
        if scenario.after_kill is not None:
            try:
                scenario.after_kill(root, trace, k, check_log.read_text())
            except AssertionError as exc:
                failures.append(f"{where}: {exc}")
    return {
        "operations": len(trace),
        "kill_points": points,
        "seconds": round(time.perf_counter() - started, 1),
        "failures": failures,
    }


def main(argv: list[str]) -> int:
    """python tests/crashpoints.py REPORT.json WORKDIR [SCENARIO ...]"""
    report_path, work = Path(argv[0]), Path(argv[1])
    # The warm-up run trains here, before the forks; with a GPU visible, autograd would start its device threads
    # then, and a forked child cannot run backward after that. Kill points are about files, not devices.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    torch.set_num_threads(1)  # forked children must not inherit a started thread pool
    # Import everything once, before the first fork.
    import pmmrec.cli
    import pmmrec.data
    import pmmrec.model
    import pmmrec.training.jobs

    del pmmrec

    from crashpoint_scenarios import scenarios

    wanted = set(argv[2:])
    report = {}
    for scenario in scenarios():
        if wanted and scenario.name not in wanted:
            continue
        folder = work / scenario.name
        shutil.rmtree(folder, ignore_errors=True)
        try:
            report[scenario.name] = run_scenario(scenario, folder)
        except Exception:
            report[scenario.name] = {"failures": [f"the harness itself failed: {traceback.format_exc()}"]}
        report_path.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    import crashpoints  # one copy of this module for the harness and the scenarios (not also `__main__`)

    sys.exit(crashpoints.main(sys.argv[1:]))
