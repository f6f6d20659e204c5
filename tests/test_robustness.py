"""Faults and hostile input: clear errors, nothing lost, nothing executed (docs/robustness.md lists the cases)."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiny
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import FakeHub
from typer.testing import CliRunner

from pmmrec.cli import app
from pmmrec.components import Component, SASRecUserEncoder
from pmmrec.components.base import read_config_document
from pmmrec.data import load_dataset, write_dataset
from pmmrec.errors import ArtefactError, ConfigError, DatasetError, PmmrecError, ReferenceResolutionError
from pmmrec.fileio import WriteError, atomic_directory
from pmmrec.references import Reference, format_hub_reference, parse_reference, resolve_reference
from pmmrec.training import run_dir as ckpt
from pmmrec.training.config import finetune_defaults
from pmmrec.training.config_loading import load_train_config

pytestmark = pytest.mark.robustness


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _progress(epoch: int) -> dict[str, Any]:
    """A complete progress.json (load_checkpoint validates it)."""
    return {"epoch": epoch, "step_in_epoch": 0, "global_step": 4 * epoch, "best": 0.5, "best_epoch": 1,
            "stale_epochs": 0, "history": []}  # fmt: skip


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
    monkeypatch.setattr(os, "rename", refuse)
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
    ckpt.save_checkpoint(folder, module, {"step": torch.tensor(1)}, _progress(1))
    before = _snapshot(folder)
    with torch.no_grad():
        module.weight.add_(1.0)

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.setattr(os, "rename", refuse)
    with pytest.raises(WriteError, match="No space left on device"):
        ckpt.save_checkpoint(folder, module, {"step": torch.tensor(2)}, _progress(2))
    monkeypatch.undo()
    assert _snapshot(folder) == before
    assert _visible(folder.parent) == ["last"]
    restored = torch.nn.Linear(3, 2)
    _, progress = ckpt.load_checkpoint(folder, restored)
    assert progress == _progress(1)


def test_full_disk_while_writing_a_dataset(tmp_path: Path, disk_full: None) -> None:
    with pytest.raises(PmmrecError, match=r"could not write .*data: .*No space left on device"):
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
    # Guards against a raw OSError (a traceback at the CLI) instead of the documented one-line error.
    with pytest.raises(DatasetError, match=r"could not write .*images\.lmdb: No space left on device; nothing was changed"):
        build_image_lmdb(tmp_path / "items.tsv", tmp_path / "img", tmp_path / "images.lmdb", size=16)
    monkeypatch.undo()
    assert not (tmp_path / "images.lmdb").exists()


def test_cli_reports_a_full_disk_in_one_line(user_encoder: SASRecUserEncoder, tmp_path: Path, disk_full: None) -> None:
    result = CliRunner().invoke(app, ["init", "user", "--dim", "16", "--out", str(tmp_path / "u")])
    assert_one_line_error(result, "could not write", "No space left on device")


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
    tiny.reseal(saved_user)  # the safetensors parser is under test (the folder's checksums catch it first)
    with pytest.raises(ArtefactError, match=r"model\.safetensors: not a readable safetensors file"):
        Component.from_folder(saved_user)


def test_bit_flip_in_tensor_data_is_detected(saved_user: Path) -> None:
    weights = saved_user / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=r"does not match checksums\.json"):  # the folder's checksums ...
        Component.from_folder(saved_user)
    tiny.reseal(saved_user)
    with pytest.raises(ArtefactError, match="does not match its checksum"):  # ... and the header's, beneath them
        Component.from_folder(saved_user)


def test_a_pickle_where_safetensors_is_expected_is_never_unpickled(saved_user: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    (saved_user / "model.safetensors").write_bytes(pickle.dumps({"weight": Payload()}))
    tiny.reseal(saved_user)  # a hostile author ships consistent checksums
    with pytest.raises(ArtefactError, match="not a readable safetensors file"):
        Component.from_folder(saved_user)
    torch.save({"x": torch.zeros(1)}, saved_user / "model.safetensors")
    tiny.reseal(saved_user)
    with pytest.raises(ArtefactError, match="not a readable safetensors file"):
        Component.from_folder(saved_user)
    assert not marker.exists()


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    document = json.loads(path.read_text())
    document["config"].update(changes)
    path.write_text(json.dumps(document))
    tiny.reseal(folder)  # the config schema is under test, not the checksums


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
    saved_user: Path, changes: dict[str, Any], fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards against building the module (allocating its tensors) before the config is validated: building is
    made to fail here, so only a refusal that comes first passes."""
    _edit_config(saved_user, **changes)
    forbid_allocation(monkeypatch)
    with pytest.raises(ArtefactError) as info:
        Component.from_folder(saved_user)
    assert "config.json" in str(info.value) and fragment in str(info.value)


class AllocationAttempted(AssertionError):
    """Raised where a module or a tensor would be allocated while allocation is forbidden."""


