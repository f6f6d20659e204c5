"""The training jobs behind `pmmrec pretrain` and `pmmrec finetune`: build the model the config names, train it,
write the artefacts (pretrain: one folder per component; finetune: the assembled best model)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from pmmrec.cards import TrainingFacts
from pmmrec.components import Component, CreateOptions, ItemEncoder, TextEncoder, create_component, default_heads
from pmmrec.components.options import DEFAULT_DIM
from pmmrec.data import Dataset, load_dataset, registered_readers
from pmmrec.distributed import choose_device
from pmmrec.errors import ConfigError, describe_validation_error
from pmmrec.model import ComponentSource, PMMRec, common_width, load_slot
from pmmrec.slots import CONTENT_SLOTS, MODALITY_SLOTS, REFERENCE_SLOTS, SLOT
from pmmrec.training.config import (
    ModelConfig,
    TrainConfig,
    finetune_defaults,
    pretrain_defaults,
)
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.config_yaml import dump_train_config
from pmmrec.training.determinism import deterministic_mode
from pmmrec.training.outcome import TrainResult
from pmmrec.training.progress import start_lines
from pmmrec.training.refit import refit
from pmmrec.training.run_dir import check_run_folder
from pmmrec.training.trainer import Trainer

Mode = Literal["pretrain", "finetune"]
DEFAULT_MODALITY = "text"  # what a run reads when neither --modality nor an encoder says


def build_model(spec: ModelConfig, dataset: Dataset, max_length: int, seed: int) -> PMMRec:
    """Load the referenced components, create the missing parts fresh (seeded), and assemble."""
    torch.manual_seed(seed)
    loaded: dict[str, Component | None] = {
        slot: load_slot(slot, getattr(spec, slot))[0] for slot in REFERENCE_SLOTS
    }
    given_dim = common_width(loaded)  # refuses given components that disagree, naming their widths
    dim = spec.dim or given_dim
    if spec.item_tower == "id":
        if any(getattr(spec, slot) for slot in CONTENT_SLOTS):
            flags = "/".join(SLOT[slot].flag for slot in CONTENT_SLOTS)
            raise ConfigError(f"--item-tower id replaces the content tower: drop {flags}")
        if spec.text_word_embeddings:
            raise ConfigError("--text-word-embeddings: an ID tower has no text encoder")
        dim = dim or DEFAULT_DIM
        item_tower = create_component("id", CreateOptions(dim=dim, item_ids=tuple(dataset.item_ids)))
        return PMMRec.assemble(user=loaded["user"] or _fresh_user(spec, dim, max_length), item_tower=item_tower)
    given_modalities = [slot for slot in MODALITY_SLOTS if loaded[slot] is not None]
    modalities = set(spec.modalities or given_modalities or [DEFAULT_MODALITY])
    for modality in MODALITY_SLOTS:
        layers = getattr(spec, f"{modality}_trainable_layers")
        encoder = loaded[modality]
        if encoder is not None and modality not in modalities:
            raise ConfigError(f"--{modality} was given but --modalities excludes {modality}")
        if encoder is None and modality in modalities:
            backbone = getattr(spec, f"{modality}_backbone")
            words = spec.text_word_embeddings and modality == "text"
            options = CreateOptions(
                dim=dim, backbone=backbone, trainable_layers=2 if layers is None else layers, word_embeddings=words
            )
            encoder = loaded[modality] = create_component(SLOT[modality].kind, options)
            dim = dim or encoder.dim
            continue
        if isinstance(encoder, TextEncoder) and spec.text_word_embeddings:
            encoder.add_word_embeddings_table()
        if isinstance(encoder, ItemEncoder) and layers is not None:
            try:
                encoder.set_trainable_layers(layers)
            except ValidationError as exc:
                raise ConfigError(f"--{modality}-trainable-layers: {describe_validation_error(exc)}") from None
    if spec.text_word_embeddings and loaded["text"] is None:
        raise ConfigError("--text-word-embeddings: this model has no text encoder (see --modality)")
    if loaded["user"] is None:
        loaded["user"] = _fresh_user(spec, dim or DEFAULT_DIM, max_length)
    if loaded["fusion"] is None and len(modalities) == 1 and spec.single_modality_fusion != "mean":
        variant = {"attention": "merge_attention", "mlp": "pooled_mlp"}[spec.single_modality_fusion]
        fusion_options = CreateOptions(dim=dim or DEFAULT_DIM, modalities=tuple(modalities))
        loaded["fusion"] = create_component("fusion", fusion_options, variant)
    return PMMRec.assemble(**{slot: loaded[slot] for slot in REFERENCE_SLOTS})


def _fresh_user(spec: ModelConfig, dim: int, max_length: int) -> Component:
    heads = spec.user_heads or default_heads(dim, 2)
    options = CreateOptions(dim=dim, heads=heads, layers=spec.user_layers, max_length=max_length, dropout=spec.dropout)
    return create_component("user", options)


def _record_sources(model: PMMRec, spec: ModelConfig) -> None:
    """Keep the references that initialised each component (the weights then changed by training)."""
    for slot in REFERENCE_SLOTS:
        reference = getattr(spec, slot)
        if reference is not None and slot in model.components():
            previous = model.sources.get(slot)
            model.sources[slot] = ComponentSource(
                requested=reference, resolved_commit=previous.resolved_commit if previous else None, created=False
            )


def training_facts(
    result: TrainResult,
    dataset: Dataset,
    config: TrainConfig,
    objectives: list[str],
    learning_rates: dict[str, float] | None = None,
) -> TrainingFacts:
    """What the model cards of a run's artefacts say about its training."""
    refit_text = config.refit and result.best_epoch and (
        f"{result.best_epoch} epochs on every interaction but each user's test target"
    )
    # a refit's model trained on the validation targets: its card's validation figures are the chosen model's
    valid_name = f"{dataset.name} valid" + (" (the model validation chose, before the refit)" if refit_text else "")
    return TrainingFacts(
        datasets=(dataset.name,),
        metrics={valid_name: result.best_valid, f"{dataset.name} test": result.test},
        training={
            "mode": config.mode,
            "data": f"{dataset.name} ({dataset.num_items} items, {len(dataset.user_ids)} users, images: {dataset.image_kind})",
            "objectives": ", ".join(f"{name} x {getattr(config.objectives.weights, name)}" for name in objectives),
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "lr": ", ".join(f"{slot} {rate:g}" for slot, rate in (learning_rates or {}).items()) or config.lr,
            "batch_size": config.batch_size,
            **({"refit": refit_text} if refit_text else {}),
        },
    )


