"""Every file of every component is hashed: in the folder's checksums.json and in an assembled model's manifest.

Guards against (issue 13, item 4): an edited config.json (heads 2 -> 4) or item_ids.json loading silently, the
manifest pinning only the weights, a weights file whose header checksum key was renamed loading as intact, and
folders without checksums loading without a word.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pmmrec.components import (
    CLIPVisionEncoder,
    Component,
    HFTextEncoder,
    IdItemTower,
    SASRecUserEncoder,
    load_component,
)
from pmmrec.errors import ArtefactError
from pmmrec.integrity import CHECKSUMS_FILE, UNVERIFIED_ENV
from pmmrec.model import MANIFEST_FILE, PMMRec

pytestmark = pytest.mark.robustness


def _edit_json(path: Path, change: Any) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _without_checksums(folder: Path) -> Path:
    """What pmmrec wrote before it kept checksums: no checksums.json (everything else is the same)."""
    (folder / CHECKSUMS_FILE).unlink()
    return folder


@pytest.fixture
def saved_user(user_encoder: SASRecUserEncoder, tmp_path: Path) -> Path:
    return user_encoder.save_pretrained(tmp_path / "user")


def test_every_file_but_the_card_is_listed(text_encoder: HFTextEncoder, tmp_path: Path) -> None:
    folder = text_encoder.save_pretrained(tmp_path / "text")
    listed = json.loads((folder / CHECKSUMS_FILE).read_text())["files"]
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {"README.md", CHECKSUMS_FILE}
    assert {"config.json", "model.safetensors", "tokenizer/tokenizer.json"} <= set(listed)


def test_an_edited_config_is_refused(saved_user: Path) -> None:
    _edit_json(saved_user / "config.json", lambda d: d["config"].update(heads=4))  # still a valid config
    with pytest.raises(ArtefactError, match=r"config\.json: sha256 .* does not match checksums\.json"):
        load_component(str(saved_user))


def test_an_edited_catalogue_is_refused(id_tower: IdItemTower, tmp_path: Path) -> None:
    folder = id_tower.save_pretrained(tmp_path / "ids")
    ids = json.loads((folder / "item_ids.json").read_text())
    (folder / "item_ids.json").write_text(json.dumps(list(reversed(ids))))  # same ids, another order
    with pytest.raises(ArtefactError, match=r"item_ids\.json: sha256"):
        load_component(str(folder))


def test_an_added_or_removed_file_is_refused(clip_encoder: CLIPVisionEncoder, tmp_path: Path) -> None:
    folder = clip_encoder.save_pretrained(tmp_path / "clip")
    (folder / "extra.json").write_text("{}")
    with pytest.raises(ArtefactError, match=r"extra\.json: not listed in checksums\.json"):
        load_component(str(folder))
    (folder / "extra.json").unlink()
    (folder / "preprocessing.json").unlink()
    with pytest.raises(ArtefactError, match=r"preprocessing\.json: missing \(listed in checksums\.json\)"):
        load_component(str(folder))


def test_the_card_and_hidden_hub_files_are_not_checked(saved_user: Path) -> None:
    # The Hub lets owners edit the card and adds .gitattributes; neither is read when loading.
    (saved_user / "README.md").write_text("# edited on the Hub\n")
    (saved_user / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    load_component(str(saved_user))


def test_a_fifo_inside_a_component_is_refused(saved_user: Path) -> None:
    os.mkfifo(saved_user / "pipe")
    with pytest.raises(ArtefactError, match="pipe: not a regular file"):
        load_component(str(saved_user))


def test_a_renamed_header_checksum_key_does_not_pass_as_intact(saved_user: Path) -> None:
    # The attack of the issue: rename the checksum key, flip a data bit, rewrite checksums.json.
    path = saved_user / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    flat = tensors[name].view(-1)
    flat[0] = -flat[0] if flat[0] != 0 else 1.0
    metadata["pmmrec_tensors_sha256_renamed"] = metadata.pop("pmmrec_tensors_sha256")
    save_file(tensors, str(path), metadata=metadata)
    from pmmrec.integrity import write_checksums

    write_checksums(saved_user)
    with pytest.raises(ArtefactError, match="header metadata lacks pmmrec_tensors_sha256"):
        load_component(str(saved_user))


def test_a_folder_without_checksums_needs_an_explicit_unverified_load(
    saved_user: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _without_checksums(saved_user)
    with pytest.raises(ArtefactError, match=r"checksums\.json: missing, .* unverified=True"):
        load_component(str(saved_user))
    with pytest.warns(UserWarning, match="loaded without verifying"):
        component = load_component(str(saved_user), unverified=True)
    resaved = component.save_pretrained(tmp_path / "resaved")  # saving again adds the checksums
    load_component(str(resaved))
    monkeypatch.setenv(UNVERIFIED_ENV, "1")  # the command line's way to say the same, reported in one line
    Component.from_folder(saved_user)
    assert capsys.readouterr().err == f"warning: {saved_user}: loaded without verifying its files ({UNVERIFIED_ENV}=1)\n"


def test_the_command_line_refuses_and_accepts_a_folder_without_checksums(saved_user: Path) -> None:
    from typer.testing import CliRunner

    from pmmrec.cli import app

    _without_checksums(saved_user)
    refused = CliRunner().invoke(app, ["inspect", str(saved_user)])
    assert refused.exit_code == 1 and "checksums.json: missing" in refused.output
    assert UNVERIFIED_ENV in refused.output and "Traceback" not in refused.output
    accepted = CliRunner().invoke(app, ["inspect", str(saved_user)], env={UNVERIFIED_ENV: "1"})
    assert accepted.exit_code == 0, accepted.output
    assert f"warning: {saved_user}: loaded without verifying its files" in accepted.output


# ---- assembled models -------------------------------------------------------------------------------------


@pytest.fixture
def saved_model(text_encoder: HFTextEncoder, user_encoder: SASRecUserEncoder, tmp_path: Path) -> Path:
    return PMMRec.assemble(text=text_encoder, user=user_encoder).save_pretrained(tmp_path / "model")


def test_the_manifest_pins_every_file_of_every_component(saved_model: Path) -> None:
    manifest = json.loads((saved_model / MANIFEST_FILE).read_text())
    for slot, entry in manifest["components"].items():
        on_disk = {p.relative_to(saved_model / slot).as_posix() for p in (saved_model / slot).rglob("*") if p.is_file()}
        assert set(entry["files"]) == on_disk - {"README.md"}
        assert entry["files"]["model.safetensors"] == entry["sha256"]


def test_an_edited_config_in_a_model_is_refused_even_with_fresh_checksums(saved_model: Path) -> None:
    # Bug: the manifest pinned only the weights; config.json heads 2 -> 4 loaded silently.
    _edit_json(saved_model / "user" / "config.json", lambda d: d["config"].update(heads=4))
    from pmmrec.integrity import write_checksums

    write_checksums(saved_model / "user")  # the component's own list agrees; the manifest does not
    with pytest.raises(ArtefactError, match=r"user/config\.json: sha256 .* does not match pmmrec\.json"):
        PMMRec.from_pretrained(saved_model)


def test_a_tokenizer_file_edited_in_a_model_is_refused(saved_model: Path) -> None:
    _edit_json(saved_model / "text" / "tokenizer" / "tokenizer_config.json", lambda d: d.update(model_max_length=3))
    with pytest.raises(ArtefactError, match=r"tokenizer_config\.json: sha256"):
        PMMRec.from_pretrained(saved_model)


def test_a_model_without_file_checksums_loads_only_unverified(saved_model: Path, tmp_path: Path) -> None:
    def drop_files(manifest: dict[str, Any]) -> None:
        for entry in manifest["components"].values():
            entry.pop("files")

    _edit_json(saved_model / MANIFEST_FILE, drop_files)
    for slot in ("text", "fusion", "user"):
        _without_checksums(saved_model / slot)
    with pytest.raises(ArtefactError, match="pins only the weights"):
        PMMRec.from_pretrained(saved_model)
    with pytest.warns(UserWarning):
        model = PMMRec.from_pretrained(saved_model, unverified=True)
    assert sorted(model.components()) == ["fusion", "text", "user"]
    PMMRec.from_pretrained(model.save_pretrained(tmp_path / "model-v2"))  # saving again pins every file


def test_a_manifest_whose_hashes_disagree_is_refused(saved_model: Path) -> None:
    _edit_json(saved_model / MANIFEST_FILE, lambda m: m["components"]["user"].update(sha256="0" * 64))
    with pytest.raises(ArtefactError, match=r"sha256 and files\['model\.safetensors'\] disagree"):
        PMMRec.from_pretrained(saved_model)


def test_a_published_folder_loads_through_the_hub_cache_symlinks(saved_user: Path, publish: Any) -> None:
    publish(saved_user, "acme/user", tag="v1")
    component = load_component("hub:acme/user@v1")
    assert isinstance(component, SASRecUserEncoder)
    assert torch.equal(component.state_dict()["positions.weight"], load_component(str(saved_user)).state_dict()["positions.weight"])
