"""Faults and hostile input: clear errors, nothing lost, nothing executed (docs/robustness.md lists the cases)."""

from __future__ import annotations

import errno
import http.server
import json
import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pmmrec.cli import app
from pmmrec.components import Component, SASRecUserEncoder
from pmmrec.components.base import read_config_document
from pmmrec.data import load_dataset, write_dataset
from pmmrec.errors import ArtefactError, ConfigError, DatasetError, PmmrecError, ReferenceResolutionError
from pmmrec.fileio import WriteError, atomic_directory
from pmmrec.references import parse_reference, resolve_reference
from pmmrec.training import run_dir as ckpt
from pmmrec.training.config import finetune_defaults, load_train_config

pytestmark = pytest.mark.robustness


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every rename into place fails as on a full disk (the last step of each atomic write)."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.setattr(os, "rename", refuse)
    yield


# ---- full disk --------------------------------------------------------------------------------------


def test_full_disk_while_overwriting_an_artefact_keeps_the_old_one(
    user_encoder: SASRecUserEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = user_encoder.save_pretrained(tmp_path / "user")
    before = _snapshot(folder)
    other = SASRecUserEncoder(user_encoder.config)

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(WriteError, match=r"could not write .*user: No space left on device"):
        other.save_pretrained(folder, overwrite=True)
    monkeypatch.undo()
    assert _snapshot(folder) == before
    assert _visible(tmp_path) == ["user"]
    Component.from_folder(folder)


def test_full_disk_while_writing_a_new_artefact_leaves_nothing(
    user_encoder: SASRecUserEncoder, tmp_path: Path, disk_full: None
) -> None:
    with pytest.raises(WriteError, match="nothing was changed"):
        user_encoder.save_pretrained(tmp_path / "user")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = torch.nn.Linear(3, 2)
    folder = tmp_path / "checkpoints" / "last"
    ckpt.save_checkpoint(folder, module, {"step": torch.tensor(1)}, {"epoch": 1})
    before = _snapshot(folder)
    with torch.no_grad():
        module.weight.add_(1.0)

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(WriteError, match="No space left on device"):
        ckpt.save_checkpoint(folder, module, {"step": torch.tensor(2)}, {"epoch": 2})
    monkeypatch.undo()
    assert _snapshot(folder) == before
    assert _visible(folder.parent) == ["last"]
    restored = torch.nn.Linear(3, 2)
    _, progress = ckpt.load_checkpoint(folder, restored)
    assert progress == {"epoch": 1}


def test_full_disk_while_writing_a_dataset(tmp_path: Path, disk_full: None) -> None:
    with pytest.raises(PmmrecError, match="No space left on device"):
        write_dataset(
            tmp_path / "data",
            name="d",
            item_ids=["a", "b"],
            item_texts=["A", "B"],
            user_ids=["u"],
            user_items=[["a", "b", "a"]],
            provenance={},
            preprocessing={},
        )
    assert _visible(tmp_path) == []


def test_full_disk_while_building_an_image_lmdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from pmmrec.data import build_image_lmdb

    (tmp_path / "items.tsv").write_text("a\tA\nb\tB\n", encoding="utf-8")
    (tmp_path / "img").mkdir()
    for item in "ab":
        Image.new("RGB", (40, 30), "red").save(tmp_path / "img" / f"{item}.png")

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises((PmmrecError, OSError), match="No space left on device"):
        build_image_lmdb(tmp_path / "items.tsv", tmp_path / "img", tmp_path / "images.lmdb", size=16)
    monkeypatch.undo()
    assert not (tmp_path / "images.lmdb").exists()


def test_cli_reports_a_full_disk_in_one_line(user_encoder: SASRecUserEncoder, tmp_path: Path, disk_full: None) -> None:
    result = CliRunner().invoke(app, ["init", "user", "--dim", "16", "--out", str(tmp_path / "u")])
    assert result.exit_code == 1
    assert "No space left on device" in result.output
    assert "Traceback" not in result.output


# ---- concurrent writers -----------------------------------------------------------------------------


def test_two_writers_of_one_folder_never_mix(tmp_path: Path) -> None:
    target = tmp_path / "out"
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def write(label: str) -> None:
        try:
            with atomic_directory(target) as staging:
                for index in range(20):
                    (staging / f"part{index}.txt").write_text(label)
                barrier.wait(timeout=10)
            outcomes.append(f"won:{label}")
        except PmmrecError:
            outcomes.append(f"refused:{label}")

    threads = [threading.Thread(target=write, args=(label,)) for label in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.split(":")[0] for o in outcomes) == ["refused", "won"]
    winner = next(o for o in outcomes if o.startswith("won")).split(":")[1]
    assert {p.read_text() for p in target.iterdir()} == {winner}
    assert _visible(tmp_path) == ["out"]


# ---- hostile component folders ------------------------------------------------------------------------


@pytest.fixture
def saved_user(user_encoder: SASRecUserEncoder, tmp_path: Path) -> Path:
    return user_encoder.save_pretrained(tmp_path / "user")


def test_truncated_weights_are_refused(saved_user: Path) -> None:
    weights = saved_user / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ArtefactError, match=r"model\.safetensors: not a readable safetensors file"):
        Component.from_folder(saved_user)