def forbid_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every nn.Module construction and every torch.empty/zeros/ones/randn/rand/full call fails from now on."""

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AllocationAttempted("something was allocated")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    for name in ("empty", "zeros", "ones", "randn", "rand", "full"):
        monkeypatch.setattr(torch, name, refuse)


def test_forbidding_allocation_really_stops_a_valid_load(saved_user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control of the test above: with a valid config, loading does reach allocation (and fails there)."""
    forbid_allocation(monkeypatch)
    with pytest.raises(AllocationAttempted):
        Component.from_folder(saved_user)


def test_a_type_name_of_another_component_is_refused(saved_user: Path) -> None:
    path = saved_user / "config.json"
    document = json.loads(path.read_text())
    document["pmmrec_type"] = "fusion/merge_attention"
    path.write_text(json.dumps(document))
    tiny.reseal(saved_user)
    with pytest.raises(ArtefactError, match=r"config\.json"):
        Component.from_folder(saved_user)
    document["pmmrec_type"] = "user_encoder/sasrec"
    document["format_version"] = 99
    path.write_text(json.dumps(document))
    tiny.reseal(saved_user)
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


_HOSTILE_VALUES = (
    st.integers(-(10**12), 10**12)
    | st.sampled_from([0, -1, 1, 2, 3, 4, 8, 32, 10**9, 2**63])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
    | st.text(max_size=6)
    | st.lists(st.integers(-3, 3), max_size=3)
    | st.dictionaries(st.sampled_from(["hidden_size", "num_hidden_layers", "vocab_size", "model_type", "x"]),
                      st.integers(-5, 10**9) | st.text(max_size=6), max_size=4)
)  # fmt: skip


