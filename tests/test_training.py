"""Training, unit level: config precedence and errors, AdamW groups, objectives switching, the frozen-prefix
cache, the ID baseline, cold-start recommendation and run-folder safety. Tiny seeded components throughout
(tiny.py), the tiny dataset and components from conftest.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
import yaml
from safetensors.torch import load_file

from pmmrec.data import load_dataset
from pmmrec.errors import ConfigError
from pmmrec.model import PMMRec
from pmmrec.prefix_cache import FrozenPrefixCache
from pmmrec.training.config import ModelConfig, finetune_defaults, pretrain_defaults
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.flat_options import overrides_from_options
from pmmrec.training.jobs import build_model
from pmmrec.training.module import TrainingModule
from pmmrec.training.optim import NO_DECAY_MARKERS, adamw, parameter_groups
from pmmrec.training.trainer import Trainer

MAX_LENGTH = tiny.MAX_LENGTH
NUM_ITEMS = tiny.NUM_ITEMS
text_model = tiny.text_model
text_vision_model = tiny.text_vision_model
run_cli = tiny.run_cli


@pytest.fixture(autouse=True)
def _environment(isolated: Path) -> None:
    """Every test here runs in the isolated environment (private cache, offline, one thread)."""


@pytest.fixture
def dataset_dir(tiny_dataset: Path) -> Path:
    return tiny_dataset


@pytest.fixture
def image_dataset_dir(tiny_image_dataset: Path) -> Path:
    return tiny_image_dataset


@pytest.fixture
def components(tiny_components: dict[str, Path]) -> dict[str, Path]:
    return tiny_components


config = tiny.train_config


def steps_of(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in records if r["event"] == "step"]


# ---- configuration -----------------------------------------------------------------------------------


def test_the_user_layers_flag_sets_a_fresh_user_encoders_blocks(tmp_path: Path) -> None:
    """`--user-layers` (once YAML only) reaches `model.user_layers` over a YAML file's value, and its help says 2."""
    path = tmp_path / "train.yaml"
    path.write_text("model: {user_layers: 4}\n")
    assert load_train_config(finetune_defaults(), path).model.user_layers == 4
    flagged = load_train_config(finetune_defaults(), path, overrides_from_options({"user_layers": 3}))
    assert flagged.model.user_layers == 3
    help_text = " ".join(tiny.run_cli("finetune", "--help").split())
    assert "--user-layers <int> Transformer blocks of a fresh user encoder. [default: 2]" in help_text


