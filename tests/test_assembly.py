"""Assembly of the paper's transfer combinations, the manifest (lockfile), reloading, and refused combinations."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tiny
import torch
import yaml

from pmmrec import api
from pmmrec.cards import TrainingFacts
from pmmrec.components import Component, HFTextEncoder, SASRecUserEncoder
from pmmrec.errors import ArtefactError, AssemblyError, PmmrecError, ReferenceResolutionError
from pmmrec.fileio import sha256_file
from pmmrec.model import MANIFEST_FILE, PMMRec

pytestmark = pytest.mark.usefixtures("single_thread", "no_fsync")

COMMIT = re.compile(r"^[0-9a-f]{40}$")
N_ITEMS = 3


@pytest.fixture(scope="module")
def originals(
    _session_text_encoder: HFTextEncoder,
    _session_clip_encoder: Component,
    _session_fusion: Component,
    _session_user_encoder: SASRecUserEncoder,
) -> dict[str, Component]:
    """The tiny parts by slot (shared: tests only read them)."""
    return {
        "text": _session_text_encoder,
        "vision": _session_clip_encoder,
        "fusion": _session_fusion,
        "user": _session_user_encoder,
    }


@pytest.fixture(scope="module")
def parts(originals: dict[str, Component], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four tiny components saved once as folders (tests only read them)."""
    root = tmp_path_factory.mktemp("parts")
    return {slot: component.save_pretrained(root / slot) for slot, component in originals.items()}


@pytest.fixture
def hub_parts(parts: dict[str, Path], publish: Callable[..., str]) -> dict[str, tuple[str, str]]:
    """The four parts published to the offline cache as acme/<slot>-tiny with tag v1: slot -> (reference, commit)."""
    published = {}
    for slot, folder in parts.items():
        commit = publish(folder, f"acme/{slot}-tiny", tag="v1")
        published[slot] = (f"hub:acme/{slot}-tiny@v1", commit)
    return published


def item_inputs() -> dict[str, torch.Tensor]:
    """Text and image inputs for three items (text padding included)."""
    text = tiny.golden_inputs("text_bert")
    gen = torch.Generator().manual_seed(5)
    side = tiny.CLIP_IMAGE_SIZE
    pixels = torch.randint(0, 256, (N_ITEMS, 3, side, side), generator=gen).to(torch.uint8)
    return {"text_ids": text["input_ids"], "text_mask": text["attention_mask"], "pixel_values": pixels}


def model_outputs(model: PMMRec) -> tuple[torch.Tensor, torch.Tensor]:
    """(item embeddings [3, d], user states [1, 3, d]) in eval mode."""
    model.eval()
    with torch.no_grad():
        items = model.embed_items(**item_inputs()).embeddings
        users = model.encode_users(items.unsqueeze(0), torch.ones(1, N_ITEMS, dtype=torch.bool))
    return items, users


# slot -> where it comes from: "dir" (a folder), "hub" (hub:acme/<slot>-tiny@v1)
COMBINATIONS = [
    pytest.param({"text": "hub", "vision": "hub", "fusion": "hub", "user": "hub"}, {}, id="full-from-hub"),
    pytest.param({"text": "dir", "user": "dir"}, {"fusion": "fusion/text_only"}, id="text+user"),
    pytest.param({"vision": "dir", "user": "dir"}, {"fusion": "fusion/vision_only"}, id="vision+user"),
    pytest.param({"text": "dir", "vision": "dir", "fusion": "dir", "user": "dir"}, {}, id="text+vision+fusion+user"),
    pytest.param(
        {"text": "hub", "vision": "dir"},
        {"fusion": "fusion/merge_attention", "user": "user_encoder/sasrec"},
        id="text+vision-only",
    ),
]


