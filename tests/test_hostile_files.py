"""Hostile files read from disk: deep or huge JSON, wrong JSON types, FIFOs, control characters, giant lines.

Each case is one error line naming the file (and key or line), never a traceback, a hang or an exhausted memory.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tiny
import torch

from pmmrec.components import SASRecUserEncoder, load_component
from pmmrec.data import load_dataset, write_dataset
from pmmrec.data.dataset import MAX_LINE_BYTES, validate_text
from pmmrec.errors import ArtefactError, ConfigError, DatasetError
from pmmrec.model import MANIFEST_FILE, PMMRec
from pmmrec.training import run_dir as ckpt
from pmmrec.training.config import finetune_defaults
from pmmrec.training.config_loading import load_train_config

pytestmark = pytest.mark.robustness

DEEP = "[" * 100_000  # Bug: json.loads raised RecursionError (a traceback) on every JSON file pmmrec reads.


def _one_line(error: BaseException, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(
        tmp_path / "data",
        name="d",
        item_ids=["a", "b", "c"],
        item_texts=["A", "B", "C"],
        user_ids=["u"],
        user_items=[["a", "b", "c"]],
        provenance={},
        preprocessing={},
    )


# ---- JSON: nesting, size, strict types -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config.json", "checksums.json"])
def test_deeply_nested_component_files(user_encoder: SASRecUserEncoder, tmp_path: Path, name: str) -> None:
    folder = user_encoder.save_pretrained(tmp_path / "user")
    (folder / name).write_text(DEEP)
    if name != "checksums.json":
        tiny.reseal(folder)  # the JSON reader is under test, not the checksums
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    _one_line(info.value, name, "nested deeper than 64 levels")


def test_deeply_nested_catalogue(id_tower: Any, tmp_path: Path) -> None:
    folder = id_tower.save_pretrained(tmp_path / "ids")
    (folder / "item_ids.json").write_text(DEEP[:10_000])  # within the size its 10 ids allow: the depth is refused
    tiny.reseal(folder)
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    _one_line(info.value, "item_ids.json", "nested deeper than 2 levels")
    (folder / "item_ids.json").write_text(DEEP)  # larger than 10 ids can be: refused before it is read
    tiny.reseal(folder)
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    _one_line(info.value, "item_ids.json", "larger than 15,372 bytes")


def test_deeply_nested_dataset_json(dataset: Path) -> None:
    (dataset / "dataset.json").write_text(DEEP)
    with pytest.raises(DatasetError) as info:
        load_dataset(dataset)
    _one_line(info.value, "dataset.json", "nested deeper")


@pytest.fixture
def saved_model(text_encoder: Any, user_encoder: SASRecUserEncoder, tmp_path: Path) -> Path:
    return PMMRec.assemble(text=text_encoder, user=user_encoder).save_pretrained(tmp_path / "model")


def test_deeply_nested_manifest(saved_model: Path) -> None:
    (saved_model / MANIFEST_FILE).write_text(DEEP)
    with pytest.raises(ArtefactError) as info:
        PMMRec.from_pretrained(saved_model)
    _one_line(info.value, "pmmrec.json", "nested deeper")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        # Bug: `"sha256": 5` gave a TypeError deep in the loader; the manifest had no schema.
        (lambda m: m["components"]["user"].update(sha256=5), "components.user.sha256"),
        (lambda m: m["components"]["user"].update(created="yes"), "components.user.created"),
        (lambda m: m.update(dim="32"), "dim"),
        (lambda m: m["components"]["user"]["files"].update({"../escape": "0" * 64}), "not a relative path"),
        (lambda m: m.update(surprise=1), "surprise"),
    ],
    ids=["sha256-number", "created-string", "dim-string", "path-escape", "unknown-key"],
)
def test_manifest_values_of_the_wrong_type(saved_model: Path, change: Callable[[dict[str, Any]], None], fragment: str) -> None:
    path = saved_model / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtefactError) as info:
        PMMRec.from_pretrained(saved_model)
    _one_line(info.value, "pmmrec.json", fragment)


@pytest.mark.parametrize(("field", "value"), [("dim", "32"), ("dim", 32.0), ("dropout", "0.1"), ("layers", True)])
def test_config_values_are_typed_strictly(
    user_encoder: SASRecUserEncoder, tmp_path: Path, field: str, value: Any
) -> None:
    # Bug: pydantic's lax mode turned "32" into 32; docs/artefacts.md says wrong types are refused.
    folder = user_encoder.save_pretrained(tmp_path / "user")
    document = json.loads((folder / "config.json").read_text())
    document["config"][field] = value
    (folder / "config.json").write_text(json.dumps(document))
    tiny.reseal(folder)
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    _one_line(info.value, "config.json", field)


def test_an_oversized_config_is_refused_before_parsing(user_encoder: SASRecUserEncoder, tmp_path: Path) -> None:
    folder = user_encoder.save_pretrained(tmp_path / "user")
    (folder / "config.json").write_text('{"pad": "' + "x" * (17 << 20) + '"}')
    tiny.reseal(folder)
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    _one_line(info.value, "config.json", "larger than")


def _checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoints" / "last"
    progress = {"epoch": 1, "step_in_epoch": 0, "global_step": 2, "best": 0.5, "best_epoch": 1, "stale_epochs": 0,
                "history": []}  # fmt: skip
    ckpt.save_checkpoint(folder, torch.nn.Linear(2, 2), {"rng": torch.zeros(1)}, progress)
    return folder


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(DEEP, "nested deeper"), ('{"epoch": "3"}', "epoch"), ('{"epoch": 1}', "step_in_epoch")],
    ids=["deep", "string-epoch", "missing-keys"],
)
def test_hostile_progress_json(tmp_path: Path, content: str, fragment: str) -> None:
    folder = _checkpoint(tmp_path)
    (folder / "progress.json").write_text(content)
    with pytest.raises(ArtefactError) as info:
        ckpt.load_checkpoint(folder, torch.nn.Linear(2, 2))
    _one_line(info.value, "progress.json", fragment)


# ---- FIFOs and other non-regular files ---------------------------------------------------------------------


def _returns_promptly(function: Callable[[], Any], fifo: Path) -> BaseException | None:
    """Run `function`; if it blocks on the FIFO, unblock it by opening the FIFO's other end, then fail."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            function()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)  # a failure detector only: the correct code returns at once
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY))  # the reader was waiting for a writer: give it one (and EOF)
        thread.join()
        pytest.fail(f"blocked on the FIFO {fifo}")
    return outcome[0]


