"""Every component type: golden outputs, bit-identical round trips, files beside the weights, strict loading."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tiny
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import FakeHubApi

from pmmrec.cards import TrainingFacts, load_catalogue
from pmmrec.components import (
    FORMAT_VERSION,
    CLIPVisionEncoder,
    Component,
    HFTextEncoder,
    IdItemTower,
    MergeAttentionFusion,
    SASRecUserEncoder,
    load_component,
    register_component,
    registered_types,
)
from pmmrec.components._vision import CLIP_MEAN, CLIP_STD
from pmmrec.errors import ArtefactError, ConfigError, PmmrecError, ReferenceResolutionError
from pmmrec.model import SLOT_KINDS

pytestmark = pytest.mark.usefixtures("single_thread", "no_fsync")

GOLDEN_DIR = Path(__file__).parent / "golden"
CASES = sorted(tiny.BUILDERS)
EXPECTED_TYPES = {
    "text_bert": "text_encoder/hf",
    "text_xlmr": "text_encoder/hf",
    "vision_clip": "vision_encoder/clip",
    "vision_efficientnet": "vision_encoder/efficientnet",
    "fusion_merge_attention": "fusion/merge_attention",
    "fusion_merge_attention_gated": "fusion/merge_attention",
    "fusion_text_only": "fusion/text_only",
    "fusion_pooled_mlp": "fusion/pooled_mlp",
    "fusion_vision_only": "fusion/vision_only",
    "user_sasrec": "user_encoder/sasrec",
    "item_tower_id": "item_tower/id",
}


@pytest.fixture(scope="module")
def built() -> dict[str, Component]:
    """One fresh seeded component per golden case (built once for this module; tests must not mutate them)."""
    return {name: builder() for name, builder in tiny.BUILDERS.items()}


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def front_matter(card: str) -> dict[str, Any]:
    """The YAML metadata block at the top of a model card."""
    assert card.startswith("---\n"), card[:80]
    block = card.split("---\n", 2)[1]
    return yaml.safe_load(block)


# ---- golden outputs and round trips ---------------------------------------------------------------


def test_every_registered_type_has_a_golden_case() -> None:
    """A new component type must come with a tiny builder and a golden file (the single-modality fusions generated
    for modalities beyond text and images share the implementation the text-only and vision-only cases cover)."""
    from pmmrec.components.fusion_single_modality import GENERATED_TYPES

    assert set(EXPECTED_TYPES.values()) == set(registered_types()) - set(GENERATED_TYPES)
    assert set(EXPECTED_TYPES) == set(tiny.BUILDERS)
    assert {path.stem for path in GOLDEN_DIR.glob("*.safetensors")} == set(tiny.BUILDERS)


@pytest.mark.parametrize("name", CASES)
def test_fresh_seeded_output_matches_golden(name: str, built: dict[str, Component]) -> None:
    """Seeded construction + forward reproduces the committed golden tensors (same inputs, tight tolerance)."""
    golden = load_file(str(GOLDEN_DIR / f"{name}.safetensors"))
    inputs = tiny.golden_inputs(name)
    for key, value in inputs.items():
        assert torch.equal(golden[f"input.{key}"], value), f"golden input {key} of {name} drifted"
    component = built[name]
    assert component.type_name == EXPECTED_TYPES[name]
    output = tiny.run_component(component, inputs)
    assert output.shape == golden["output"].shape
    expected = golden["output"]
    if "attention_mask" in inputs:  # text tokens: padding positions are unspecified (every consumer masks them)
        real = inputs["attention_mask"].to(torch.bool)
        output, expected = output[real], expected[real]
    torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_round_trip_is_bit_identical(name: str, built: dict[str, Component], tmp_path: Path) -> None:
    """save_pretrained -> load_component gives the same type, config, state and exactly the same outputs."""
    component = built[name]
    folder = component.save_pretrained(tmp_path / name)
    reloaded = load_component(str(folder))
    assert type(reloaded) is type(component)
    assert reloaded.config == component.config
    assert not reloaded.training
    original_state, new_state = component.state_dict(), reloaded.state_dict()
    assert original_state.keys() == new_state.keys()
    assert all(torch.equal(original_state[key], new_state[key]) for key in original_state)
    inputs = tiny.golden_inputs(name)
    assert torch.equal(tiny.run_component(reloaded, inputs), tiny.run_component(component, inputs))
    # Saving the reloaded component again gives byte-identical files: the sha256 pinned by a manifest is stable.
    again = reloaded.save_pretrained(tmp_path / f"{name}-again")
    assert (again / "config.json").read_text() == (folder / "config.json").read_text()
    assert sha256(again / "model.safetensors") == sha256(folder / "model.safetensors")


def test_typed_loader_matches_generic_loader(user_encoder: SASRecUserEncoder, tmp_path: Path) -> None:
    """SASRecUserEncoder.from_pretrained and load_component agree; the typed loader refuses other types."""
    folder = user_encoder.save_pretrained(tmp_path / "user")
    typed = SASRecUserEncoder.from_pretrained(folder)
    assert isinstance(typed, SASRecUserEncoder)
    with pytest.raises(ArtefactError) as info:
        HFTextEncoder.from_pretrained(folder)
    message = str(info.value)
    assert str(folder / "config.json") in message
    assert "'user_encoder/sasrec'" in message and "not a HFTextEncoder" in message


def test_local_folder_refuses_a_revision(user_encoder: SASRecUserEncoder, tmp_path: Path) -> None:
    """One revision per reference: a local folder has none to pin."""
    folder = user_encoder.save_pretrained(tmp_path / "user")
    with pytest.raises(ReferenceResolutionError, match="a local folder has no revision"):
        load_component(str(folder), revision="v1")


# ---- config.json, header metadata, files beside the weights ---------------------------------------


def test_config_document_envelope(fusion: MergeAttentionFusion, tmp_path: Path) -> None:
    """config.json holds a stable type name, the format version and the validated config; no import paths."""
    folder = fusion.save_pretrained(tmp_path / "fusion")
    document = json.loads((folder / "config.json").read_text())
    assert set(document) == {"pmmrec_type", "format_version", "pmmrec_version", "config"}
    assert document["pmmrec_type"] == "fusion/merge_attention"
    assert document["format_version"] == FORMAT_VERSION
    assert document["config"] == {"dim": 32, "heads": 4, "ffn_multiplier": 4, "dropout": 0.1, "gated": False}
    assert "pmmrec.components" not in (folder / "config.json").read_text()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["pmmrec_type"] == "fusion/merge_attention"
    assert metadata["format_version"] == str(FORMAT_VERSION)


@pytest.mark.parametrize("variant", ["text_only", "vision_only"])
def test_single_modality_fusions_write_the_config_json_they_always_wrote(variant: str, tmp_path: Path) -> None:
    """Both types share one implementation now; their artefacts keep their type names and exact config.json text,
    and a folder of either type loads as that type."""
    from pmmrec._version import __version__
    from pmmrec.components import CreateOptions, SingleModalityFusion, create_component, load_component

    folder = create_component("fusion", CreateOptions(dim=24), variant).save_pretrained(tmp_path / variant)
    expected = {"pmmrec_type": f"fusion/{variant}", "format_version": 1, "pmmrec_version": __version__, "config": {"dim": 24}}
    assert (folder / "config.json").read_text() == json.dumps(expected, indent=2) + "\n"
    loaded = load_component(str(folder))
    assert loaded.type_name == f"fusion/{variant}" and isinstance(loaded, SingleModalityFusion)
    assert loaded.modalities == {variant.removesuffix("_only")}


def test_tokenizer_saved_beside_text_encoder(text_encoder: HFTextEncoder, tmp_path: Path) -> None:
    """tokenizer/ is written beside the weights and tokenizes exactly as the original after reload."""
    folder = text_encoder.save_pretrained(tmp_path / "text")
    assert (folder / "tokenizer" / "tokenizer_config.json").is_file()
    reloaded = load_component(str(folder))
    assert isinstance(reloaded, HFTextEncoder)
    titles = ["Toy Story", "Twelve Monkeys (a very long title that is cut at sixteen tokens for sure)"]
    ids, mask = text_encoder.tokenize(titles)
    ids2, mask2 = reloaded.tokenize(titles)
    assert ids.shape == (2, tiny.TEXT_TOKENS)
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    assert mask[1].all() and not mask[0].all()  # truncation and padding at max_tokens


def test_text_encoder_without_tokenizer_loads_but_cannot_tokenize(tmp_path: Path) -> None:
    """No tokenizer/ folder: the weights still load strictly; tokenize() says what is missing."""
    encoder = tiny.tiny_text_encoder(with_tokenizer=False)
    folder = encoder.save_pretrained(tmp_path / "text")
    assert not (folder / "tokenizer").exists()
    reloaded = load_component(str(folder))
    with pytest.raises(ConfigError, match="lacks tokenizer/"):
        reloaded.tokenize(["x"])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fixture", "mean", "std", "size"),
    [
        ("clip_encoder", CLIP_MEAN, CLIP_STD, tiny.CLIP_IMAGE_SIZE),
        ("efficientnet_encoder", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), tiny.EFFICIENTNET_IMAGE_SIZE),
    ],
)
def test_preprocessing_saved_beside_vision_encoders(
    fixture: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    size: int,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """preprocessing.json carries the backbone's own image size and statistics (not a blanket 0.5)."""
    encoder = request.getfixturevalue(fixture)
    folder = encoder.save_pretrained(tmp_path / "vision")
    payload = json.loads((folder / "preprocessing.json").read_text())
    assert payload["image_size"] == size
    assert payload["image_mean"] == pytest.approx(list(mean))
    assert payload["image_std"] == pytest.approx(list(std))
    assert payload["channel_order"] == "RGB"