def test_bit_flip_in_tensor_data_is_detected(saved_user: Path) -> None:
    weights = saved_user / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="does not match its checksum"):
        Component.from_folder(saved_user)


def test_a_pickle_where_safetensors_is_expected_is_never_unpickled(saved_user: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    (saved_user / "model.safetensors").write_bytes(pickle.dumps({"weight": Payload()}))
    with pytest.raises(ArtefactError, match="not a readable safetensors file"):
        Component.from_folder(saved_user)
    torch.save({"x": torch.zeros(1)}, saved_user / "model.safetensors")
    with pytest.raises(ArtefactError, match="not a readable safetensors file"):
        Component.from_folder(saved_user)
    assert not marker.exists()


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    document = json.loads(path.read_text())
    document["config"].update(changes)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"dim": 10**9}, "dim"),
        ({"layers": 10**6}, "layers"),
        ({"max_length": 10**9}, "max_length"),
        ({"dim": "wide"}, "dim"),
        ({"dropout": [0.1]}, "dropout"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_config_values_are_refused_before_any_allocation(
    saved_user: Path, changes: dict[str, Any], fragment: str
) -> None:
    _edit_config(saved_user, **changes)
    started = time.perf_counter()
    with pytest.raises(ArtefactError) as info:
        Component.from_folder(saved_user)
    assert time.perf_counter() - started < 5
    assert "config.json" in str(info.value) and fragment in str(info.value)


def test_a_type_name_of_another_component_is_refused(saved_user: Path) -> None:
    path = saved_user / "config.json"
    document = json.loads(path.read_text())
    document["pmmrec_type"] = "fusion/merge_attention"
    path.write_text(json.dumps(document))
    with pytest.raises(ArtefactError, match=r"config\.json"):
        Component.from_folder(saved_user)
    document["pmmrec_type"] = "user_encoder/sasrec"
    document["format_version"] = 99
    path.write_text(json.dumps(document))
    with pytest.raises(ArtefactError, match="format_version 99 is newer"):
        Component.from_folder(saved_user)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
        max_leaves=20,
    )
)
def test_config_documents_fuzzed(tmp_path_factory: pytest.TempPathFactory, payload: Any) -> None:
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "config.json").write_text(json.dumps(payload))
    try:
        type_name, fields = read_config_document(folder)
    except ArtefactError:
        return
    assert isinstance(type_name, str) and isinstance(fields, dict)


# ---- references ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "hub:../../etc/passwd",
        "hub:org/../../secret",
        "hub:org/name; rm -rf /",
        "hub:org/$(whoami)",
        "hub:org/name@",
        "hub:org/name@../main",
        "hf://org/name@`id`",
        "hub:",
        "",
        "hub:org/na\x00me",
    ],
)
def test_hostile_references_are_refused(text: str) -> None:
    with pytest.raises(ReferenceResolutionError):
        resolve_reference(text)


def test_a_file_is_not_a_component_folder(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ReferenceResolutionError, match="is a file, not a component folder"):
        resolve_reference(str(tmp_path / "weights.bin"))


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60))
def test_reference_parser_fuzzed(text: str) -> None:
    try:
        reference = parse_reference(text)
    except ReferenceResolutionError:
        return
    if reference.repo_id is not None:
        assert ".." not in reference.repo_id and reference.repo_id.count("/") == 1


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """A loopback stand-in for the Hub API answering as the real one does for a missing revision or repo."""

    def do_GET(self) -> None:
        code = "RepoNotFound" if "missing-repo" in self.path else "RevisionNotFound"
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", f"{code} (fake hub)")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"error": code}).encode())

    do_HEAD = do_GET

    def log_message(self, *_args: Any) -> None:
        pass


def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: switch both the variable and its constant."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    _online(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    yield endpoint
    server.shutdown()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("hub:org/model@no-such-tag", "the revision does not exist"), ("hub:org/missing-repo@v1", "not found")],
)
def test_missing_revision_or_repo_fails_fast_and_clearly(fake_hub: str, text: str, fragment: str) -> None:
    started = time.perf_counter()
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference(text)
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert text in message and "online" in message and fragment in message


