"""Running pmmrec on a stranger's folders, many times, cheaply and safely (the fixture `stranger` of conftest.py).

A worker process imports pmmrec once (one torch thread, so it can fork), runs each command once on good folders to
warm every lazy import, and then forks a child per request: the child caps its address space (RLIMIT_AS) at a few
hundred MB above what the imports already map, runs `pmmrec ARGS` in-process, and reports its exit status, its output
and any exception that escaped. The test process sees whether the child ended by a signal, exited without a report
(the interpreter died), or reported. Mutating folders (`mutate_json`, `mutate_text`) and sealing them again as a
careful hostile author would (`seal_model`, `seal_dataset`: every checksum and pin rewritten to match) live here too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CAP_BYTES = 400 << 20  # the address space a child may map beyond what the worker's imports already map


@dataclass(frozen=True)
class Outcome:
    """How one run ended."""

    signal: int | None  # the signal that ended the child, if one did
    status: int | None  # its exit status otherwise
    output: str  # stdout and stderr
    exception: str | None  # an exception that escaped the command (a traceback), as text

    def problems(self) -> list[str]:
        """What is wrong with this outcome: a signal, a traceback, a crash, or anything but success / one error line."""
        if self.signal is not None:
            return [f"ended by signal {self.signal}"]
        if self.exception is not None:
            return [f"traceback: {self.exception}"]
        if self.status == 0:
            return []
        lines = self.output.splitlines()
        if self.status != 1 or len(lines) != 1 or not lines[0].startswith("error: "):
            return [f"exit status {self.status} with output {self.output[-600:]!r}"]
        if "pmmrec did not handle this case" in lines[0] or "out of memory" in lines[0]:
            return [f"caught only by the safety net: {lines[0]}"]
        return []


class Stranger:
    """A warm worker that runs `pmmrec ARGS` in capped, forked children."""

    def __init__(self, warm: list[list[str]], env: dict[str, str]) -> None:
        child_env = {**os.environ, **env, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        child_env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), child_env.get("PYTHONPATH", "")])
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import stranger; stranger.serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env,
            text=True,
        )
        self._send({"warm": warm})

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the stranger worker died (exit {self.process.wait()})")
        return json.loads(line)

    def run(self, *args: object, cap: int = CAP_BYTES) -> Outcome:
        """`pmmrec ARGS` in a fresh child of the warm worker, its address space capped `cap` bytes above the worker's."""
        reply = self._send({"args": [str(arg) for arg in args], "cap": cap})
        return Outcome(reply["signal"], reply["status"], reply["output"], reply["exception"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


# ---- the worker (runs in its own process) ----------------------------------------------------------------------


def _invoke(args: list[str]) -> tuple[int, str, str | None]:
    from typer.testing import CliRunner

    from pmmrec.cli import app

    result = CliRunner().invoke(app, args)
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    text = None
    if escaped is not None:
        import traceback

        text = "".join(traceback.format_exception(escaped))[-3000:]
    return result.exit_code, result.output, text


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def _run_forked(args: list[str], cap: int) -> dict[str, Any]:
    import resource

    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        report = Path(handle.name)
    pid = os.fork()
    if pid == 0:  # the child: cap, run, report, leave without cleanup
        try:
            quiet = os.open(os.devnull, os.O_WRONLY)  # the worker's stdout is its reply channel: nothing else on it
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            limit = _vm_size() + cap
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
            status, output, exception = _invoke(args)
            report.write_text(json.dumps({"status": status, "output": output, "exception": exception}))
        finally:
            os._exit(0)
    _, wait_status = os.waitpid(pid, 0)
    try:
        if os.WIFSIGNALED(wait_status):
            return {"signal": os.WTERMSIG(wait_status), "status": None, "output": "", "exception": None}
        text = report.read_text()
        if not text:
            return {"signal": None, "status": None, "output": "", "exception": "the child exited without a report"}
        return {"signal": None, **json.loads(text)}
    finally:
        report.unlink(missing_ok=True)


def serve() -> None:
    """The worker's loop: warm up once, then one forked run per request line."""
    import torch

    torch.set_num_threads(1)  # forked children must not inherit a started thread pool
    import pmmrec.cli  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        if "warm" in request:
            for args in request["warm"]:
                _invoke(args)
            reply: dict[str, Any] = {"ok": True}
        else:
            reply = _run_forked(request["args"], request["cap"])
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


# ---- mutating and sealing folders ----------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seal_component(folder: Path) -> None:
    """Rewrite a component's checksums.json over its current files (as a hostile author would)."""
    files = {
        path.relative_to(folder).as_posix(): sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in ("checksums.json", "README.md")
    }
    document = {"format": "pmmrec-checksums", "format_version": 1, "algorithm": "sha256", "files": files}
    (folder / "checksums.json").write_text(json.dumps(document, indent=2))


def seal_model(model: Path, *, keep: Path | None = None) -> None:
    """Rewrite every checksums.json (but `keep`) and every pin of pmmrec.json to match the files as they are."""
    try:
        manifest = json.loads((model / "pmmrec.json").read_text())
        components = manifest["components"]
        assert isinstance(components, dict)
    except Exception:  # a manifest mutated beyond repair: nothing to seal
        return
    for slot, entry in components.items():
        folder = model / slot
        if not folder.is_dir() or not isinstance(entry, dict):
            continue
        if keep != folder / "checksums.json":
            seal_component(folder)
        pins = {
            path.relative_to(folder).as_posix(): sha256(path)
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != "README.md"
        }
        entry["files"] = pins
        if "model.safetensors" in pins:
            entry["sha256"] = pins["model.safetensors"]
    if (model / "data_split.json").is_file():
        manifest["files"] = {"data_split.json": sha256(model / "data_split.json")}
    (model / "pmmrec.json").write_text(json.dumps(manifest, indent=2))


def seal_dataset(dataset: Path) -> None:
    """Rewrite dataset.json's sha256 and byte count of every file it lists to match the files as they are."""
    try:
        info = json.loads((dataset / "dataset.json").read_text())
        files = info["files"]
        assert isinstance(files, dict)
    except Exception:
        return
    for name, entry in files.items():
        path = dataset / name
        if isinstance(entry, dict) and path.is_file():
            entry["sha256"] = sha256(path)
            entry["bytes"] = path.stat().st_size
    (dataset / "dataset.json").write_text(json.dumps(info))


def leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths (keys and indices) of every value inside a parsed JSON document, containers included."""
    found = [path]
    if isinstance(value, dict):
        for key, child in list(value.items())[:50]:
            found += leaves(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:50]):
            found += leaves(child, (*path, index))
    return found


def replace_at(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of `document` with the value at `path` replaced (the document itself when `path` is empty)."""
    if not path:
        return value
    copy = json.loads(json.dumps(document))
    target = copy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return copy


def delete_at(document: Any, path: tuple[Any, ...]) -> Any:
    """A copy of `document` without the value at `path` (unchanged for the root)."""
    if not path:
        return document
    copy = json.loads(json.dumps(document))
    target = copy
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return copy


# ---- helpers of the tests of each kind ------------------------------------------------------------------------


def copy_folder(source: Path, target: Path) -> Path:
    """A copy of a folder to edit."""
    shutil.copytree(source, target)
    return target


def assert_one_line(outcome: Outcome, *fragments: str) -> None:
    """Exit status 1, exactly one `error:` line holding every fragment; no signal, traceback or safety net."""
    assert not outcome.problems(), outcome
    assert outcome.status == 1, outcome
    for fragment in fragments:
        assert fragment in outcome.output, (fragment, outcome.output)


def cli_one_line(*args: object, fragments: tuple[str, ...] = (), code: int = 1) -> str:
    """`pmmrec ARGS` in-process: exit status `code`; for 1, one `error:` line (not the safety net's); fragments in it."""
    from typer.testing import CliRunner

    from pmmrec.cli import app

    result = CliRunner().invoke(app, [str(arg) for arg in args])
    lines = result.output.splitlines()
    assert result.exit_code == code, result.output
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert "pmmrec did not handle" not in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    return result.output


def rewrite_weights(folder: Path, change: Any) -> None:
    """Change the tensors of a component's model.safetensors; its header's tensor digest and its checksums.json
    rewritten to match."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from pmmrec.integrity import tensors_digest

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    metadata["pmmrec_tensors_sha256"] = tensors_digest(tensors)
    save_file(tensors, str(path), metadata=metadata)
    seal_component(folder)


def edit_json(path: Path, change: Any) -> None:
    """Apply `change` to a parsed JSON file and write it back."""
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