def test_id_tower_catalogue_round_trip(id_tower: IdItemTower, tmp_path: Path) -> None:
    """item_ids.json is saved beside the table and reloaded; row 0 (padding) stays zero."""
    folder = id_tower.save_pretrained(tmp_path / "ids")
    assert json.loads((folder / "item_ids.json").read_text()) == [f"item-{i}" for i in range(1, 11)]
    reloaded = load_component(str(folder))
    assert isinstance(reloaded, IdItemTower)
    assert reloaded.item_ids == id_tower.item_ids
    assert torch.count_nonzero(reloaded.embeddings.weight[0]) == 0


def test_id_tower_catalogue_must_match_num_items(id_tower: IdItemTower, tmp_path: Path) -> None:
    """A catalogue whose length disagrees with config.json is refused, naming item_ids.json."""
    folder = id_tower.save_pretrained(tmp_path / "ids")
    (folder / "item_ids.json").write_text(json.dumps(["a", "b"]))
    tiny.reseal(folder)  # the catalogue check is under test, not the checksums
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    assert "item_ids.json" in str(info.value) and "num_items=10" in str(info.value)


# ---- model cards --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_model_card_metadata(name: str, built: dict[str, Component], tmp_path: Path) -> None:
    """Every card has YAML metadata with library_name: pmmrec and tags naming the kind and the type."""
    component = built[name]
    folder = component.save_pretrained(tmp_path / name)
    card = (folder / "README.md").read_text()
    metadata = front_matter(card)
    assert metadata["library_name"] == "pmmrec"
    assert {"pmmrec", component.kind, component.type_name} <= set(metadata["tags"])
    assert f"type: `{component.type_name}`" in card