def test_unreachable_hub_fails_within_seconds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _online(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    started = time.perf_counter()
    with pytest.raises(ReferenceResolutionError, match=r"revision 'v2', online: the Hub could not be reached"):
        resolve_reference("hub:org/model@v2")
    assert time.perf_counter() - started < 10


# ---- datasets -----------------------------------------------------------------------------------------


def _dataset_files(root: Path, users: bytes, items: bytes) -> Path:
    write_dataset(
        root,
        name="d",
        item_ids=["a", "b", "c"],
        item_texts=["A", "B", "C"],
        user_ids=["u"],
        user_items=[["a", "b", "c"]],
        provenance={},
        preprocessing={},
    )
    (root / "users.tsv").write_bytes(users)
    (root / "items.tsv").write_bytes(items)
    return root


@pytest.mark.parametrize(
    ("users", "items", "fragment"),
    [
        (b"u\ta b c\n", b"a\tA\nb\tB\nc\t" + b"x" * 5_000_000 + b"\n", "items.tsv line 3: item text is longer"),
        (b"u\ta b\x00 c\n", b"a\tA\nb\tB\nc\tC\n", "users.tsv line 1"),
        (b"u\ta b c\n", b"a\tA\nb\t\xff\xfe\nc\tC\n", "items.tsv line 2"),
        (b"", b"a\tA\nb\tB\nc\tC\n", "users.tsv"),
        (b"u\ta b c\n", b"", "items.tsv"),
    ],
)
def test_hostile_dataset_files_name_file_and_line(tmp_path: Path, users: bytes, items: bytes, fragment: str) -> None:
    root = _dataset_files(tmp_path / "d", users, items)
    with pytest.raises(DatasetError) as info:
        load_dataset(root, verify_hashes=False)
    assert fragment in str(info.value)


def test_windows_line_endings_one_item_and_single_interaction_users(tmp_path: Path) -> None:
    root = write_dataset(
        tmp_path / "tiny",
        name="tiny",
        item_ids=["only"],
        item_texts=["The only item"],
        user_ids=["u1", "u2"],
        user_items=[["only"], ["only", "only", "only"]],
        provenance={},
        preprocessing={},
    )
    (root / "users.tsv").write_bytes(b"u1\tonly\r\nu2\tonly only only\r\n")
    dataset = load_dataset(root, verify_hashes=False)
    assert dataset.num_items == 1 and [len(s) for s in dataset.sequences] == [1, 3]
    from pmmrec.data import leave_one_out

    split = leave_one_out(dataset.sequences)
    assert split.num_users == 1  # the single-interaction user is dropped by the minimum length


# ---- configs ------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_training_config_files_fuzzed(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("yaml") / "train.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_train_config(finetune_defaults(), path)
    except ConfigError as exc:
        assert str(path) in str(exc)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.dictionaries(
        st.sampled_from(["epochs", "lr", "batch_size", "freeze", "objectives", "precision", "bogus", "ks"]),
        st.none()
        | st.integers(-5, 10**12)
        | st.floats(allow_nan=True)
        | st.text(max_size=8)
        | st.lists(st.text(max_size=5), max_size=3),
        max_size=4,
    )
)
def test_training_config_values_fuzzed(tmp_path_factory: pytest.TempPathFactory, payload: dict[str, Any]) -> None:
    path = tmp_path_factory.mktemp("yaml") / "train.yaml"
    path.write_text(yaml.safe_dump(payload), encoding="utf-8")
    try:
        config = load_train_config(finetune_defaults(), path)
    except ConfigError as exc:
        assert str(path) in str(exc)
        return
    assert config.epoch_limit >= 1 and (config.lr is None or config.lr > 0)  # None: until patience / by component


# ---- the command line ---------------------------------------------------------------------------------


def _commands() -> list[list[str]]:
    import typer

    group = typer.main.get_command(app)
    paths = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        paths += [[name, child] for child in sub] if sub else [[name]]
    return paths


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c))
def test_every_command_rejects_an_unknown_option_with_usage(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--no-such-option"])
    assert result.exit_code == 2
    assert "Usage:" in result.output and "No such option" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["finetune"],
        ["pretrain", "--data", "x"],
        ["evaluate", "--data", "x"],
        ["recommend", "--model", "m"],
        ["assemble"],
        ["push", "folder"],
        ["init"],
        ["data", "movielens"],
        ["data", "check"],
        ["finetune", "--data", "d", "--out", "o", "--epochs", "many"],
    ],
)
def test_missing_or_malformed_options_print_usage(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "Usage:" in result.output and "Traceback" not in result.output


def test_bad_values_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["evaluate", "--model", str(tmp_path / "nope"), "--data", str(tmp_path)], "no such folder"),
        (["finetune", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "run"), "--epochs", "0"], "epochs"),
        (["inspect", "hub:../etc"], "not a valid repo id"),
    ]
    for args, fragment in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert fragment in result.output and "Traceback" not in result.output


def test_a_second_training_process_on_one_run_folder_is_refused(tmp_path: Path) -> None:
    from pmmrec.training.run_dir import lock_run_dir

    first = lock_run_dir(tmp_path)
    try:
        with pytest.raises(ConfigError, match="being written by another pmmrec process"):
            lock_run_dir(tmp_path)
    finally:
        first.close()
    lock_run_dir(tmp_path).close()  # released with its holder: no stale lock
