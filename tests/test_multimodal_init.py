"""Text + vision that does not hurt (issue 24.6): a fresh fusion starts as the mean of the single-modality towers,
a fresh EfficientNet trains on the image features it is evaluated with, and artefacts written before keep their
old behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch

from pmmrec.components import (
    CreateOptions,
    EfficientNetEncoder,
    EfficientNetEncoderConfig,
    MergeAttentionFusion,
    create_component,
    load_component,
)
from pmmrec.components.kinds import masked_mean

pytestmark = pytest.mark.usefixtures("single_thread", "no_fsync")


def towers_mean(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean of the text-only and the vision-only item towers' outputs."""
    text_only, vision_only = tiny.tiny_text_only(), tiny.tiny_vision_only()
    tokens = tiny.fusion_tokens(**inputs)
    return 0.5 * (text_only(tokens) + vision_only(tokens))


def fresh_fusion() -> MergeAttentionFusion:
    torch.manual_seed(0)
    fusion = create_component("fusion", CreateOptions(dim=tiny.DIM, heads=4), "merge_attention")
    assert isinstance(fusion, MergeAttentionFusion)
    return fusion


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_fresh_fusion_is_the_mean_of_the_single_modality_towers(mode: str) -> None:
    """At step 0 the item embedding is exactly (text-only + vision-only) / 2, dropout or not, padding or not."""
    fusion = fresh_fusion()
    assert fusion.config.gated
    fusion.train(mode == "train")
    inputs = tiny.golden_inputs("fusion_merge_attention")
    torch.testing.assert_close(fusion(tiny.fusion_tokens(**inputs)), towers_mean(inputs), rtol=0, atol=1e-6)
    # The same weights ungated (what fresh fusions were before) give the layer's output instead.
    ungated = MergeAttentionFusion(fusion.config.model_copy(update={"gated": False}))
    ungated.load_state_dict({k: v for k, v in fusion.state_dict().items() if k != "gate"})
    assert not torch.allclose(ungated.eval()(tiny.fusion_tokens(**inputs)), towers_mean(inputs), atol=1e-2)


def test_the_gate_opens_the_attention_path_under_training() -> None:
    """At step 0 only the gate gets a gradient (the layer's is zero, multiplied by tanh(0)); once the gate moves,
    the layer trains and its masked mean enters the item embedding scaled by tanh(gate)."""
    fusion = fresh_fusion().eval()
    inputs = tiny.golden_inputs("fusion_merge_attention")
    target = torch.randn(3, tiny.DIM, generator=torch.Generator().manual_seed(7))
    (fusion(tiny.fusion_tokens(**inputs)) * target).sum().backward()
    assert fusion.gate is not None and fusion.gate.grad is not None and float(fusion.gate.grad.abs()) > 0
    layer_grads = [p.grad for p in fusion.layer.parameters()]
    assert all(g is None or float(g.abs().max()) == 0.0 for g in layer_grads)
    fusion.zero_grad()
    with torch.no_grad():
        fusion.gate.fill_(0.3)
    (fusion(tiny.fusion_tokens(**inputs)) * target).sum().backward()
    assert any(g is not None and float(g.abs().max()) > 0 for g in (p.grad for p in fusion.layer.parameters()))
    with torch.no_grad():
        text = inputs["text_tokens"] + fusion.type_embeddings.weight[0]
        image = inputs["image_tokens"] + fusion.type_embeddings.weight[1]
        valid = torch.cat([inputs["text_mask"], torch.ones(3, image.shape[1], dtype=torch.bool)], dim=1)
        layer = masked_mean(fusion.layer(torch.cat([text, image], dim=1), src_key_padding_mask=~valid), valid)
        expected = towers_mean(inputs) + torch.tanh(torch.tensor(0.3)) * layer
        torch.testing.assert_close(fusion(tiny.fusion_tokens(**inputs)), expected, rtol=1e-5, atol=1e-6)


def test_a_fusion_written_before_loads_ungated(tmp_path: Path) -> None:
    """A config.json without `gated` (every fusion written before issue 24.6) loads as the paper's ungated fusion,
    with its weights strictly (no gate); a fresh one saves `gated: true` and its gate."""
    old = tiny.tiny_fusion()
    folder = old.save_pretrained(tmp_path / "old")
    document = json.loads((folder / "config.json").read_text())
    document["config"].pop("gated")
    (folder / "config.json").write_text(json.dumps(document))
    tiny.reseal(folder)
    loaded = load_component(str(folder))
    assert isinstance(loaded, MergeAttentionFusion) and not loaded.config.gated and loaded.gate is None
    inputs = tiny.golden_inputs("fusion_merge_attention")
    assert torch.equal(tiny.run_component(loaded, inputs), tiny.run_component(old, inputs))
    fresh = fresh_fusion().save_pretrained(tmp_path / "fresh")
    assert json.loads((fresh / "config.json").read_text())["config"]["gated"] is True
    reloaded = load_component(str(fresh))
    assert isinstance(reloaded, MergeAttentionFusion) and reloaded.gate is not None and float(reloaded.gate.detach()) == 0.0


def no_stochastic_depth(encoder: EfficientNetEncoder) -> EfficientNetEncoder:
    """The encoder with EfficientNet's drop-connect off, so that train and eval differ only by BatchNorm."""
    params = encoder.backbone._global_params
    encoder.backbone._global_params = params._replace(drop_connect_rate=0.0)
    return encoder


def efficientnet(batch_norm: str) -> EfficientNetEncoder:
    config = EfficientNetEncoderConfig(
        dim=tiny.DIM, image_size=tiny.EFFICIENTNET_IMAGE_SIZE, trainable_layers=2, backbone="x", batch_norm=batch_norm
    )
    torch.manual_seed(0)
    return no_stochastic_depth(EfficientNetEncoder(config))


def test_a_fresh_efficientnet_trains_on_the_features_evaluation_sees() -> None:
    """`batch_norm: running` (fresh encoders): training-mode output equals eval-mode output and the stored statistics
    do not move; `batch` (encoders written before) normalises with each batch's statistics, which eval never uses."""
    pixels = tiny.golden_inputs("vision_efficientnet")["pixel_values"]
    for batch_norm, same in (("running", True), ("batch", False)):
        encoder = efficientnet(batch_norm)
        stats = {k: v.clone() for k, v in encoder.state_dict().items() if "running" in k}
        with torch.no_grad():
            evaluated = encoder.eval()(pixels)
            trained = encoder.train()(pixels)
        assert torch.allclose(trained, evaluated, atol=1e-5) is same, batch_norm
        moved = any(not torch.equal(v, encoder.state_dict()[k]) for k, v in stats.items())
        assert moved is not same, batch_norm
        assert any(p.requires_grad for n, p in encoder.named_parameters() if "_bn" in n)  # affine still trains


def test_efficientnet_batch_norm_defaults() -> None:
    """Configs without the field keep batch statistics (old artefacts); the packaged backbone's fresh encoder uses
    the running ones."""
    assert EfficientNetEncoderConfig(dim=8, backbone="x").batch_norm == "batch"
    encoder = create_component("vision", CreateOptions(dim=8))
    assert isinstance(encoder, EfficientNetEncoder) and encoder.config.batch_norm == "running"
    encoder.train()
    assert not any(m.training for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