@pytest.mark.parametrize(("sources", "created"), COMBINATIONS)
def test_transfer_combinations(
    sources: dict[str, str],
    created: dict[str, str],
    originals: dict[str, Component],
    parts: dict[str, Path],
    hub_parts: dict[str, tuple[str, str]],
    tmp_path: Path,
) -> None:
    """Each combination assembles, records where every part came from, and reloads bit-identically."""
    references = {slot: hub_parts[slot][0] if how == "hub" else str(parts[slot]) for slot, how in sources.items()}
    model = PMMRec.assemble(**references)
    assert set(model.components()) == set(sources) | set(created)
    assert model.modalities == frozenset({"text", "vision"} & set(sources))
    for slot, type_name in created.items():
        assert model.components()[slot].type_name == type_name
        assert model.sources[slot].created
    assert len(model.assembly_notes) == len(created)
    for slot in sources:  # a referenced part is loaded unchanged
        original = originals[slot].state_dict()
        loaded = model.components()[slot].state_dict()
        assert all(torch.equal(original[key], loaded[key]) for key in original)

    folder = model.save_pretrained(tmp_path / "model")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["pmmrec_type"] == "model/pmmrec"
    assert manifest["format_version"] == 1
    assert manifest["dim"] == tiny.DIM
    assert manifest["modalities"] == sorted(model.modalities)
    assert set(manifest["components"]) == set(sources) | set(created)
    for slot, entry in manifest["components"].items():
        assert entry["path"] == slot
        assert entry["type"] == model.components()[slot].type_name
        assert entry["sha256"] == sha256_file(folder / slot / "model.safetensors")
        if slot in created:
            assert (entry["requested"], entry["resolved_commit"], entry["created"]) == (None, None, True)
        elif sources[slot] == "hub":
            assert entry["requested"] == hub_parts[slot][0]
            assert entry["resolved_commit"] == hub_parts[slot][1]
            assert COMMIT.match(entry["resolved_commit"])
            assert entry["created"] is False
        else:
            assert (entry["requested"], entry["resolved_commit"], entry["created"]) == (str(parts[slot]), None, False)

    reloaded = PMMRec.from_pretrained(folder)
    assert not reloaded.training
    assert {slot: c.type_name for slot, c in reloaded.components().items()} == {
        slot: c.type_name for slot, c in model.components().items()
    }
    assert reloaded.sources == model.sources
    items, users = model_outputs(model)
    items2, users2 = model_outputs(reloaded)
    assert items.shape == (N_ITEMS, tiny.DIM) and users.shape == (1, N_ITEMS, tiny.DIM)
    assert torch.equal(items, items2) and torch.equal(users, users2)


def test_text_only_tower_is_the_masked_mean(parts: dict[str, Path]) -> None:
    """text + user: the item embedding is the mean of the valid projected text tokens."""
    model = PMMRec.assemble(text=str(parts["text"]), user=str(parts["user"])).eval()
    inputs = item_inputs()
    with torch.no_grad():
        items = model.embed_items(text_ids=inputs["text_ids"], text_mask=inputs["text_mask"]).embeddings
        tokens, mask = model.text(inputs["text_ids"], inputs["text_mask"])  # type: ignore[misc]
    for row in range(N_ITEMS):
        torch.testing.assert_close(items[row], tokens[row][mask[row]].mean(dim=0))


def test_components_given_as_objects(
    text_encoder: HFTextEncoder, user_encoder: SASRecUserEncoder, tmp_path: Path
) -> None:
    """Objects pass through; the manifest and card say they were given in code."""
    model = PMMRec.assemble(text=text_encoder, user=user_encoder)
    assert model.text is text_encoder and model.user is user_encoder
    folder = model.save_pretrained(tmp_path / "model")
    entry = json.loads((folder / MANIFEST_FILE).read_text())["components"]["text"]
    assert (entry["requested"], entry["resolved_commit"], entry["created"]) == (None, None, False)
    card = (folder / "README.md").read_text()
    assert "| text | `text_encoder/hf` | given in code |" in card
    assert "| fusion | `fusion/text_only` | created fresh |" in card


def test_id_tower_model(id_tower: Component, user_encoder: SASRecUserEncoder, tmp_path: Path) -> None:
    """The ID baseline: item_tower + user, modality 'id', round trip included."""
    model = PMMRec.assemble(item_tower=id_tower, user=user_encoder)
    assert model.modalities == frozenset({"id"}) and model.fusion is None
    folder = model.save_pretrained(tmp_path / "model")
    reloaded = PMMRec.from_pretrained(folder).eval()
    indices = torch.tensor([1, 5, 10])
    with torch.no_grad():
        assert torch.equal(reloaded.embed_items(item_indices=indices).embeddings, id_tower(indices))


