"""Typed training configuration: one model for pretrain and finetune (loaded in layers by `config_loading`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from pmmrec.commands import DEVICE_HELP
from pmmrec.data.split import SPLIT_KEYS
from pmmrec.objectives import ObjectiveWeights, registered_objectives
from pmmrec.slots import MODALITY_SLOTS, REFERENCE_SLOTS, SLOT
from pmmrec.training.tower_defaults import (
    CPU_RECIPE,
    DEFAULT_TOWER,
    TOWER_DEFAULTS,
    Recipe,
    cpu_recipe_text,
    tower_default_text,
    with_recipe_defaults,
    with_tower_defaults,
)
from pmmrec.training.tower_defaults import RECIPE_DEPENDENT as RECIPE_DEPENDENT  # the CLI's help reads both from here
from pmmrec.training.tower_defaults import TOWER_DEPENDENT as TOWER_DEPENDENT

PRETRAIN_BATCH_SIZE = 64  # pretrain's own default, whatever the tower


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _objectives_config() -> type[_Strict]:
    """ObjectivesConfig: the weights, then each registered objective's options under its options key."""
    names = ", ".join(registered_objectives())
    fields: dict[str, Any] = {
        "weights": (ObjectiveWeights, Field(default_factory=ObjectiveWeights, description=f"{names} weights."))
    }
    for objective in registered_objectives().values():
        options = objective.config_class
        fields[objective.options_key] = (options, Field(default_factory=options, description=objective.options_description))
    model = create_model("ObjectivesConfig", __base__=_Strict, __module__=__name__, **fields)
    model.__doc__ = "Which losses are trained, with what weight and options."
    return model


ObjectivesConfig = _objectives_config()


def _model_config() -> type[_Strict]:
    """ModelConfig, with a reference field per slot and a backbone and trainable-layers field per modality,
    generated from pmmrec.slots' table (field order: the order of config.yaml, which resuming compares)."""
    reference = {slot: (str | None, Field(default=None, description=SLOT[slot].reference_help)) for slot in REFERENCE_SLOTS}
    backbone = {
        f"{slot}_backbone": (
            str if SLOT[slot].backbone is not None else str | None,
            Field(default=SLOT[slot].backbone, description=f"Backbone of a fresh {SLOT[slot].title.lower()}."),
        )
        for slot in MODALITY_SLOTS
    }
    layers = {
        f"{slot}_trainable_layers": (
            int | None,
            Field(
                default=None,
                ge=0,
                le=96,
                description=f"{SLOT[slot].title}: top {SLOT[slot].layers_word} trained (default: 2 for a fresh encoder, "
                "a given encoder's own"
                + (f"; {cpu_recipe_text(f'model.{slot}_trainable_layers')})." if f"model.{slot}_trainable_layers" in CPU_RECIPE else ")."),
            ),
        )
        for slot in MODALITY_SLOTS
    }
    fields: dict[str, Any] = {
        **reference,
        "modalities": (
            list[Literal[MODALITY_SLOTS]] | None,
            Field(
                default=None,
                description="Item modalities (default: those of the given encoders, else text; pretrain on a dataset "
                "with images: text and vision).",
            ),
        ),
        "item_tower": (
            Literal["content", "id"],
            Field(default="content", description="content (PMMRec) or id (the SASRec-ID baseline: one embedding per item)."),
        ),
        **backbone,
        "dim": (
            int | None,
            Field(
                default=None,
                ge=1,
                le=8192,
                description="Embedding width d of fresh components (default: the given components' width, else "
                f"{TOWER_DEFAULTS['id']['model.dim']} for ID towers and the text backbone's width (384 for minilm) for "
                f"content towers, {cpu_recipe_text('model.dim')}; null: the given components' width, else the text "
                "backbone's, else 384).",
            ),
        ),
        **layers,
        **_fresh_part_fields(),
    }
    model = create_model("ModelConfig", __base__=_Strict, __module__=__name__, **fields)
    model.__doc__ = "Which components a run starts from (references), and how the missing ones are created."
    return model


def _fresh_part_fields() -> dict[str, Any]:
    """ModelConfig's fields after the per-modality layers: how fresh parts are built (in config.yaml's order)."""
    return {
        "text_word_embeddings": (
            bool,
            Field(default=False, description="Text encoder: a trained embedding per word piece, zero at first, added to "
                  "each projected token and trained at the fresh parts' rate; no backbone layer runs for it, so it is "
                  "cheap on a CPU (a given encoder without one gets one; false leaves a given encoder as it is; "
                  f"default: false, {cpu_recipe_text('model.text_word_embeddings')}; docs/training.md)."),
        ),
        "single_modality_fusion": (
            Literal["mean", "attention", "mlp"],
            Field(default="mean", description="Fresh item tower over one modality: mean (of its projected tokens, no "
                  "weights: the method's), attention (a gated merge-attention layer over them first) or mlp (the mean "
                  "plus a residual MLP of it, once per item); both start as the mean."),
        ),
        "user_layers": (int, Field(default=2, ge=1, le=48, description="Transformer blocks of a fresh user encoder.")),
        "user_heads": (
            int | None,
            Field(default=None, ge=1, le=256, description="Attention heads of a fresh user encoder (default: up to 2)."),
        ),
        "dropout": (
            float,
            Field(
                default=0.3,
                ge=0.0,
                lt=1.0,
                description="Dropout of a fresh user encoder (0.3: chosen on validation, docs/benchmarks.md; paper: 0.1).",
            ),
        ),
    }