def test_model_card_training_facts(user_encoder: SASRecUserEncoder, tmp_path: Path) -> None:
    """Datasets and metrics given at save time become `datasets` and `model-index` metadata."""
    facts = TrainingFacts(
        name="user encoder (ML-100K source)",
        datasets=("movielens-100k",),
        metrics={"ml100k-target": {"hr@10": 0.25, "ndcg@10": 0.13}},
        training={"objectives": "next-item + NICL"},
    )
    folder = user_encoder.save_pretrained(tmp_path / "user", card=facts)
    card = (folder / "README.md").read_text()
    metadata = front_matter(card)
    assert metadata["datasets"] == ["movielens-100k"]
    results = metadata["model-index"][0]["results"][0]
    assert results["dataset"]["name"] == "ml100k-target"
    assert {m["type"]: m["value"] for m in results["metrics"]} == {"hr@10": 0.25, "ndcg@10": 0.13}
    assert "- objectives: next-item + NICL" in card
    assert "# user encoder (ML-100K source)" in card


@pytest.mark.parametrize(
    ("backbone", "base_model"),
    [
        ("minilm", "sentence-transformers/all-MiniLM-L6-v2"),
        ("FacebookAI/xlm-roberta-base", "FacebookAI/xlm-roberta-base"),
        ("tiny-bert", None),
    ],
)
def test_text_encoder_card_base_model(backbone: str, base_model: str | None, text_encoder: HFTextEncoder) -> None:
    """base_model names the pretrained text backbone (built-in MiniLM or a hub id); none for a local name."""
    text_encoder.config = text_encoder.config.model_copy(update={"backbone": backbone})
    assert text_encoder.card_data().base_model == base_model