def test_user_config_shapes_a_fresh_user_encoder(parts: dict[str, Path]) -> None:
    """user_config sets the architecture of a user encoder created at assembly."""
    model = PMMRec.assemble(text=str(parts["text"]), user_config={"max_length": 12, "layers": 1})
    assert model.max_length == 12
    assert len(model.user.blocks) == 1  # type: ignore[union-attr]
    assert "created a fresh user_encoder/sasrec (d=32)" in model.assembly_notes


def test_model_card_and_hub_round_trip(
    parts: dict[str, Path], hub_parts: dict[str, tuple[str, str]], publish: Callable[..., str], tmp_path: Path
) -> None:
    """An assembled model has a card with YAML metadata, and itself loads from a hub reference."""
    model = PMMRec.assemble(text=hub_parts["text"][0], user=str(parts["user"]))
    folder = model.save_pretrained(tmp_path / "model", card=TrainingFacts(datasets=("movielens-100k",)))
    card = (folder / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---\n", 2)[1])
    assert metadata["library_name"] == "pmmrec"
    assert "pmmrec" in metadata["tags"] and metadata["datasets"] == ["movielens-100k"]
    assert f"| text | `text_encoder/hf` | {hub_parts['text'][0]} | {hub_parts['text'][1]} |" in card
    for slot in ("text", "fusion", "user"):  # each component keeps its own card
        assert (
            yaml.safe_load((folder / slot / "README.md").read_text().split("---\n", 2)[1])["library_name"] == "pmmrec"
        )
    commit = publish(folder, "acme/model-tiny", tag="v1")
    from_hub = PMMRec.from_pretrained("hub:acme/model-tiny@v1")
    assert torch.equal(model_outputs(from_hub)[0], model_outputs(PMMRec.from_pretrained(folder))[0])
    assert api.inspect("hub:acme/model-tiny@v1")["resolved_commit"] == commit


# ---- refused combinations: clear error, nothing written -------------------------------------------


@pytest.fixture
def narrow_user(tmp_path: Path) -> Path:
    """A user encoder with d=16 (incompatible with the d=32 parts)."""
    return tiny.tiny_user_encoder(dim=16).save_pretrained(tmp_path / "parts16" / "user")


FAILURES = [
    pytest.param(
        {"text": "text", "user": "NARROW"},
        "components disagree on the embedding width: text d=32, user d=16",
        id="different-d",
    ),
    pytest.param(
        {"text": "text", "fusion": "fusion", "user": "user"},
        "fusion 'fusion/merge_attention' needs vision, which is absent",
        id="fusion-needs-absent-vision",
    ),
    pytest.param(
        {"vision": "vision", "fusion": "fusion"},
        "fusion 'fusion/merge_attention' needs text, which is absent",
        id="fusion-needs-absent-text",
    ),
    pytest.param({"user": "user"}, "no item modality", id="no-item-modality"),
    pytest.param({"fusion": "fusion", "user": "user"}, "no item modality", id="fusion-without-encoders"),
    pytest.param({"text": "user"}, "is a 'user_encoder/sasrec' component, not a text_encoder", id="wrong-kind-in-slot"),
    pytest.param(
        {"vision": "text", "user": "user"},
        "is a 'text_encoder/hf' component, not a vision_encoder",
        id="text-as-vision",
    ),
]


@pytest.mark.parametrize(("given", "message"), FAILURES)
def test_incompatible_parts_fail_before_writing(
    given: dict[str, str], message: str, parts: dict[str, Path], narrow_user: Path, tmp_path: Path
) -> None:
    """api.assemble (what the CLI runs) refuses with a clear error and writes nothing."""
    references = {slot: str(narrow_user if name == "NARROW" else parts[name]) for slot, name in given.items()}
    out = tmp_path / "out" / "model"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(AssemblyError) as info:
        api.assemble(out, **references)
    assert message in str(info.value)
    assert not out.exists() and not out.parent.exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_fusion_must_use_every_encoder(parts: dict[str, Path], text_encoder: HFTextEncoder) -> None:
    """A text-only fusion beside a vision encoder would silently ignore it: refused."""
    text_only = tiny.tiny_text_only()
    with pytest.raises(AssemblyError, match="fusion 'fusion/text_only' does not use vision"):
        PMMRec.assemble(text=text_encoder, vision=str(parts["vision"]), fusion=text_only)


def test_object_of_the_wrong_kind(text_encoder: HFTextEncoder) -> None:
    """A component object in the wrong slot names the slot and both kinds."""
    with pytest.raises(AssemblyError, match="--vision: got a 'text_encoder/hf', not a vision_encoder"):
        PMMRec.assemble(vision=text_encoder)


def test_id_tower_excludes_content_encoders(id_tower: Component, text_encoder: HFTextEncoder) -> None:
    """ID embeddings replace the content tower; both at once is refused."""
    with pytest.raises(AssemblyError, match="an ID item tower replaces the content tower; remove text"):
        PMMRec.assemble(item_tower=id_tower, text=text_encoder)


def test_unresolvable_reference_writes_nothing(parts: dict[str, Path], hub_cache: Path, tmp_path: Path) -> None:
    """A reference that does not resolve fails before any output exists."""
    out = tmp_path / "model"
    with pytest.raises(ReferenceResolutionError, match="hub:acme/absent@v1"):
        api.assemble(out, text="hub:acme/absent@v1", user=str(parts["user"]))
    assert not out.exists()


def test_existing_output_is_refused(parts: dict[str, Path], tmp_path: Path) -> None:
    """Assembly never replaces a folder silently; overwrite=True does, atomically."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ArtefactError, match="already exists; pass --overwrite"):
        api.assemble(out, text=str(parts["text"]), user=str(parts["user"]))
    model = PMMRec.assemble(text=str(parts["text"]), user=str(parts["user"]))
    with pytest.raises(PmmrecError, match="already exists"):
        model.save_pretrained(out)
    assert (out / "keep.txt").read_text() == "mine"
    path, notes = api.assemble(out, text=str(parts["text"]), user=str(parts["user"]), overwrite=True)
    assert (path / MANIFEST_FILE).is_file() and not (path / "keep.txt").exists()
    assert notes == ["using the text-only item tower (fusion/text_only, no weights)"]


# ---- a saved model is verified on load ----------------------------------------------------------


@pytest.fixture
def saved_model(parts: dict[str, Path], tmp_path: Path) -> Path:
    """text + vision + fusion + user assembled from folders and saved."""
    model = PMMRec.assemble(**{slot: str(folder) for slot, folder in parts.items()})
    return model.save_pretrained(tmp_path / "model")


def test_tampered_weights_fail_loudly(saved_model: Path) -> None:
    """One flipped byte in a weight file (still a valid safetensors file) fails the sha256 check."""
    weights = saved_model / "fusion" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match=r"does not match checksums\.json"):  # the component's own checksums ...
        Component.from_folder(saved_model / "fusion")
    with pytest.raises(ArtefactError) as info:  # ... and the model's pinned hash, checked first
        PMMRec.from_pretrained(saved_model)
    message = str(info.value)
    assert str(weights) in message
    assert "does not match pmmrec.json" in message and "changed after assembly" in message


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit pmmrec.json in place."""
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m.update(format_version=2), "format_version 2 is newer than this pmmrec supports"),
        (lambda m: m.update(pmmrec_type="model/other"), "not a pmmrec model manifest"),
        (
            lambda m: m["components"]["fusion"].update(type="fusion/text_only"),
            "but pmmrec.json says 'fusion/text_only'",
        ),
        (lambda m: m["components"].update(extra=m["components"]["user"]), "unknown component slot 'extra'"),
        (lambda m: m["components"]["user"].update(path="../user"), "components.user.path must be 'user'"),
        (lambda m: m["components"]["user"].pop("sha256"), "components.user needs type, path and sha256"),
        (lambda m: m["components"].pop("user"), "no user component"),
        (lambda m: m["components"].pop("fusion"), "a content item tower needs a fusion component"),
    ],
    ids=[
        "newer-format",
        "wrong-type",
        "type-mismatch",
        "unknown-slot",
        "path-escape",
        "no-hash",
        "no-user",
        "no-fusion",
    ],
)
def test_manifest_failures(change: Callable[[dict[str, Any]], None], expected: str, saved_model: Path) -> None:
    """A manifest this pmmrec cannot honour fails, naming the file (pmmrec.json or the component folder)."""
    edit_manifest(saved_model, change)
    with pytest.raises(ArtefactError) as info:
        PMMRec.from_pretrained(saved_model)
    assert expected in str(info.value)
    assert str(saved_model) in str(info.value)