def announce_run(config: TrainConfig, out: Path, resume: bool, config_file: str | None) -> None:
    """Before anything is loaded: refuse a run folder or device the run cannot use, then print the run's first
    lines (its folder and the settings that differ from the command's defaults; rank 0 only)."""
    resuming = check_run_folder(out, resume, dump_train_config(config))
    choose_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    if os.environ.get("RANK", "0") == "0":
        for line in start_lines(config, out, resuming, config_file):
            tqdm.write(line)


def train(
    mode: Mode,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    config_path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Pre-train or fine-tune: build the model the config names, train it, write the run's artefacts.

    pretrain writes RUN/components/<slot> (each component its own artefact); finetune writes RUN/model (the
    assembled best model). Options: defaults of the mode < (`resume`) the run's own RUN/config.yaml < the YAML file
    < `overrides` (nested like the YAML); what none gives takes its item tower's default.
    """
    defaults = pretrain_defaults() if mode == "pretrain" else finetune_defaults()
    # A resumed run starts from the options it saved: what is not given again keeps its value, so a run resumes even
    # after the defaults changed (issue 28.1); an option given differently is still refused by the run folder.
    saved = Path(out) / "config.yaml" if resume and os.path.lexists(Path(out) / "config.yaml") else None
    config = load_train_config(defaults, config_path, overrides, saved=saved)
    if config.mode != mode:
        raise ConfigError(f"{config_path or saved}: mode is {config.mode!r} but this is `pmmrec {mode}`")
    config_file = str(config_path) if config_path is not None else None
    announce_run(config, Path(out), resume, config_file)
    dataset = load_dataset(data)
    spec = config.model
    if mode == "pretrain" and spec.modalities is None and not any(getattr(spec, slot) for slot in MODALITY_SLOTS):
        provided = [modality for modality, reader in registered_readers().items() if reader.provided_by(dataset)]
        if len(provided) > 1:  # pre-training reads every modality the dataset holds (one: the default, text)
            spec = spec.model_copy(update={"modalities": provided})
    model = build_model(spec, dataset, config.max_length, config.seed)
    _record_sources(model, spec)
    with deterministic_mode(config.deterministic):  # before the Trainer: it already computes cached prefixes
        trainer = Trainer(
            model, dataset, config, Path(out), resume=resume, progress=progress, config_file=config_file,
            announced=True,
        )  # fmt: skip
        result = trainer.run()
        if mode == "finetune" and config.refit:

            def fresh_model() -> PMMRec:  # the run's start again (same seed)
                model = build_model(spec, dataset, config.max_length, config.seed)
                _record_sources(model, spec)
                return model

            result, trainer = refit(result, trainer, fresh_model, resume)
    if trainer.context.is_main and result.model is not None:
        facts = training_facts(result, dataset, config, trainer.facts.objectives, trainer.facts.learning_rates)
        if mode == "pretrain":
            for slot, component in result.model.components().items():
                name = f"pmmrec {slot} ({dataset.name})"
                component.save_pretrained(Path(out) / "components" / slot, overwrite=True, card=facts.named(name))
        else:
            name = f"pmmrec model ({dataset.name})"
            split = trainer.split_record
            result.model.save_pretrained(Path(out) / "model", overwrite=True, card=facts.named(name), split_record=split)
    return result