def _all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_all_finite(child) for child in value.values())
    if isinstance(value, list):
        return all(_all_finite(child) for child in value)
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_valid_envelopes_with_hostile_contents_are_refused_or_validated_before_building(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Guards against hostile config values that reach a constructor unvalidated, or fail with another error than
    an ArtefactError naming config.json: every document here is a valid envelope of a registered type (so the
    envelope checks pass) holding real field names with hostile values, and sometimes an unknown field."""
    from pmmrec.components import registered_types
    from pmmrec.components.base import CONFIG_FILE

    types = registered_types()
    type_name = data.draw(st.sampled_from(sorted(types)), label="type")
    config_class = types[type_name].config_class
    fields = sorted(config_class.model_fields)
    config = data.draw(st.dictionaries(st.sampled_from(fields), _HOSTILE_VALUES, min_size=1, max_size=len(fields)))
    if data.draw(st.booleans(), label="unknown field"):
        config["surprise"] = 1
    folder = tmp_path_factory.mktemp("envelope")
    document = {"pmmrec_type": type_name, "format_version": 1, "pmmrec_version": "0.1.0", "config": config}
    (folder / CONFIG_FILE).write_text(json.dumps(document))
    tiny.reseal(folder)  # consistent checksums, as a hostile author would ship: the config itself is on trial
    if not _all_finite(config):  # NaN and Infinity are not JSON: refused by the one reader
        with pytest.raises(ArtefactError, match=r"config\.json: invalid JSON \((NaN|-?Infinity) is not JSON"):
            read_config_document(folder)
        return
    parsed_type, parsed_config = read_config_document(folder)  # the envelope itself is valid
    assert parsed_type == type_name and json.dumps(parsed_config) == json.dumps(config)
    built: list[Any] = []

    def record(cls: Any, validated: Any, _folder: Path) -> Any:
        built.append(validated)
        raise AllocationAttempted("build_for_loading")

    with pytest.MonkeyPatch.context() as patch:
        for cls in types.values():
            patch.setattr(cls, "build_for_loading", classmethod(record))
        try:
            Component.from_folder(folder)
        except ArtefactError as exc:
            message = str(exc)
            assert str(folder / CONFIG_FILE) in message and "\n" not in message
            assert not built
            return
        except AllocationAttempted:
            pass
    (validated,) = built  # only a config that passed validation is ever built
    assert isinstance(validated, config_class) and "surprise" not in config


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


_PIECES = st.sampled_from(["a", "Z", "0", "9", ".", "..", "_", "-", "/", "@", ":", "~", " ", "$(x)", "`", ";", "\x00", "\n", "é", "models/"])
_WELL_FORMED = st.from_regex(
    r"\A(hub:|hf://|hf://models/)[A-Za-z0-9][A-Za-z0-9._-]{0,8}/[A-Za-z0-9][A-Za-z0-9._-]{0,8}(@[A-Za-z0-9._/-]{1,8})?\Z"
)
_HUB_TEXTS = _WELL_FORMED | st.builds(
    lambda prefix, pieces: prefix + "".join(pieces), st.sampled_from(["hub:", "hf://", "hf://models/"]), st.lists(_PIECES, max_size=12)
)


def test_reference_parser_fuzzed() -> None:
    """Guards against a hub reference whose repo id or revision escapes ORG/NAME (traversal, a second slash,
    shell characters): every generated text starts with `hub:` or `hf://`, and both branches of the check run."""
    outcomes = {"parsed": 0, "refused": 0}

    @settings(max_examples=400, deadline=None, database=None)
    @given(text=_HUB_TEXTS)
    def check(text: str) -> None:
        assert text.startswith(("hub:", "hf://"))
        try:
            reference = parse_reference(text)
        except ReferenceResolutionError as exc:
            outcomes["refused"] += 1
            assert repr(text) in str(exc) or "NUL" in str(exc)
            return
        outcomes["parsed"] += 1
        repo_id = reference.repo_id
        assert repo_id is not None and reference.is_hub
        assert repo_id.count("/") == 1 and ".." not in repo_id
        assert all(c.isascii() and (c.isalnum() or c in "._-/") for c in repo_id)
        if reference.revision is not None:
            assert ".." not in reference.revision and all(c.isascii() and (c.isalnum() or c in "._-/") for c in reference.revision)
        assert not repo_id.startswith("models/")  # the Hub's type prefix, never an org (round trips would break)
        assert parse_reference(format_hub_reference(repo_id, reference.revision)) == Reference(
            text=format_hub_reference(repo_id, reference.revision), repo_id=repo_id, revision=reference.revision
        )

    check()
    assert outcomes["parsed"] >= 50 and outcomes["refused"] >= 50, outcomes  # the property really ran


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("hub:org/model@no-such-tag", "the revision does not exist"), ("hub:org/missing-repo@v1", "not found")],
)
def test_missing_revision_or_repo_fails_fast_and_clearly(fake_hub: FakeHub, text: str, fragment: str) -> None:
    fake_hub.online()
    started = time.perf_counter()
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference(text)
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert text in message and "online" in message and fragment in message


def test_unreachable_hub_fails_within_seconds(fake_hub: FakeHub) -> None:
    fake_hub.unreachable()  # a port held by the test and never listened on, not a fixed one
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


def test_a_line_over_64_mib_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    """Guards against reading an unbounded line into memory: a users.tsv line just over the 64 MiB limit."""
    from pmmrec.data.dataset import MAX_LINE_BYTES

    line = b"u2\t" + b"a " * (MAX_LINE_BYTES // 2 + 1) + b"\n"
    root = _dataset_files(tmp_path / "d", b"u\ta b c\n" + line, b"a\tA\nb\tB\nc\tC\n")
    with pytest.raises(DatasetError, match=f"users.tsv line 2: longer than {MAX_LINE_BYTES:,} bytes"):
        load_dataset(root, verify_hashes=False)


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
    import click
    import typer

    group = typer.main.get_command(app)
    context = click.Context(group)
    paths = []
    for name in group.list_commands(context):  # type: ignore[attr-defined]
        command = group.get_command(context, name)  # type: ignore[attr-defined]
        sub = command.list_commands(context) if isinstance(command, click.Group) else []
        paths += [[name, child] for child in sub] if sub else [[name]]
    assert len(paths) > 10, paths  # every command of the table, subcommands of `data` included
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


def test_contradicting_or_missing_choices_are_one_line_with_status_2() -> None:
    # `evaluate` needs exactly one of --model and --baseline: a UsageError, reported in one line with click's status
    result = CliRunner().invoke(app, ["evaluate", "--data", "x"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: give exactly one of --model and --baseline"]


def test_bad_values_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [
        (["evaluate", "--model", str(tmp_path / "nope"), "--data", str(tmp_path)], "no such model folder"),
        (["finetune", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "0"], "epochs"),
        (["inspect", "hub:../etc"], "not a valid repo id"),
    ]
    for args, fragment in cases:
        assert_one_line_error(runner.invoke(app, args), fragment)


def assert_one_line_error(result: Any, *fragments: str) -> None:
    """Exit status 1 and exactly one line of output, `error: ...`, holding every fragment (no traceback)."""
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert all(fragment in lines[0] for fragment in fragments), (fragments, lines[0])


def test_pmmrec_debug_shows_the_traceback(tmp_path: Path) -> None:
    # docs/robustness.md: errors are one line, and PMMREC_DEBUG=1 shows the traceback instead.
    args = ["evaluate", "--model", str(tmp_path / "nope"), "--data", str(tmp_path)]
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 1 and plain.output.count("\n") == 1 and plain.output.startswith("error: ")
    debug = CliRunner().invoke(app, args, env={"PMMREC_DEBUG": "1"})
    assert isinstance(debug.exception, PmmrecError) and debug.exit_code == 1


def test_a_second_training_process_on_one_run_folder_is_refused(tmp_path: Path) -> None:
    from pmmrec.training.run_dir import lock_run_dir

    first = lock_run_dir(tmp_path)
    try:
        with pytest.raises(ConfigError, match="being written by another pmmrec process"):
            lock_run_dir(tmp_path)
    finally:
        first.close()
    lock_run_dir(tmp_path).close()  # released with its holder: no stale lock