# ---- writes: atomic, never a silent overwrite -----------------------------------------------------


def test_existing_folder_is_refused_without_overwrite(fusion: MergeAttentionFusion, tmp_path: Path) -> None:
    """A second save to the same folder fails and leaves the first artefact untouched; overwrite replaces it."""
    folder = fusion.save_pretrained(tmp_path / "fusion")
    before = sha256(folder / "model.safetensors")
    (folder / "notes.txt").write_text("user file")
    other = tiny.tiny_fusion(seed=1)
    with pytest.raises(PmmrecError, match="already exists; pass overwrite=True"):
        other.save_pretrained(folder)
    assert sha256(folder / "model.safetensors") == before
    other.save_pretrained(folder, overwrite=True)
    assert sha256(folder / "model.safetensors") != before
    assert not (folder / "notes.txt").exists()  # replaced as a whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fusion"]  # no staging or trash folders left


def test_failed_save_leaves_nothing(
    text_encoder: HFTextEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash half-way through a save leaves neither the target nor a staging folder behind."""

    def explode(folder: Path) -> None:
        (folder / "partial.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(text_encoder, "save_extra_files", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        text_encoder.save_pretrained(tmp_path / "text")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_artefact(
    fusion: MergeAttentionFusion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """overwrite=True swaps only once the new artefact is complete."""
    folder = fusion.save_pretrained(tmp_path / "fusion")
    before = {p.name: sha256(p) for p in folder.iterdir()}

    def explode(folder: Path) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(fusion, "save_extra_files", explode)
    with pytest.raises(RuntimeError, match="interrupted"):
        fusion.save_pretrained(folder, overwrite=True)
    assert {p.name: sha256(p) for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fusion"]


# ---- strict loading: every failure names the file and the problem -----------------------------------


def rewrite_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], None], **metadata: str) -> None:
    """Load model.safetensors, let `change` edit the tensors, write it back (header metadata updated)."""
    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        stored = dict(handle.metadata() or {})
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={**stored, **metadata})
    tiny.reseal(folder)  # the checks below the folder's checksums are under test


def rewrite_config(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit config.json in place."""
    path = folder / "config.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    tiny.reseal(folder)  # the checks below the folder's checksums are under test


def _drop_projection_bias(tensors: dict[str, torch.Tensor]) -> None:
    del tensors["projection.bias"]


def _add_extra_tensor(tensors: dict[str, torch.Tensor]) -> None:
    tensors["head.extra.weight"] = torch.zeros(2)


def _shrink_projection(tensors: dict[str, torch.Tensor]) -> None:
    tensors["projection.weight"] = tensors["projection.weight"][:16].clone()


def _unknown_type(document: dict[str, Any]) -> None:
    document["pmmrec_type"] = "vision_encoder/resnet9000"


def _newer_format(document: dict[str, Any]) -> None:
    document["format_version"] = FORMAT_VERSION + 1


def _invalid_dim(document: dict[str, Any]) -> None:
    document["config"]["dim"] = -3


def _unknown_field(document: dict[str, Any]) -> None:
    document["config"]["colour"] = "blue"


def _remote_code(document: dict[str, Any]) -> None:
    document["config"]["backbone_config"]["auto_map"] = {"AutoModel": "evil.Model"}


def _envelope_extra(document: dict[str, Any]) -> None:
    document["module_path"] = "pmmrec.components.text_encoder.HFTextEncoder"


def _envelope_missing(document: dict[str, Any]) -> None:
    del document["config"]


STRICT_WEIGHT_FAILURES = [
    pytest.param(_drop_projection_bias, {}, ["missing keys", "projection.bias"], id="missing-keys"),
    pytest.param(_add_extra_tensor, {}, ["unexpected keys", "head.extra.weight"], id="unexpected-keys"),
    pytest.param(
        _shrink_projection,
        {},
        ["wrong shapes", "projection.weight: file (16, 32) vs model (32, 32)"],
        id="wrong-shapes",
    ),
    pytest.param(lambda t: None, {"format_version": "2"}, ["unsupported format_version '2'"], id="newer-header-format"),
    pytest.param(
        lambda t: None,
        {"pmmrec_type": "fusion/merge_attention"},
        ["weights are for 'fusion/merge_attention' but config.json says 'text_encoder/hf'"],
        id="weights-of-another-type",
    ),
]


@pytest.mark.parametrize(("change", "metadata", "expected"), STRICT_WEIGHT_FAILURES)
def test_strict_load_weight_failures(
    change: Callable[[dict[str, torch.Tensor]], None],
    metadata: dict[str, str],
    expected: list[str],
    text_encoder: HFTextEncoder,
    tmp_path: Path,
) -> None:
    """Weights that do not fit the architecture fail loudly; the message names model.safetensors and the fault."""
    folder = text_encoder.save_pretrained(tmp_path / "text")
    rewrite_weights(folder, change, **metadata)
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    message = str(info.value)
    assert message.startswith(str(folder / "model.safetensors"))
    for fragment in expected:
        assert fragment in message


STRICT_CONFIG_FAILURES = [
    pytest.param(
        _unknown_type, ["unknown component type 'vision_encoder/resnet9000'", "text_encoder/hf"], id="unknown-type"
    ),
    pytest.param(_newer_format, [f"format_version {FORMAT_VERSION + 1} is newer", "upgrade pmmrec"], id="newer-format"),
    pytest.param(_invalid_dim, ["invalid config for 'text_encoder/hf'", "dim"], id="invalid-config"),
    pytest.param(_unknown_field, ["invalid config", "colour"], id="unknown-config-field"),
    pytest.param(_remote_code, ["invalid config", "auto_map is refused"], id="remote-code-refused"),
    pytest.param(_envelope_extra, ["unknown keys ['module_path']"], id="envelope-unknown-key"),
    pytest.param(_envelope_missing, ["missing keys ['config']"], id="envelope-missing-key"),
]


@pytest.mark.parametrize(("change", "expected"), STRICT_CONFIG_FAILURES)
def test_strict_load_config_failures(
    change: Callable[[dict[str, Any]], None], expected: list[str], text_encoder: HFTextEncoder, tmp_path: Path
) -> None:
    """A config.json this pmmrec cannot honour fails before any weight is read, naming config.json."""
    folder = text_encoder.save_pretrained(tmp_path / "text")
    rewrite_config(folder, change)
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    message = str(info.value)
    assert message.startswith(str(folder / "config.json"))
    for fragment in expected:
        assert fragment in message


def test_fusion_config_that_does_not_validate(fusion: MergeAttentionFusion, tmp_path: Path) -> None:
    """Cross-field validation runs on load too: heads must divide dim."""
    folder = fusion.save_pretrained(tmp_path / "fusion")
    rewrite_config(folder, lambda d: d["config"].update(heads=5))
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    assert str(folder / "config.json") in str(info.value)
    assert "heads (5) must divide dim (32)" in str(info.value)


def test_user_config_change_is_caught_by_weights(user_encoder: SASRecUserEncoder, tmp_path: Path) -> None:
    """Changing an architecture field in config.json (more layers) surfaces as missing keys, never a partial load."""
    folder = user_encoder.save_pretrained(tmp_path / "user")
    rewrite_config(folder, lambda d: d["config"].update(layers=3))
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    assert str(folder / "model.safetensors") in str(info.value)
    assert "missing keys [blocks.2." in str(info.value)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda f: (f / "config.json").unlink(), "config.json: missing"),
        (lambda f: (f / "config.json").write_text("{not json"), "config.json line 1: invalid JSON"),
        (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json: expected a JSON object"),
        (lambda f: (f / "model.safetensors").unlink(), "model.safetensors: missing weights file"),
        (
            lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:100]),
            "model.safetensors: not a readable safetensors file",
        ),
    ],
    ids=["no-config", "config-not-json", "config-not-object", "no-weights", "truncated-weights"],
)
def test_damaged_files(
    damage: Callable[[Path], Any], expected: str, clip_encoder: CLIPVisionEncoder, tmp_path: Path
) -> None:
    """Missing or unreadable files are ArtefactErrors that name the file."""
    folder = clip_encoder.save_pretrained(tmp_path / "clip")
    damage(folder)
    tiny.reseal(folder)  # the parsers are under test, not the checksums (test_integrity covers those)
    with pytest.raises(ArtefactError) as info:
        load_component(str(folder))
    assert expected in str(info.value)
    assert str(folder) in str(info.value)