def test_config_precedence_defaults_then_yaml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(
        yaml.safe_dump(
            {"epochs": 3, "lr": 0.001, "batch_size": 16, "objectives": {"weights": {"nid": 0.5}, "nid": {"corruption_rate": 0.3}}}
        )
    )
    resolved = load_train_config(finetune_defaults(), path, {"epochs": 7, "batch_size": None, "seed": 5})
    assert resolved.epochs == 7  # flag beats YAML
    assert resolved.lr == 0.001 and resolved.batch_size == 16  # YAML beats defaults; an absent flag (None) changes nothing
    assert resolved.seed == 5  # flag
    assert resolved.max_length == (50 if resolved.recipe == "cpu" else 20)  # the recipe's (a text run on a CPU), else the class default
    weights = resolved.objectives.weights
    assert (weights.rec, weights.nicl, weights.nid, weights.rcl) == (1.0, 0.0, 0.5, 0.0)  # deep merge over finetune defaults
    assert resolved.objectives.nid.corruption_rate == 0.3
    assert load_train_config(pretrain_defaults()).batch_size == 64
    assert load_train_config(pretrain_defaults(), path).batch_size == 16
    assert load_train_config(pretrain_defaults()).objectives.weights.active() == ("rec", "nicl", "nid", "rcl")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs: 0\n", "epochs"),
        ("objectives:\n  weights:\n    nicl: -1\n", "objectives.weights.nicl"),
        ("epoch: 3\n", "epoch"),  # a typo is an unknown key, never silently ignored
        ("freeze: [txt]\n", "txt"),
        ("component_lr: {usr: 0.1}\n", "usr"),
        ("epochs: [1\n", "not valid YAML"),
        ("- 1\n- 2\n", "mapping"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_train_config(finetune_defaults(), path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_cli_reports_config_errors_and_mode_mismatch(tmp_path: Path, dataset_dir: Path, components: dict) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: -4\n")
    output = run_cli("finetune", "--data", dataset_dir, "--out", tmp_path / "run", "--config", bad, expect=1)
    assert f"error: {bad}: invalid training config: batch_size" in output and len(output.splitlines()) == 1
    wrong_mode = tmp_path / "pretrain.yaml"
    wrong_mode.write_text("mode: pretrain\n")
    output = run_cli("finetune", "--data", dataset_dir, "--out", tmp_path / "run", "--config", wrong_mode, expect=1)
    assert str(wrong_mode) in output and "pretrain" in output and output.startswith("error: ") and len(output.splitlines()) == 1
    output = run_cli("finetune", "--data", dataset_dir, "--out", tmp_path / "run", "--lr-component", "text", expect=2)
    assert "SLOT=LR" in output
    assert not (tmp_path / "run").exists()


# ---- optimiser groups -----------------------------------------------------------------------------------


def test_adamw_groups_decay_lr_and_freeze() -> None:
    model = text_vision_model()
    cfg = config("pretrain", weight_decay=0.05, lr=2e-4, component_lr={"user": 1e-3, "fusion": 5e-4}, freeze=["vision"])
    module = TrainingModule(model, cfg, torch.zeros(NUM_ITEMS + 1))
    assert module.nicl is not None and module.nid is not None  # objective heads are trained too
    groups = parameter_groups(module, cfg)
    names = {id(p): n for n, p in module.named_parameters()}
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))  # each parameter in one group only
    trainable = {id(p) for n, p in module.named_parameters() if p.requires_grad and not n.startswith("model.vision.")}
    assert set(grouped) == trainable
    assert not any(names[i].startswith("model.vision.") for i in grouped)  # --freeze vision
    assert not any(".embeddings." in names[i] and "text.backbone" in names[i] for i in grouped)  # frozen prefix
    by_slot = {g["slot"]: g["lr"] for g in groups}
    assert by_slot == {"fusion": 5e-4, "user": 1e-3, "text": 2e-4, "objectives": 2e-4}
    for group in groups:
        group_names = [names[id(p)] for p in group["params"]]
        if group["weight_decay"] > 0:
            assert group["weight_decay"] == 0.05
            assert all(not any(m in n.lower() for m in NO_DECAY_MARKERS) for n in group_names), group_names
            assert all(p.ndim >= 2 for p in group["params"])
        else:
            assert all(p.ndim < 2 or any(m in n.lower() for m in NO_DECAY_MARKERS) for n, p in zip(group_names, group["params"], strict=True))
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "model.user.positions.weight" in no_decay and "model.fusion.type_embeddings.weight" in no_decay
    assert any("LayerNorm" in n for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "model.text.projection.weight" in decayed


def test_the_fused_adamw_updates_as_the_reference_for_loop_does() -> None:
    """`adamw` uses torch's fused kernel on CPU (and CUDA); per-group learning rates and decay stay as they were."""
    module = TrainingModule(text_vision_model(), config("pretrain", weight_decay=0.05, lr=2e-3, component_lr={"user": 1e-2}),
                            torch.zeros(NUM_ITEMS + 1))  # fmt: skip
    groups = parameter_groups(module, config("pretrain", weight_decay=0.05, lr=2e-3, component_lr={"user": 1e-2}))
    params = [p for group in groups for p in group["params"]]
    start = [p.detach().clone() for p in params]
    fused = adamw([dict(g) for g in groups], torch.device("cpu"))
    assert fused.defaults["fused"] is True and all(g["fused"] for g in fused.param_groups)
    reference = torch.optim.AdamW([dict(g) for g in groups], lr=1.0, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    generator = torch.Generator().manual_seed(0)
    gradients = [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(3)]
    results = []
    for optimizer in (fused, reference):
        with torch.no_grad():
            for parameter, value in zip(params, start, strict=True):
                parameter.copy_(value)
        for step in gradients:
            for parameter, gradient in zip(params, step, strict=True):
                parameter.grad = gradient.clone()
            optimizer.step()
        results.append([p.detach().clone() for p in params])
    for after_fused, after_reference, before in zip(*results, start, strict=True):
        torch.testing.assert_close(after_fused, after_reference, rtol=1e-6, atol=1e-7)
        assert not torch.equal(after_fused, before)  # every trainable parameter moved


def test_freeze_keeps_a_component_fixed_while_the_rest_trains(tmp_path: Path, dataset_dir: Path) -> None:
    model = text_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, load_dataset(dataset_dir), config(freeze=["text"], max_steps=2), tmp_path / "run", progress=False)
    trainer.run()
    after = trainer.module.state_dict()
    text_keys = [k for k in before if k.startswith("text.")]
    user_keys = [k for k in before if k.startswith("user.")]
    assert all(torch.equal(before[k], after[f"model.{k}"]) for k in text_keys)
    assert any(not torch.equal(before[k], after[f"model.{k}"]) for k in user_keys)
    # The checkpoint leaves the frozen component out and names it (a resume takes it from the run's components).
    checkpoint = tmp_path / "run" / "checkpoints" / "last"
    frozen = json.loads((checkpoint / "frozen.json").read_text())["names"]
    assert sorted(frozen) == sorted(f"model.{k}" for k in text_keys if k in dict(model.named_parameters()))
    assert not set(frozen) & set(load_file(checkpoint / "training_module.safetensors"))
    with pytest.raises(ConfigError, match="every component is frozen"):
        Trainer(text_model(), load_dataset(dataset_dir), config(freeze=["text", "user"]), tmp_path / "r2", progress=False)
    with pytest.raises(ConfigError, match="no vision component"):
        Trainer(text_model(), load_dataset(dataset_dir), config(freeze=["vision"]), tmp_path / "r3", progress=False)


# ---- objectives ------------------------------------------------------------------------------------------


def test_nicl_is_skipped_for_a_text_only_model_with_a_notice_only_where_expected(
    tmp_path: Path, dataset_dir: Path, image_dataset_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A text-only run on text-only data (the demo's, the README's) skips NICL quietly: summary.json says so.
    The notice comes where a user could expect NICL: its weight was given, or the dataset has images."""
    trainer = Trainer(text_model(), load_dataset(dataset_dir), config("pretrain", max_steps=2), tmp_path / "run", progress=False)
    assert trainer.notices == [] and trainer.module.active_losses() == ["rec", "nid", "rcl"]
    trainer.run()  # pretrain defaults give NICL a non-zero weight: the run must still train
    assert "NICL" not in capsys.readouterr().out
    steps = steps_of(tmp_path / "run")
    assert len(steps) == 2 and all("nicl" not in s and {"rec", "nid", "rcl"} <= s.keys() for s in steps)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["objectives"] == ["rec", "nid", "rcl"] and summary["skipped_objectives"] == ["nicl"]
    asked = config("pretrain", max_steps=2, objectives={"weights": {"nicl": 0.4}})
    with_images = config("pretrain", max_steps=2)
    for data, settings, run in ((dataset_dir, asked, "asked"), (image_dataset_dir, with_images, "images")):
        trainer = Trainer(text_model(), load_dataset(data), settings, tmp_path / run, progress=False)
        (notice,) = trainer.notices  # says why, and how to switch NICL on
        assert notice.startswith("NICL skipped: it needs both a text and a vision encoder")
        assert "--modality text --modality vision" in notice and "images.lmdb" in notice


def test_all_four_objectives_train_with_text_and_vision(tmp_path: Path, image_dataset_dir: Path) -> None:
    trainer = Trainer(
        text_vision_model(), load_dataset(image_dataset_dir), config("pretrain", max_steps=2), tmp_path / "run", progress=False
    )
    assert trainer.notices == [] and trainer.module.active_losses() == ["rec", "nicl", "nid", "rcl"]
    assert trainer.module.prefix_cache is not None and trainer.module.prefix_cache.caches_image
    trainer.run()
    steps = steps_of(tmp_path / "run")
    assert all(np.isfinite([s[k] for k in ("loss", "rec", "nicl", "nid", "rcl")]).all() for s in steps)
    weights = trainer.config.objectives.weights
    for s in steps:
        combined = weights.rec * s["rec"] + weights.nicl * s["nicl"] + weights.nid * s["nid"] + weights.rcl * s["rcl"]
        assert s["loss"] == pytest.approx(combined, rel=1e-5)


def test_finetune_defaults_train_next_item_only_and_weights_switch_objectives_on(tmp_path: Path, dataset_dir: Path) -> None:
    dataset = load_dataset(dataset_dir)
    assert Trainer(text_model(), dataset, config(), tmp_path / "a", progress=False).module.active_losses() == ["rec"]
    switched = config(objectives={"weights": {"nid": 0.2, "rcl": 0.3}})
    assert Trainer(text_model(), dataset, switched, tmp_path / "b", progress=False).module.active_losses() == ["rec", "nid", "rcl"]


# ---- frozen-prefix cache --------------------------------------------------------------------------------


@pytest.mark.parametrize("modalities", ["text", "text+clip", "text+efficientnet"])
def test_frozen_prefix_cache_gives_the_uncached_loss_and_gradients(
    modalities: str, dataset_dir: Path, image_dataset_dir: Path
) -> None:
    from pmmrec.data import TrainSequences, leave_one_out
    from pmmrec.inference import encode_catalogue, make_collator

    both = modalities != "text"
    dataset = load_dataset(image_dataset_dir if both else dataset_dir)
    model = text_vision_model(modalities.split("+")[1]) if both else text_model()
    assert model.text.frozen_depth == 1  # type: ignore[union-attr]
    cfg = config("pretrain")
    collator = make_collator(model, dataset)
    split = leave_one_out(dataset.sequences, 3)
    samples = TrainSequences(split.train, MAX_LENGTH)
    batch = collator([samples[i] for i in range(6)])
    counts = torch.ones(dataset.num_items + 1)
    results = []
    for cached in (False, True):
        torch.manual_seed(0)  # same initial objective heads (NICL projections, NID head)
        module = TrainingModule(copy.deepcopy(model), cfg, torch.log(counts / counts.sum()))
        module.train()
        if cached:
            module.prefix_cache = FrozenPrefixCache.for_model(module.model, collator, torch.device("cpu"))
            assert module.prefix_cache is not None and module.prefix_cache.caches_text
            assert module.prefix_cache.caches_image == both
        torch.manual_seed(123)  # same dropout masks in the trainable tops
        losses = module(batch, corruption_seed=7)
        total = module.weights.combine(losses)
        total.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        table = (
            module.prefix_cache.item_table(module.model)
            if cached
            else encode_catalogue(module.model, collator, dataset.num_items, torch.device("cpu"))
        )
        results.append(({k: float(v.detach()) for k, v in losses.items()}, grads, table))
    (plain, plain_grads, plain_table), (fast, fast_grads, fast_table) = results
    assert set(plain) == set(fast) == ({"rec", "nicl", "nid", "rcl"} if both else {"rec", "nid", "rcl"})
    for name in plain:
        assert fast[name] == pytest.approx(plain[name], rel=1e-5, abs=1e-6), name
    assert plain_grads.keys() == fast_grads.keys() and len(plain_grads) > 0
    assert not any("text.backbone.embeddings" in n for n in fast_grads)  # the frozen bottom gets no gradient
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(fast_table, plain_table, rtol=1e-4, atol=1e-5)


# ---- the ID baseline through the CLI ----------------------------------------------------------------------


def test_item_tower_id_trains_the_sasrec_id_baseline(tmp_path: Path, dataset_dir: Path, components: dict) -> None:
    settings = tmp_path / "id.yaml"
    settings.write_text("lr: 0.01\nepochs: 2\nbatch_size: 4\n")
    run = tmp_path / "run"
    run_cli(
        "finetune", "--data", dataset_dir, "--out", run, "--item-tower", "id", "--dim", "16", "--max-length", MAX_LENGTH,
        "--config", settings, "--lr", "0.005", "--quiet", "--device", "cpu",
    )  # fmt: skip
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["lr"], saved["epochs"], saved["batch_size"], saved["max_length"]) == (0.005, 2, 4, MAX_LENGTH)
    manifest = json.loads((run / "model" / "pmmrec.json").read_text())
    assert manifest["modalities"] == ["id"] and set(manifest["components"]) == {"item_tower", "user"}
    trained = PMMRec.from_pretrained(run / "model")
    dataset = load_dataset(dataset_dir)
    fresh = build_model(ModelConfig(item_tower="id", dim=16), dataset, MAX_LENGTH, seed=42)  # the run's initialisation
    assert trained.item_tower.item_ids == dataset.item_ids  # type: ignore[union-attr]
    assert not torch.equal(trained.item_tower.state_dict()["embeddings.weight"], fresh.item_tower.state_dict()["embeddings.weight"])  # type: ignore[union-attr]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["objectives"] == ["rec"] and summary["steps"] == 2 * 4 and len(summary["history"]) == 2
    output = run_cli("finetune", "--data", dataset_dir, "--out", tmp_path / "r2", "--item-tower", "id", "--text", components["text"], expect=1)
    assert "--item-tower id replaces the content tower" in output


# ---- recommendation ------------------------------------------------------------------------------------------


def test_recommend_scores_cold_start_items_from_their_text(tmp_path: Path, dataset_dir: Path) -> None:
    model_dir = text_model().save_pretrained(tmp_path / "model")
    dataset = load_dataset(dataset_dir)
    history = "i3 i4 i6"
    ranked = json.loads(run_cli("recommend", "--model", model_dir, "--data", dataset_dir, "--history", history, "--k", "3", "--json", "--keep-seen"))
    top = ranked[0]
    twin_text = dataset.item_texts[dataset.item_ids.index(top["item_id"])]
    extra = tmp_path / "EXTRA_items.tsv"
    extra.write_text(f"new-1\t{twin_text}\nnew-2\tA completely different cooking show about bread\n")
    ranked = json.loads(
        run_cli("recommend", "--model", model_dir, "--data", dataset_dir, "--history", history, "--k", "2", "--json", "--items", extra, "--keep-seen")
    )
    # The never-trained item has the same text as the best catalogue item, so it scores the same and shares the top.
    assert {r["item_id"] for r in ranked} == {top["item_id"], "new-1"}
    assert ranked[0]["score"] == pytest.approx(ranked[1]["score"], abs=1e-4)
    everything = json.loads(
        run_cli("recommend", "--model", model_dir, "--data", dataset_dir, "--history", history, "--k", "100", "--json", "--items", extra, "--keep-seen")
    )
    assert len(everything) == NUM_ITEMS + 2 and {"new-1", "new-2"} <= {r["item_id"] for r in everything}
    # A cold-start item can also be part of the history.
    run_cli("recommend", "--model", model_dir, "--data", dataset_dir, "--history", "i3 new-2", "--items", extra)
    clash = tmp_path / "clash.tsv"
    clash.write_text("i1\tsome text\n")
    assert "already in the dataset" in run_cli(
        "recommend", "--model", model_dir, "--data", dataset_dir, "--history", history, "--items", clash, expect=1
    )


def test_recommend_extra_items_is_refused_for_an_id_model(tmp_path: Path, dataset_dir: Path) -> None:
    dataset = load_dataset(dataset_dir)
    model = build_model(ModelConfig(item_tower="id", dim=16), dataset, MAX_LENGTH, seed=0)
    model_dir = model.save_pretrained(tmp_path / "model")
    extra = tmp_path / "extra.tsv"
    extra.write_text("new-1\tsome text\n")
    output = run_cli("recommend", "--model", model_dir, "--data", dataset_dir, "--user", "u0", "--items", extra, expect=1)
    assert "ID-based model cannot score items it was not trained on" in output
    ranked = json.loads(run_cli("recommend", "--model", model_dir, "--data", dataset_dir, "--user", "u0", "--k", "4", "--exclude-seen", "--json"))
    seen = {dataset.item_ids[i - 1] for i in dataset.sequences[0]}
    assert len(ranked) == 4 and not seen & {r["item_id"] for r in ranked}
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)


# ---- checkpoints ------------------------------------------------------------------------------------------------


def test_every_rank_resumes_its_own_rng_stream(tmp_path: Path, dataset_dir: Path) -> None:
    """Ranks draw different amounts of randomness (dropout over their own items): each must get its own back."""
    from pmmrec.training import run_dir as checkpoint

    dataset = load_dataset(dataset_dir)
    run = tmp_path / "run"
    Trainer(text_model(), dataset, config(max_steps=1), run, progress=False).run()
    path = run / "checkpoints" / "last" / checkpoint.STATE
    state = torch.load(path, weights_only=True)
    assert len(state["rng_per_rank"]) == 1 and torch.equal(state["rng_per_rank"][0]["torch"], state["rng"]["torch"])
    torch.manual_seed(1)
    rank0 = checkpoint.rng_state()
    torch.manual_seed(2)
    rank1 = checkpoint.rng_state()
    torch.save(state | {"rng": rank0, "rng_per_rank": [rank0, rank1]}, path)  # as two processes would write it
    trainer = Trainer(text_model(), dataset, config(max_steps=1), run, resume=True, progress=False)
    trainer.context = dataclasses.replace(trainer.context, rank=1, world_size=2)
    trainer._restore()
    assert torch.equal(torch.get_rng_state(), rank1["torch"])
    trainer.context = dataclasses.replace(trainer.context, rank=0, world_size=3)  # another world size: rank 0's
    trainer._restore()
    assert torch.equal(torch.get_rng_state(), rank0["torch"])


def test_a_rank_that_cannot_see_best_stops_instead_of_testing_another_model(tmp_path: Path, dataset_dir: Path) -> None:
    import shutil

    trainer = Trainer(text_model(), load_dataset(dataset_dir), config(max_steps=1), tmp_path / "run", progress=False)
    trainer.run()
    shutil.rmtree(tmp_path / "run" / "best")  # as on a machine that does not share --out with rank 0
    with pytest.raises(ConfigError, match=r"best: missing on rank 0; with several nodes, --out must be on a filesystem that every node shares$"):
        trainer._finish({"best_epoch": 1, "history": [], "global_step": 1})


# ---- run folders ------------------------------------------------------------------------------------------------


def test_a_non_empty_out_is_refused_without_resume(tmp_path: Path, dataset_dir: Path, components: dict) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    common = ("--data", dataset_dir, "--out", run, "--text", components["text"], "--user", components["user"], "--max-length", MAX_LENGTH, "--quiet")
    output = run_cli("finetune", *common, expect=1)
    assert f"{run} is not empty (notes.txt); use --resume or another --out" in output
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"] and (run / "notes.txt").read_text() == "keep me"
    fresh = tmp_path / "fresh"
    # --resume where nothing was checkpointed yet (killed early) starts the run from the beginning ...
    output = run_cli("finetune", *common[:2], "--out", fresh, *common[4:], "--max-steps", "1", "--resume")
    assert "starting the run from the beginning" in output and (fresh / "model").is_dir()
    # ... but never in a folder that holds something else.
    assert "but no pmmrec run" in run_cli("finetune", *common[:2], "--out", run, *common[4:], "--resume", expect=1)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    # A finished run is not empty either, and resuming it with other options is refused.
    done = tmp_path / "done"
    run_cli("finetune", *common[:2], "--out", done, *common[4:], "--max-steps", "1")
    assert "is not empty" in run_cli("finetune", *common[:2], "--out", done, *common[4:], "--max-steps", "1", expect=1)
    output = run_cli("finetune", *common[:2], "--out", done, *common[4:], "--max-steps", "2", "--resume", expect=1)
    assert "differs from this run's options in max_steps (1 -> 2)" in output  # names the key and both values


def test_build_model_refuses_components_of_different_widths_naming_each(tmp_path: Path, dataset_dir: Path) -> None:
    from pmmrec.errors import AssemblyError

    text = tiny.tiny_text_encoder().save_pretrained(tmp_path / "text")
    user = tiny.tiny_user_encoder(dim=16).save_pretrained(tmp_path / "user")
    spec = ModelConfig(text=str(text), user=str(user), dim=32)  # --dim does not override what the components say
    with pytest.raises(AssemblyError, match=r"^components disagree on the embedding width: text d=32, user d=16$"):
        build_model(spec, load_dataset(dataset_dir), MAX_LENGTH, seed=0)


def test_the_trainer_builds_its_collator_and_module_configured(tmp_path: Path, image_dataset_dir: Path) -> None:
    """Full softmax: batches list every item known at training time; a prefix cache holding every image: batches
    carry no pixels."""
    dataset = load_dataset(image_dataset_dir)
    full = config("pretrain", max_steps=1, objectives={"next_item": {"softmax": "full"}})
    trainer = Trainer(text_vision_model(), dataset, full, tmp_path / "run", progress=False)
    assert trainer.module.full_softmax and trainer.collator.all_items_as_candidates
    assert trainer.module.prefix_cache is not None and trainer.module.prefix_cache.caches_image
    assert not trainer.collator.include_images
    batch = trainer.collator([np.array([1, 2, 3])])
    assert batch.pixel_values is None and batch.unique_items.tolist() == trainer.known_items.tolist()
    assert trainer.collator.known_items is trainer.known_items and 0 < len(trainer.known_items) <= NUM_ITEMS


def test_trainable_layers_of_a_loaded_encoder_can_be_changed(dataset_dir: Path, components: dict) -> None:
    from pmmrec.data import load_dataset
    from pmmrec.training.jobs import build_model

    dataset = load_dataset(dataset_dir)
    as_saved = build_model(ModelConfig(text=str(components["text"]), user=str(components["user"])), dataset, MAX_LENGTH, 0)
    one_layer = build_model(
        ModelConfig(text=str(components["text"]), user=str(components["user"]), text_trainable_layers=1),
        dataset, MAX_LENGTH, 0,
    )  # fmt: skip
    assert as_saved.text.config.trainable_layers == 2 and one_layer.text.config.trainable_layers == 1
    assert one_layer.text.parameter_counts()[0] < as_saved.text.parameter_counts()[0]
    trainable = [i for i, layer in enumerate(one_layer.text.layers) if any(p.requires_grad for p in layer.parameters())]
    assert trainable == [len(one_layer.text.layers) - 1]
    with pytest.raises(ConfigError, match="text_trainable_layers"):
        load_train_config(finetune_defaults(), overrides={"model": {"text": str(components["text"]), "text_trainable_layers": -1}})


def test_nicl_keeps_encoding_items_when_the_tower_is_frozen(tmp_path: Path, image_dataset_dir: Path) -> None:
    """Guards against the per-epoch item table replacing encoding while NICL is on: NICL needs each step's
    per-modality pooled states, so with a frozen tower and NICL active every step still encodes its items."""
    model = text_vision_model()
    trainer = Trainer(
        model,
        load_dataset(image_dataset_dir),
        config("pretrain", max_steps=2, freeze=["text", "vision", "fusion"]),
        tmp_path / "run",
        progress=False,
    )
    assert trainer.module.nicl is not None and not trainer.table_per_epoch
    calls: list[int] = []
    original = model.embed_items

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    model.embed_items = counting  # type: ignore[method-assign]
    step = trainer._step
    per_step: list[int] = []

    def counted_step(*args: object, **kwargs: object) -> dict[str, float]:
        before = len(calls)
        values = step(*args, **kwargs)  # type: ignore[arg-type]
        per_step.append(len(calls) - before)
        return values

    trainer._step = counted_step  # type: ignore[method-assign]
    trainer.run()
    assert trainer.module.item_table is None
    assert per_step == [1, 1]  # one encoding of the batch's distinct items per step
    assert all("nicl" in record for record in steps_of(tmp_path / "run"))


def test_a_frozen_tower_without_the_prefix_cache_is_encoded_once_per_epoch(tmp_path: Path, dataset_dir: Path) -> None:
    """Guards against the per-epoch table being built without the catalogue's inputs when no prefix cache exists."""
    trainer = Trainer(text_model(), load_dataset(dataset_dir), config(freeze=["text"], cache_frozen=False, max_steps=2), tmp_path / "run", progress=False)
    assert trainer.table_per_epoch and trainer.module.prefix_cache is None
    trainer.run()
    assert trainer.module.item_table is not None and trainer.module.item_table.shape == (NUM_ITEMS + 1, tiny.DIM)
    assert torch.count_nonzero(trainer.module.item_table[1:].abs().sum(dim=1)) == NUM_ITEMS  # every item encoded