def test_missing_component_weights(saved_model: Path) -> None:
    """A weight file listed in the manifest but absent is named."""
    (saved_model / "vision" / "model.safetensors").unlink()
    with pytest.raises(ArtefactError, match=r"vision/model\.safetensors: missing \(listed in pmmrec\.json\)"):
        PMMRec.from_pretrained(saved_model)


def test_component_folder_is_not_a_model(parts: dict[str, Path]) -> None:
    """Loading a single component as a model points to load_component."""
    with pytest.raises(ArtefactError, match="it is a single component: use load_component"):
        PMMRec.from_pretrained(parts["user"])


# ---- the manifest's own words (found by mutation testing, docs/testing.md) ----------------------------------------


def test_manifest_document_lists_exactly_its_keys_and_marks_unrecorded_parts_created() -> None:
    """Guards against a renamed manifest key, and a component without a recorded source not marked as created."""
    from pmmrec import __version__
    from pmmrec.model.manifest import manifest_document

    files = {"user": {"config.json": "cd" * 32}}
    document = manifest_document(32, ["text"], {"user": "user_encoder/sasrec"}, {}, {"user": "ab" * 32}, files)
    assert set(document) == {"pmmrec_type", "format_version", "pmmrec_version", "dim", "modalities", "components"}
    assert document["pmmrec_version"] == __version__ and document["pmmrec_type"] == "model/pmmrec"
    assert document["components"]["user"] == {
        "type": "user_encoder/sasrec", "path": "user", "requested": None, "resolved_commit": None, "created": True,
        "sha256": "ab" * 32, "files": {"config.json": "cd" * 32},
    }  # fmt: skip


