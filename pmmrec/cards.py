"""Model cards from typed data and a template, for components and assembled models alike.

A card is YAML metadata (what the Hugging Face Hub indexes: `library_name`, `tags`, `base_model`, `datasets`,
`model-index`) followed by Markdown rendered from `pmmrec/assets/*_card.md`. Cards are built from plain data
(`ComponentCardData`, `ModelCardData`), never from a torch module, so publishing sits below the components.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from pmmrec._version import __version__

LIBRARY_NAME = "pmmrec"
BASE_TAGS = ("pmmrec", "recommendation", "sequential-recommendation")


@dataclass(frozen=True)
class TrainingFacts:
    """What a training run tells a card: its name, datasets, metrics per split and training facts."""

    name: str | None = None
    datasets: tuple[str, ...] = ()
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    license: str = "apache-2.0"

    def named(self, name: str) -> TrainingFacts:
        """The same facts under another card title."""
        return TrainingFacts(name, self.datasets, self.metrics, self.training, self.license)


@dataclass(frozen=True)
class ComponentCardData:
    """Everything a component's card shows."""

    type_name: str
    kind: str
    summary: str
    config: Mapping[str, Any]
    trainable: int
    frozen: int
    base_model: str | None = None
    facts: TrainingFacts = field(default_factory=TrainingFacts)


@dataclass(frozen=True)
class ComponentRow:
    """One line of an assembled model's component table."""

    slot: str
    type_name: str
    requested: str | None
    created: bool
    resolved_commit: str | None
    sha256: str


@dataclass(frozen=True)
class ModelCardData:
    """Everything an assembled model's card shows."""

    dim: int
    modalities: tuple[str, ...]
    components: tuple[ComponentRow, ...]
    facts: TrainingFacts = field(default_factory=TrainingFacts)


def _template(name: str) -> str:
    return resources.files("pmmrec.assets").joinpath(name).read_text(encoding="utf-8")


def load_catalogue() -> list[dict[str, Any]]:
    """The official component repos published by pmmrec (pmmrec/assets/catalogue.json)."""
    return json.loads(_template("catalogue.json"))["components"]


def _metadata(tags: list[str], facts: TrainingFacts, base_model: str | None, title: str) -> str:
    metadata: dict[str, Any] = {"library_name": LIBRARY_NAME, "tags": tags, "license": facts.license}
    if base_model:
        metadata["base_model"] = base_model
    if facts.datasets:
        metadata["datasets"] = list(facts.datasets)
    if facts.metrics:
        metadata["model-index"] = [
            {
                "name": title,
                "results": [
                    {
                        "task": {"type": "sequential-recommendation"},
                        "dataset": {"name": split, "type": split},
                        "metrics": [{"type": key, "value": float(value)} for key, value in values.items()],
                    }
                    for split, values in facts.metrics.items()
                ],
            }
        ]
    return yaml.safe_dump(metadata, sort_keys=False).strip()


def render_component_card(data: ComponentCardData) -> str:
    """The README.md of one component."""
    title = data.facts.name or data.type_name
    config_rows = "\n".join(
        f"| `{key}` | `{json.dumps(value)[:80]}` |" for key, value in data.config.items() if key != "backbone_config"
    )
    training = (
        "\n".join(f"- {key}: {value}" for key, value in data.facts.training.items())
        if data.facts.training
        else "- not trained by pmmrec (freshly initialised or converted)"
    )
    return _template("component_card.md").format(
        metadata=_metadata([*BASE_TAGS, data.kind, data.type_name], data.facts, data.base_model, title),
        title=title,
        summary=data.summary,
        type_name=data.type_name,
        kind=data.kind,
        trainable=f"{data.trainable:,}",
        frozen=f"{data.frozen:,}",
        config_table=config_rows,
        training=training,
        version=__version__,
    )


def render_model_card(data: ModelCardData) -> str:
    """The README.md of an assembled model."""
    title = data.facts.name or "pmmrec model"
    rows = "\n".join(
        f"| {row.slot} | `{row.type_name}` | "
        f"{row.requested or ('created fresh' if row.created else 'given in code')} | "
        f"{row.resolved_commit or '-'} | `{row.sha256[:16]}` |"
        for row in data.components
    )
    metrics = "\n".join(
        f"- {split}: " + ", ".join(f"{key} = {value:.4f}" for key, value in values.items())
        for split, values in data.facts.metrics.items()
    )
    return _template("model_card.md").format(
        metadata=_metadata(list(BASE_TAGS), data.facts, None, title),
        title=title,
        dim=data.dim,
        modalities=", ".join(data.modalities),
        components_table=rows,
        metrics=f"## Metrics\n\n{metrics}\n" if metrics else "",
        version=__version__,
    )