def test_plain_file_is_not_a_component(tmp_path: Path) -> None:
    """A file where a folder is expected is refused with the path."""
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0")
    with pytest.raises(ReferenceResolutionError, match="is a file, not a component folder"):
        load_component(str(path))


# ---- registry and catalogue -------------------------------------------------------------------------


def test_registry_refuses_a_second_class_under_a_taken_name() -> None:
    """Stable type names are unique: a clash is a programming error caught at import time."""

    class Impostor(SASRecUserEncoder):
        pass

    with pytest.raises(ValueError, match="'user_encoder/sasrec' is registered twice"):
        register_component(Impostor)
    assert registered_types()["user_encoder/sasrec"] is SASRecUserEncoder


def test_catalogue_types_are_all_loadable() -> None:
    """pmmrec/assets/catalogue.json lists only types this pmmrec registers, each in the slot its kind fills."""
    catalogue = load_catalogue()
    assert catalogue, "the catalogue lists no component"
    known = registered_types()
    for entry in catalogue:
        assert entry["type"] in known, f"catalogue type {entry['type']!r} is not registered"
        cls = known[entry["type"]]
        assert issubclass(cls, SLOT_KINDS[entry["slot"]]), (
            f"{entry['name']}: {entry['type']} cannot fill {entry['slot']}"
        )
        org, _, name = entry["name"].partition("/")
        assert org and name and "/" not in name
        assert entry["recommended_revision"]