def test_a_folder_without_a_manifest_is_named_and_a_component_folder_gets_a_hint(tmp_path: Path) -> None:
    """Guards against losing (or inventing) the hint that a folder is a single component."""
    from pmmrec.errors import ArtefactError
    from pmmrec.model.manifest import read_manifest

    with pytest.raises(ArtefactError) as info:
        read_manifest(tmp_path)
    assert str(info.value) == f"{tmp_path / 'pmmrec.json'}: missing; {tmp_path} is not an assembled pmmrec model"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ArtefactError) as info:
        read_manifest(tmp_path)
    assert str(info.value).endswith(
        "is not an assembled pmmrec model (it is a single component: use load_component / Component.from_pretrained)"
    )


def test_an_oversized_manifest_is_refused_before_parsing(saved_model: Path) -> None:
    """Guards against reading a pmmrec.json of any size: the manifest is bounded at 16 MiB (its own limit, below
    the 64 MiB of other JSON files)."""
    manifest = saved_model / "pmmrec.json"
    manifest.write_text(manifest.read_text()[:-1] + ', "padding": "' + "x" * (17 << 20) + '"}')
    with pytest.raises(ArtefactError, match="larger than 16,777,216 bytes"):
        PMMRec.from_pretrained(saved_model)


def test_a_manifest_entry_with_only_the_required_keys_parses(saved_model: Path) -> None:
    """Guards against requiring more than type, path and sha256 of an entry (the other keys are optional)."""
    from pmmrec.model import read_manifest

    manifest = json.loads((saved_model / "pmmrec.json").read_text())
    manifest["components"] = {
        slot: {key: entry[key] for key in ("type", "path", "sha256")} for slot, entry in manifest["components"].items()
    }
    (saved_model / "pmmrec.json").write_text(json.dumps(manifest))
    assert set(read_manifest(saved_model)["components"]["user"]) == {"type", "path", "sha256"}