@pytest.mark.parametrize("name", ["users.tsv", "items.tsv", "dataset.json"])
def test_a_fifo_in_a_dataset_is_refused_not_read_forever(dataset: Path, name: str) -> None:
    # Bug: a FIFO given as users.tsv hung `data check` and `finetune` forever.
    (dataset / name).unlink()
    os.mkfifo(dataset / name)
    error = _returns_promptly(lambda: load_dataset(dataset, verify_hashes=False), dataset / name)
    assert isinstance(error, DatasetError), error
    _one_line(error, name, "FIFO")


def test_data_check_on_a_fifo_is_one_line(dataset: Path) -> None:
    from typer.testing import CliRunner

    from pmmrec.cli import app

    (dataset / "users.tsv").unlink()
    os.mkfifo(dataset / "users.tsv")
    results: list[Any] = []
    _returns_promptly(lambda: results.append(CliRunner().invoke(app, ["data", "check", str(dataset)])), dataset / "users.tsv")
    assert results[0].exit_code == 1 and "is a FIFO" in results[0].output and "Traceback" not in results[0].output


def test_a_fifo_as_training_config_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "train.yaml"
    os.mkfifo(fifo)
    error = _returns_promptly(lambda: load_train_config(finetune_defaults(), fifo), fifo)
    assert isinstance(error, ConfigError), error
    _one_line(error, "train.yaml", "FIFO")


def test_a_fifo_as_config_json_is_refused(user_encoder: SASRecUserEncoder, tmp_path: Path) -> None:
    folder = user_encoder.save_pretrained(tmp_path / "user")
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    with pytest.warns(UserWarning, match="unverified"):  # the checksums would refuse it first: skip them
        error = _returns_promptly(lambda: load_component(str(folder), unverified=True), folder / "config.json")
    assert isinstance(error, ArtefactError), error
    _one_line(error, "config.json", "FIFO")


# ---- texts and lines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("character", ["\u0085", "\u0080", "\u009b", "\u2028", "\u2029", "\x1c", "\x0b"])
def test_line_separators_and_c1_controls_in_item_texts_are_refused(dataset: Path, character: str) -> None:
    # Bug: U+0085 (NEL) and the other C1 controls passed while U+2028 was refused; str.splitlines() and
    # many readers take them for line breaks. The server reuses validate_text for POST /items.
    (dataset / "items.tsv").write_text(f"a\tA\nb\tB{character}x\nc\tC\n", encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        load_dataset(dataset, verify_hashes=False)
    _one_line(info.value, "items.tsv line 2", "control character")
    with pytest.raises(DatasetError):
        validate_text(f"title{character}", "POST /items")


def test_a_line_over_64_mib_is_refused_with_its_number(dataset: Path) -> None:
    # Backs docs/robustness.md's claim about lines over 64 MiB (no test asserted it).
    with open(dataset / "items.tsv", "wb") as handle:
        handle.write(b"a\tA\nb\t")
        handle.write(b"x" * MAX_LINE_BYTES)
        handle.write(b"\nc\tC\n")
    with pytest.raises(DatasetError) as info:
        load_dataset(dataset, verify_hashes=False)
    _one_line(info.value, "items.tsv line 2", "longer than 67,108,864 bytes")