def test_catalogue_file_is_the_packaged_one() -> None:
    """The shipped catalogue is pmmrec/assets/catalogue.json itself (no stale copy)."""
    source = Path(__file__).parents[1] / "pmmrec" / "assets" / "catalogue.json"
    assert json.loads(source.read_text())["components"] == load_catalogue()


# ---- freezing -------------------------------------------------------------------------------------


def test_text_encoder_freezes_embeddings_and_bottom_layers(text_encoder: HFTextEncoder) -> None:
    """Paper: embeddings and all but the top `trainable_layers` frozen; frozen parts stay in eval mode."""
    assert text_encoder.frozen_depth == tiny.TEXT_LAYERS - 2
    assert not any(p.requires_grad for p in text_encoder.backbone.embeddings.parameters())
    assert not any(p.requires_grad for p in text_encoder.layers[0].parameters())
    assert all(p.requires_grad for p in text_encoder.layers[1].parameters())
    assert all(p.requires_grad for p in text_encoder.projection.parameters())
    text_encoder.train()
    assert not text_encoder.layers[0].training and text_encoder.layers[1].training


def test_text_encoder_matches_its_backbone(text_encoder: HFTextEncoder) -> None:
    """Layer-by-layer evaluation (for prefix caching) equals the backbone's own forward on valid tokens."""
    inputs = tiny.golden_inputs("text_bert")
    with torch.no_grad():
        tokens, mask = text_encoder(**inputs)
        states = text_encoder.backbone(
            input_ids=inputs["input_ids"].long(), attention_mask=inputs["attention_mask"].long()
        ).last_hidden_state
    torch.testing.assert_close(tokens[mask], text_encoder.projection(states)[mask], rtol=1e-5, atol=1e-6)


