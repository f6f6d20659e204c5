"""What a newcomer meets first on the command line: help, versions, devices, recommendations, tracking."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import tiny
from typer.testing import CliRunner

from pmmrec import __version__
from pmmrec.cli import app
from pmmrec.data import write_dataset
from pmmrec.model import PMMRec

ITEMS = [f"i{n}" for n in range(1, 13)]
TEXTS = [f"Film number {n} about {'space' if n % 2 else 'the sea'}" for n in range(1, 13)]


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    users = [[ITEMS[(start + step) % len(ITEMS)] for step in range(6)] for start in range(8)]
    return write_dataset(
        tmp_path_factory.mktemp("data") / "tiny",
        name="tiny",
        item_ids=ITEMS,
        item_texts=TEXTS,
        user_ids=[f"u{n}" for n in range(8)],
        user_items=users,
        provenance={"source": "tests"},
        preprocessing={},
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = PMMRec.assemble(text=tiny.tiny_text_encoder(), user=tiny.tiny_user_encoder())
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "model")


def test_version_flag_and_command_agree() -> None:
    assert invoke("--version") == (0, f"{__version__}\n")
    assert invoke("version") == (0, f"{__version__}\n")


@pytest.mark.parametrize(
    "command",
    [["init"], ["assemble"], ["finetune"], ["pretrain"], ["evaluate"], ["recommend"], ["serve"], ["demo"], ["data", "movielens"]],
)
def test_help_shows_flags_as_flags_and_every_default(command: list[str]) -> None:
    """Bug guarded: boolean options shown as `<bool>` and defaults missing from --help."""
    code, output = invoke(*command, "--help")
    assert code == 0
    assert "<bool>" not in output
    for line in re.findall(r"^\s+(--[a-z-]+(?:/--[a-z-]+)? <[^>]+>.*)$", output, flags=re.MULTILINE):
        assert line  # typed options are shown with their type
    if command == ["init"]:
        assert "[default: 2]" in output and "--overwrite " in output


def test_evaluate_usage_has_no_internal_names() -> None:
    """Bug guarded: the hidden extra-cut-offs argument showed as `[more_k]...`, then `[[K]...]`, in the usage line."""
    code, output = invoke("evaluate", "--help")
    assert code == 0 and "more_k" not in output and "[K]" not in output
    assert output.splitlines()[0] == "Usage: pmmrec evaluate [OPTIONS]"


@pytest.mark.parametrize("device", ["gpu", "cuda:99", "tpu"])
def test_a_bad_device_is_one_line_naming_the_choices(device: str, model_dir: Path, dataset: Path) -> None:
    """Bug guarded: `--device gpu` (or cuda without CUDA) gave a 40-line torch traceback."""
    code, output = invoke("recommend", "--model", model_dir, "--data", dataset, "--user", "u1", "--device", device)
    assert code == 1
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --device {device}"), output
    assert "Traceback" not in output


def test_recommend_prints_a_header_and_excludes_seen_items_by_default(model_dir: Path, dataset: Path) -> None:
    code, output = invoke("recommend", "--model", model_dir, "--data", dataset, "--user", "u0", "--k", "20")
    assert code == 0, output
    header, *rows = output.splitlines()
    assert header.split() == ["rank", "score", "item", "id", "text"]
    returned = {row.split()[2] for row in rows}
    assert returned and not returned & set(ITEMS[:6])  # u0's history is i1..i6
    code, output = invoke("recommend", "--model", model_dir, "--data", dataset, "--user", "u0", "--k", "20", "--keep-seen")
    assert code == 0 and len(output.splitlines()) == 1 + len(ITEMS)


def test_report_to_tensorboard_writes_step_and_evaluation_scalars(tmp_path: Path, dataset: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    text = tiny.tiny_text_encoder().save_pretrained(tmp_path / "text")
    user = tiny.tiny_user_encoder().save_pretrained(tmp_path / "user")
    run = tmp_path / "run"
    code, output = invoke(
        "finetune", "--data", dataset, "--out", run, "--text", text, "--user", user, "--epochs", "1",
        "--batch-size", "4", "--max-length", "8", "--report-to", "tensorboard", "--quiet",
    )  # fmt: skip
    assert code == 0, output
    for folder, split in ((run, "valid"), (run / "refit", "test")):  # on a CPU the run refits (the CPU recipe)
        events = EventAccumulator(str(folder / "tensorboard"))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"train/loss", "train/rec", "train/items_per_s", f"{split}/ndcg@10"} <= tags
        assert any(tag.startswith("train/lr_") for tag in tags)
        steps = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        assert len(events.Scalars("train/loss")) == sum(record["event"] == "step" for record in steps)


def test_report_to_a_missing_tracker_is_refused_before_training(tmp_path: Path, dataset: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    code, output = invoke("finetune", "--data", dataset, "--out", tmp_path / "run", "--report-to", "wandb")
    assert code == 1 and "error: --report-to wandb: the wandb package is not installed" in output
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_readme_walkthrough_writes_only_ignored_paths() -> None:
    """Bug guarded: the README's commands left data/, models/, metrics.json untracked in the clone."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    ignored = [line.strip().strip("/") for line in (root / ".gitignore").read_text().splitlines() if line.strip()]
    written = set(re.findall(r"--(?:out|output) ([\w./-]+)", readme)) | set(re.findall(r'save_pretrained\("([^"]+)"', readme))
    assert written
    for path in written:
        top = Path(path).parts[0]
        assert top in ignored or path in ignored, f"README writes {path}, which .gitignore does not cover"


def test_artefacts_datasets_and_runs_follow_the_umask(tmp_path: Path, dataset: Path) -> None:
    """Bug guarded: model folders came out drwx------ and weights -rw-------, so another user (or a container
    running as non-root) could not serve them."""
    import os

    previous = os.umask(0o022)
    try:
        assert invoke("init", "user", "--dim", "32", "--max-length", "8", "--out", tmp_path / "user")[0] == 0
        text = tiny.tiny_text_encoder().save_pretrained(tmp_path / "text")
        code, output = invoke("assemble", "--text", text, "--user", tmp_path / "user", "--out", tmp_path / "model")
        assert code == 0, output
        code, output = invoke(
            "finetune", "--data", dataset, "--out", tmp_path / "run", "--text", text, "--user", tmp_path / "user",
            "--epochs", "1", "--batch-size", "4", "--max-length", "8", "--quiet",
        )  # fmt: skip
        assert code == 0, output
        data = write_dataset(
            tmp_path / "data", name="d", item_ids=ITEMS[:3], item_texts=TEXTS[:3], user_ids=["u"],
            user_items=[ITEMS[:3]], provenance={}, preprocessing={},
        )  # fmt: skip
    finally:
        os.umask(previous)
    checked = 0
    for root in (tmp_path / "user", tmp_path / "model", tmp_path / "run", data):
        for path in [root, *root.rglob("*")]:
            if path.name == ".lock" or path.is_symlink():
                continue
            expected = 0o755 if path.is_dir() else 0o644
            assert path.stat().st_mode & 0o777 == expected, f"{path}: {oct(path.stat().st_mode & 0o777)}"
            checked += 1
    assert checked > 20