ModelConfig = _model_config()


class TrainConfig(_Strict):
    """Everything that decides a training run; saved resolved as RUN/config.yaml."""

    mode: Literal["pretrain", "finetune"] = Field(default="finetune", description="Which command this run is.")
    epochs: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Training epochs, over which the cosine schedule decays (paper fine-tuning: 5; --patience can "
        "still stop sooner); default: until validation NDCG@10 has not improved for --patience epochs, at most "
        f"max_epochs; {cpu_recipe_text('epochs')}.",
    )
    max_epochs: int = Field(
        default=TOWER_DEFAULTS[DEFAULT_TOWER]["max_epochs"],
        ge=1,
        le=10_000,
        description="Cap on epochs when --epochs is not given; the cosine schedule decays to 0 over it (default: "
        f"{tower_default_text('max_epochs')}).",
    )
    batch_size: int = Field(
        default=TOWER_DEFAULTS[DEFAULT_TOWER]["batch_size"],
        ge=1,
        le=65_536,
        description=f"Training windows per batch per process (default: {tower_default_text('batch_size')}; "
        f"pretrain: {PRETRAIN_BATCH_SIZE}).",
    )
    eval_batch_size: int = Field(default=256, ge=1, le=1_000_000, description="Users per evaluation batch.")
    item_batch_size: int = Field(default=256, ge=1, le=1_000_000, description="Items per catalogue-encoding batch.")
    max_length: int = Field(default=20, ge=1, le=4096, description="Items per input sequence (default: 20, the "
                            f"paper's; {cpu_recipe_text('max_length')} unless a user encoder is given).")  # fmt: skip
    min_length: int = Field(default=3, ge=3, le=1_000_000, description="Users with fewer interactions are dropped.")
    max_history: int | None = Field(
        default=None,
        ge=3,
        description="Keep only each user's last N interactions before splitting (the paper's preprocessing: "
        "max_length + 3); default: every interaction.",
    )
    window: Literal["tiles", "crop", "last"] = Field(
        default="tiles",
        description="Training windows of max_length + 1 items: tiles = windows ending at each user's last item that "
        "cover the whole sequence (every interaction a target once per epoch); crop = one random window per user per "
        "epoch; last = only each user's last window (the reference code's).",
    )
    known_items: list[str] = Field(
        default_factory=list,
        description="Item ids that exist at training time but occur in no training sequence (e.g. catalogue items "
        "nobody interacted with yet): the full softmax scores them as negatives and an ID tower trains their rows. "
        "Items of the training sequences are always known; no other item is ever a negative (issue 24).",
    )
    train_user_share: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Share of the users whose training sequences train (a learning curve); every user is still "
        "evaluated, with their history as input. The users are a seeded sample, nested across shares.",
    )
    train_user_seed: int = Field(
        default=0, ge=0, description="Seed of the sample of training users (train_user_share); not the run's seed."
    )
    passes_per_epoch: int = Field(
        default=1,
        ge=1,
        le=10_000,
        description="Passes over the training windows per epoch (each in its own order): a run on a small share of "
        "the users can take as many steps between validations as a run on all of them.",
    )
    lr: float | None = Field(
        default=None,
        gt=0,
        le=1.0,
        description="Learning rate of every trained part (paper: 1e-4); default: by what is trained (fresh_lr for a "
        "user encoder, fusion or ID table created for this run and for objective heads, pretrained_lr otherwise).",
    )
    fresh_lr: float = Field(
        default=TOWER_DEFAULTS[DEFAULT_TOWER]["fresh_lr"],
        gt=0,
        le=1.0,
        description="Default rate of parts created for this run (when lr is not given; default: "
        f"{tower_default_text('fresh_lr')}; {cpu_recipe_text('fresh_lr')}).",
    )
    pretrained_lr: float = Field(
        default=1e-4,
        gt=0,
        le=1.0,
        description="Default rate of pretrained parts: text and vision encoders, transferred components (default: "
        f"1e-4; {cpu_recipe_text('pretrained_lr')}).",
    )
    component_lr: dict[str, float] = Field(
        default_factory=dict,
        description="Per-slot learning rates overriding lr (text, vision, fusion, user, item_tower).",
    )
    weight_decay: float = Field(
        default=0.1, ge=0.0, le=10.0, description="AdamW decay; never on LayerNorm, bias, embeddings."
    )
    warmup_steps: int = Field(default=0, ge=0, description="Linear warm-up steps.")
    schedule: Literal["cosine", "constant"] = Field(default="cosine", description="Learning rate after warm-up.")
    grad_clip: float | None = Field(default=1.0, gt=0, description="Max gradient norm (None: no clipping).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto", description="auto = bf16 on CUDA where supported, else fp16 with a scaler; fp32 on CPU."
    )
    freeze: list[str] = Field(default_factory=list, description="Slots whose parameters are not trained.")
    seed: int = Field(default=42, ge=0, description="Seed of initialisation, data order, dropout and corruption.")
    patience: int | None = Field(
        default=5,
        ge=1,
        description="Stop after this many epochs without a better validation metric (default: "
        f"{tower_default_text('patience')}; {cpu_recipe_text('patience')}; never: a value of at least the epochs, "
        "or `patience: null` in a YAML file).",
    )
    save_checkpoints: bool = Field(
        default=True,
        description="Write RUN/checkpoints/last after every epoch (what --resume needs; a signal always writes one).",
    )
    evaluate_test: bool = Field(
        default=True,
        description="Evaluate the test split once, at the best epoch, when training ends (a configuration search "
        "switches it off, so that only the selected configuration ever sees the test split).",
    )
    refit: bool = Field(
        default=False,
        description="Fine-tuning: once validation has chosen the epoch, train again from the same start on every "
        "interaction but each user's test target, for that many epochs, and keep that model (it also learns each "
        "user's latest interaction; about twice the time; RUN/best keeps the selected one) "
        f"(default: false, {cpu_recipe_text('refit')}).",
    )
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50], description="Cut-offs of the reported metrics.")
    select_metric: str = Field(default="ndcg@10", description="Validation metric that picks the best epoch.")
    num_workers: int = Field(default=0, ge=0, le=256, description="DataLoader worker processes.")
    gather_negatives: bool = Field(
        default=False, description="Multi-process: also use other processes' batch items as negatives."
    )
    cache_frozen: bool = Field(
        default=True, description="Reuse frozen-prefix outputs of encoders per item instead of recomputing them."
    )
    tower_update_every: int = Field(
        default=1, ge=1, le=100_000,
        description="Train the text layers every N steps on the item gradients gathered meanwhile on a table of their "
        "mean states (text-only tower; the table is re-encoded after each update). 1: every step, exact.",
    )  # fmt: skip
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many steps, for tests and smoke runs (default: no limit)."
    )
    device: str | None = Field(default=None, description=DEVICE_HELP)
    recipe: Recipe = Field(
        default="auto",
        description="Defaults of a run with a text encoder: full (the best model: trained text layers at the "
        "backbone's width; hours on a CPU), cpu (the backbone frozen, word-piece embeddings trained, d = 128, 50 "
        "items per sequence, 30 epochs: minutes on a CPU, lower quality) or auto (cpu when fine-tuning on a CPU, else "
        "full); options given win over either (docs/training.md, \"A text run on a CPU\").",
    )
    deterministic: bool = Field(
        default=False, description="Bitwise-reproducible: deterministic kernels, one intra-op CPU thread (slower)."
    )
    objectives: ObjectivesConfig = Field(default_factory=ObjectivesConfig, description="Losses and their options.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Also send every step's losses, learning rates and throughput, and every evaluation, to these "
        "trackers (repeatable; log.jsonl is always written).",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Components the run starts from.")

    @model_validator(mode="before")
    @classmethod
    def _fill_tower_defaults(cls, data: Any) -> Any:
        """Keys left out take the CPU recipe's values when it applies, then their item tower's defaults
        (TOWER_DEFAULTS; a field's own default is the content tower's)."""
        return with_tower_defaults(with_recipe_defaults(data)) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _refit_is_fine_tuning(self) -> TrainConfig:
        if self.refit and self.mode != "finetune":
            raise ValueError("refit: a fine-tuning option (pre-training keeps its components' last state)")
        return self

    @property
    def epoch_limit(self) -> int:
        """The most epochs this run trains: `epochs` when given, else `max_epochs`."""
        return self.epochs if self.epochs is not None else self.max_epochs

    def lr_for(self, slot: str, fresh: bool) -> float:
        """The learning rate of one slot: component_lr, else lr, else fresh_lr or pretrained_lr."""
        if slot in self.component_lr:
            return self.component_lr[slot]
        if self.lr is not None:
            return self.lr
        return self.fresh_lr if fresh else self.pretrained_lr

    def split_record(self) -> dict[str, Any]:
        """How this run splits and windows the data (what `pmmrec evaluate` reads back from a model folder)."""
        return {key: getattr(self, key) for key in SPLIT_KEYS}


def finetune_defaults() -> dict[str, Any]:
    """Fine-tuning trains next-item prediction alone unless asked otherwise (method.md, section 3)."""
    weights = {name: objective.finetune_weight for name, objective in registered_objectives().items()}
    return {"mode": "finetune", "objectives": {"weights": weights}}


def pretrain_defaults() -> dict[str, Any]:
    """Pre-training trains all four objectives."""
    return {"mode": "pretrain", "batch_size": PRETRAIN_BATCH_SIZE}


def mode_defaults(mode: str) -> dict[str, Any]:
    """The defaults a command starts from (before a YAML file and flags): pretrain's or finetune's."""
    return pretrain_defaults() if mode == "pretrain" else finetune_defaults()