def test_clip_encoder_matches_its_backbone(clip_encoder: CLIPVisionEncoder) -> None:
    """CLS + patch states before the final LayerNorm, projected: the same as the backbone's last hidden state."""
    from pmmrec.components._vision import normalise_pixels

    pixels = tiny.golden_inputs("vision_clip")["pixel_values"]
    with torch.no_grad():
        tokens = clip_encoder(pixels)
        normalised = normalise_pixels(pixels, CLIP_MEAN, CLIP_STD, torch.float32)
        hidden = clip_encoder.backbone(pixel_values=normalised, output_hidden_states=True).hidden_states[-1]
    assert tokens.shape == (2, 1 + (tiny.CLIP_IMAGE_SIZE // 8) ** 2, tiny.DIM)
    torch.testing.assert_close(tokens, clip_encoder.projection(hidden), rtol=1e-5, atol=1e-6)


def test_relative_folder_reference(
    user_encoder: SASRecUserEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path resolves against the working directory like any file argument."""
    user_encoder.save_pretrained(tmp_path / "user")
    monkeypatch.chdir(tmp_path)
    assert isinstance(load_component("user"), SASRecUserEncoder)
    assert isinstance(load_component("./user/"), SASRecUserEncoder)


# ---- push_to_hub: the transport is replaced, the folder is real ------------------------------------


def test_push_to_hub_uploads_the_real_artefact(text_encoder: HFTextEncoder, tmp_path: Path) -> None:
    """create_repo, upload_folder of a complete artefact folder, then a tag on the returned commit."""
    api = FakeHubApi()
    commit = text_encoder.push_to_hub("acme/text-tiny", tag="v1", private=True, api=api)
    assert commit == api.commit
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder", "create_tag"]
    assert api.calls[0][1] == {"repo_id": "acme/text-tiny", "private": True, "exist_ok": True}
    assert api.calls[1][1]["repo_id"] == "acme/text-tiny"
    assert api.calls[2][1] == {"repo_id": "acme/text-tiny", "tag": "v1", "revision": api.commit}
    uploaded = api.write_upload(tmp_path / "uploaded")
    assert {"config.json", "model.safetensors", "README.md", "tokenizer"} <= {p.name for p in uploaded.iterdir()}
    reloaded = load_component(str(uploaded))
    inputs = tiny.golden_inputs("text_bert")
    assert torch.equal(tiny.run_component(reloaded, inputs), tiny.run_component(text_encoder, inputs))
    local = text_encoder.save_pretrained(tmp_path / "local")
    assert sha256(uploaded / "model.safetensors") == sha256(local / "model.safetensors")


def test_push_to_hub_without_tag_and_with_card(user_encoder: SASRecUserEncoder, tmp_path: Path) -> None:
    """No tag: no create_tag call; training facts reach the uploaded model card."""
    api = FakeHubApi()
    user_encoder.push_to_hub("acme/user", api=api, card=TrainingFacts(datasets=("movielens-100k",)))
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    assert front_matter(api.uploaded["README.md"].decode())["datasets"] == ["movielens-100k"]


@pytest.mark.parametrize(("repo_id", "tag"), [("not-a-repo-id", None), ("acme/../etc", None), ("acme/user", "bad tag")])
def test_push_to_hub_refuses_bad_names_before_any_call(
    repo_id: str, tag: str | None, user_encoder: SASRecUserEncoder, tmp_path: Path
) -> None:
    """An invalid repo id or tag is refused before the transport is touched."""
    api = FakeHubApi()
    with pytest.raises(ReferenceResolutionError):
        user_encoder.push_to_hub(repo_id, tag=tag, api=api)
    assert api.calls == []
