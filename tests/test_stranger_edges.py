"""Issue 25, kinds 5 and 6 and the safety net: plain mistakes on the command line and over HTTP.

Every folder here is edited as a careful hostile author would: the file changed, then every checksum and pin
rewritten to match (`tiny.reseal`, `stranger.seal_model`, `stranger.seal_dataset`), so only pmmrec's checks of
meaning stand between the edit and the user. Whatever could end the process (a signal) or allocate gigabytes runs
in a forked child with its address space capped (the `stranger_worker` fixture); the rest runs in-process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import stranger
import tiny
from typer.testing import CliRunner

from pmmrec.cli import app
from pmmrec.errors import ConfigError

pytestmark = pytest.mark.robustness


# ---- 5. tracebacks for plain mistakes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--k", "0"], "--k: must be greater than or equal to 1, got 0"),
        (["--k", "-1"], "--k: must be greater than or equal to 1, got -1"),
        (["--max-length", "0"], "--max-length: must be greater than or equal to 1"),
        (["--max-length", "9"], "longer than the 8 items"),
        (["--min-length", "2"], "--min-length: must be greater than or equal to 3"),
    ],
)
def test_evaluate_arguments_are_checked_at_the_edge(
    stranger_folders: dict[str, Path], args: list[str], fragment: str
) -> None:
    """Bug: evaluate --k 0 / --k -1 were tracebacks, --max-length 0 was accepted (wrong metrics)."""
    stranger.cli_one_line("evaluate", "--model", stranger_folders["model"], "--data", stranger_folders["data"], "--quiet", *args,
                  fragments=(fragment,))  # fmt: skip


def test_plain_mistakes_are_one_line(stranger_folders: dict[str, Path], tmp_path: Path) -> None:
    """Bug: data movielens --size 0, a dataset without an evaluable user and a YAML !!python tag were tracebacks
    (or a 4-line error)."""
    stranger.cli_one_line("data", "movielens", "--out", tmp_path / "ml", "--size", "0", fragments=("--size",))
    stranger.cli_one_line("recommend", "--model", stranger_folders["model"], "--data", stranger_folders["data"], "--user",
                  "u0", "--k", "0", fragments=("--k: must be greater than or equal to 1",))  # fmt: skip
    short = tiny.write_tiny_dataset(tmp_path / "short")
    stranger.cli_one_line("evaluate", "--model", stranger_folders["model"], "--data", short, "--quiet", "--min-length",
                  "50", fragments=("no user has the 50 interactions",))  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text("epochs: !!python/object/apply:os.system ['echo hi']\n")
    stranger.cli_one_line("finetune", "--data", short, "--out", tmp_path / "run", "--config", config,
                  fragments=("not valid YAML",))  # fmt: skip


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_refuses_a_port_out_of_range_in_one_line(stranger_folders: dict[str, Path], port: str) -> None:
    """serve --port 70000 / -1 were tracebacks. (The serve options' own port range comes with the server's
    restructuring; until then the safety net's one line is what the user sees.)"""
    result = CliRunner().invoke(app, ["serve", "--model", str(stranger_folders["model"]), "--data",
                                      str(stranger_folders["data"]), "--port", port, "--quiet"])  # fmt: skip
    lines = result.output.splitlines()
    assert result.exit_code in (1, 2) and lines and "Traceback" not in result.output, result.output
    assert result.exit_code == 2 or (len(lines) == 1 and lines[0].startswith("error: ")), result.output


def test_booleans_are_not_integers_and_ranges_hold_for_python_callers(stranger_folders: dict[str, Path]) -> None:
    from pmmrec import api

    with pytest.raises(ConfigError, match="--k: must be a valid integer"):
        api.recommend(stranger_folders["model"], stranger_folders["data"], user="u0", k=True)
    with pytest.raises(ConfigError, match=r"--k: must be a valid integer, got True"):
        api.evaluate(stranger_folders["model"], stranger_folders["data"], ks=[True], progress=False)


# ---- 6. the server --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b'{"history": ["1"], "k": true}', {}, 422, "k"),
        (b'{"history": ["1"], "k": "3"}', {}, 422, "k"),
        (b'{"history": ["1"], "exclude_seen": 1}', {}, 422, "exclude_seen"),
        ('{"history": ["1"], "k": 3}'.encode("utf-16"), {}, 400, "not UTF-8"),
        (b'{"history": ["1"], "k": 3, "k": 1000}', {}, 400, "key 'k' appears twice"),
        (b'{"history": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", {}, 400, "nested deeper"),
        (b'{"history": [', {}, 422, ""),
    ],
    ids=["bool-k", "string-k", "int-bool", "utf16", "duplicate", "deep", "malformed"],
)
def test_http_bodies_are_utf8_json_with_typed_fields(
    client: Any, body: bytes, headers: dict[str, str], status: int, fragment: str
) -> None:
    """Bug: "k": true was taken as 1; a UTF-16 body was accepted although the docs say 400/422."""
    response = client.post("/recommend", content=body, headers={"content-type": "application/json", **headers})
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


# ---- the safety net ------------------------------------------------------------------------------------------------


def test_an_unexpected_exception_is_one_line_and_a_saved_traceback(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A safety net, not a substitute: a case pmmrec does not handle yet prints one line naming the saved
    traceback (exit status 1); --debug shows the traceback."""
    import dataclasses
    import functools

    from pmmrec.commands import COMMANDS

    @functools.wraps(COMMANDS["inspect"].function)  # same options as the real command
    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug\nspanning lines")

    # the command is built from its api function as registered in the command table
    monkeypatch.setitem(COMMANDS, "inspect", dataclasses.replace(COMMANDS["inspect"], function=broken))
    result = CliRunner().invoke(app, ["inspect", "anything"])
    lines = result.output.splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error: unexpected RuntimeError: a bug spanning lines")
    saved = Path(lines[0].split("traceback saved in ")[1].split(";")[0])
    assert saved.is_file() and "RuntimeError: a bug" in saved.read_text() and "Traceback" in saved.read_text()
    debug = CliRunner().invoke(app, ["--debug", "inspect", "anything"])
    assert isinstance(debug.exception, RuntimeError)
    assert "PMMREC_DEBUG" not in os.environ  # the flag held for that command only
