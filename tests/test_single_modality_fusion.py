"""`--single-modality-fusion attention|mlp`: a fresh one-modality item tower gets a gated merge-attention layer over
its tokens, or a residual MLP of their mean (each starting as the plain mean), saved and loaded like every fusion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pmmrec.components import CreateOptions, create_component
from pmmrec.components.fusion_merge_attention import MergeAttentionConfig, MergeAttentionFusion
from pmmrec.components.fusion_pooled_mlp import PooledMlpConfig
from pmmrec.components.kinds import ModalityTokens, masked_mean
from pmmrec.data import load_dataset
from pmmrec.errors import ConfigError
from pmmrec.model import PMMRec
from pmmrec.training.config import ModelConfig
from pmmrec.training.jobs import build_model


@pytest.fixture(autouse=True)
def _environment(isolated: Path) -> None:
    """Every test here runs in the isolated environment (private cache, offline, one thread)."""


@pytest.mark.parametrize("choice", ["mean", "attention", "mlp"])
def test_the_choice_builds_its_tower_and_round_trips(
    choice: str, tiny_dataset: Path, tiny_components: dict[str, Path], tmp_path: Path
) -> None:
    spec = ModelConfig(text=str(tiny_components["text"]), single_modality_fusion=choice)
    model = build_model(spec, load_dataset(tiny_dataset), 8, seed=0)
    assert model.fusion is not None
    expected = {"mean": "fusion/text_only", "attention": "fusion/merge_attention", "mlp": "fusion/pooled_mlp"}[choice]
    assert model.fusion.type_name == expected
    assert model.fusion.modalities == frozenset({"text"})
    model.save_pretrained(tmp_path / "model")
    loaded = PMMRec.from_pretrained(tmp_path / "model")
    assert loaded.fusion is not None and loaded.fusion.type_name == expected
    assert loaded.fusion.config == model.fusion.config
    for name, tensor in model.fusion.state_dict().items():
        assert torch.equal(loaded.fusion.state_dict()[name], tensor)


def test_a_fresh_attention_tower_starts_as_the_mean_and_can_move_away() -> None:
    fusion = MergeAttentionFusion(MergeAttentionConfig(dim=8, heads=2, modalities=("text",), gated=True)).eval()
    tokens = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    given = {"text": ModalityTokens(tokens, mask)}
    torch.testing.assert_close(fusion(given), masked_mean(tokens, mask))  # tanh(0) = 0: the mean tower exactly
    with torch.no_grad():
        fusion.gate.fill_(1.0)
    assert not torch.allclose(fusion(given), masked_mean(tokens, mask))
    with pytest.raises(ValueError, match="one or more"):
        MergeAttentionConfig(dim=8, heads=2, modalities=())


def test_a_fresh_mlp_tower_starts_as_the_mean_and_reads_one_modality() -> None:
    fusion = create_component("fusion", CreateOptions(dim=8, modalities=("text",)), "pooled_mlp").eval()
    tokens = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(fusion({"text": ModalityTokens(tokens, mask)}), masked_mean(tokens, mask))
    assert fusion.modalities == frozenset({"text"})
    with pytest.raises(ValueError, match="needs text tokens"):
        fusion({"vision": ModalityTokens(tokens, mask)})
    with pytest.raises(ConfigError, match="reads one modality, not 2"):
        create_component("fusion", CreateOptions(dim=8, modalities=("text", "vision")), "pooled_mlp")
    with pytest.raises(ValueError, match="modality must be one of"):
        PooledMlpConfig(dim=8, modality="smell")
