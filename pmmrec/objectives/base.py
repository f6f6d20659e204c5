"""The objective contract and registry: each training loss is one file (its options, its module, how it reads a
training step) plus its registration; the weights, the options of the training config, the training module, the
`--NAME-weight` flags and the reports all come from the registry.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model
from torch import Tensor, nn

if TYPE_CHECKING:
    from pmmrec.model import PMMRec
    from pmmrec.objectives.step import TrainingStep

MAX_WEIGHT = 1000.0


class Objective(nn.Module, metaclass=ABCMeta):
    """One training loss. Subclasses declare what the registry publishes and how they read a `TrainingStep`
    (`step_loss`: abstract, so a subclass without it fails at construction, not at its first step)."""

    name: ClassVar[str]  # its weight (`objectives.weights.NAME`, `--NAME-weight`) and its key in the step's losses
    options_key: ClassVar[str]  # its options (`objectives.OPTIONS_KEY`) and the training module's attribute
    config_class: ClassVar[type[BaseModel]]
    pretrain_weight: ClassVar[float]  # the default weight (pre-training trains every objective)
    finetune_weight: ClassVar[float] = 0.0  # the weight fine-tuning starts from (method.md, section 3)
    weight_description: ClassVar[str]
    options_description: ClassVar[str]
    needs_modalities: ClassVar[frozenset[str]] = frozenset()  # skipped (with `skip_notice`) on a model without them
    skip_notice: ClassVar[str] = ""
    reads_item_states: ClassVar[bool] = False  # needs every step's per-modality item states (no per-epoch table)

    @classmethod
    def resolve_options(cls, options: Any, model: PMMRec) -> Any:
        """The options this model trains with (an `auto` setting decided); by default as given."""
        return options

    @classmethod
    def lists_every_item(cls, options: Any) -> bool:
        """True when training batches must list every catalogue item as a candidate (the full softmax)."""
        return False

    @classmethod
    def build(cls, model: PMMRec, options: Any) -> Objective:
        """The loss module for this model (its heads created fresh)."""
        return cls(options)

    @abstractmethod
    def step_loss(self, step: TrainingStep) -> Tensor:
        """The scalar loss of one training step."""


ObjectiveClass = TypeVar("ObjectiveClass", bound=type[Objective])

_REGISTRY: dict[str, type[Objective]] = {}


def register_objective(cls: ObjectiveClass) -> ObjectiveClass:
    """Class decorator: train `cls` under its name (registration order is the order of weights, flags and logs)."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"objective {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered_objectives() -> dict[str, type[Objective]]:
    """A copy of the registry: name -> objective class, in registration order."""
    return dict(_REGISTRY)


class WeightsBase(BaseModel):
    """Weights of total = sum of weight * loss over the registered objectives; a weight of 0 switches a loss off."""

    model_config = ConfigDict(extra="forbid")

    def active(self) -> tuple[str, ...]:
        """Names of the objectives with a non-zero weight, in registration order."""
        return tuple(name for name in type(self).model_fields if getattr(self, name) > 0.0)

    def combine(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Weighted sum of the given losses; every active objective must be present, unknown names are refused."""
        names = list(type(self).model_fields)
        unknown = sorted(set(losses) - set(names))
        if unknown:
            raise ValueError(f"unknown objective name(s) {unknown}; expected {', '.join(names)}")
        missing = [name for name in self.active() if name not in losses]
        if missing:
            raise ValueError(f"objective(s) {missing} have a non-zero weight but no loss was given")
        if not losses:
            raise ValueError("no loss given to combine")
        terms = [getattr(self, name) * loss for name, loss in losses.items() if getattr(self, name) > 0.0]
        if not terms:
            return next(iter(losses.values())) * 0.0
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total


def weights_model(doc: str) -> type[WeightsBase]:
    """The weights model: one field per registered objective (its pre-training default, its description)."""
    fields: dict[str, Any] = {
        name: (float, Field(cls.pretrain_weight, ge=0.0, le=MAX_WEIGHT, description=cls.weight_description))
        for name, cls in _REGISTRY.items()
    }
    model = create_model("ObjectiveWeights", __base__=WeightsBase, __module__="pmmrec.objectives", **fields)
    model.__doc__ = doc
    return model
