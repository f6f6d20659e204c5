"""A new modality is a slot-table row, its encoder file, its dataset reader and its `pmmrec assemble` option (issue 23;
docs/architecture.md, *Where to add things*).

The test copies the package, adds a throw-away `toy` modality in exactly four files (a row of pmmrec/slots.py, a
kind + type file in pmmrec/components/, a reader file in pmmrec/data/readers/, a `toy` parameter of api.assemble,
which is `pmmrec assemble --toy`) and runs the copy in a subprocess: `pmmrec init toy`,
`pmmrec assemble --toy`, `pmmrec finetune --toy ... --toy-trainable-layers 1` (the training flags are generated),
the frozen-prefix cache, `encode_items(toys=...)`, reloading, and the server's ranking. Every step goes through the
generic path; if any other file of pmmrec had to know the new modality, one of them fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from package_copy import changed_files, copy_package, insert_before, run_in_copy

TOY_ROW = '''    Slot("toy", kind="toy", type_prefix="toy_encoder", modality="toy",
         item_side=True, pretrained=True, content=True, reference=True, init=True, title="Toy encoder"),
'''

TOY_ENCODER = '''"""`toy_encoder/mlp`: a throw-away modality (a feature vector per item) -> 3 projected tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from pmmrec.components.base import register_component
from pmmrec.components.kinds import EncoderConfig, ItemEncoder, ModalityInputs, ModalityTokens, register_kind
from pmmrec.components.options import CreateOptions
from pmmrec.slots import SLOT

TOKENS = 3


@register_kind
class ToyEncoder(ItemEncoder):
    """The toy modality's kind: features [N, F] -> tokens [N, 3, d]."""

    kind: ClassVar[str] = SLOT["toy"].type_prefix
    modality: ClassVar[str] = "toy"
    raw_name: ClassVar[str] = "toys"
    missing_raw: ClassVar[str] = "this model reads toy features: give toys="

    @classmethod
    def default_variant(cls, options: CreateOptions) -> str:
        return "mlp"


class ToyConfig(EncoderConfig):
    features: int = Field(default=6, ge=1, le=64, description="Features per item.")


@register_component
class MlpToyEncoder(ToyEncoder):
    type_name: ClassVar[str] = "toy_encoder/mlp"
    config_class: ClassVar[type[ToyConfig]] = ToyConfig
    config: ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList([nn.Linear(config.features, 16), nn.Linear(16, 16)])
        self.projection = nn.Linear(16, TOKENS * config.dim)
        self.apply_freezing()

    @classmethod
    def create(cls, options: CreateOptions) -> MlpToyEncoder:
        return cls(ToyConfig(dim=options.width, trainable_layers=min(options.trainable_layers, 2)))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def frozen_depth(self) -> int:
        return self.num_layers - self.config.trainable_layers

    def frozen_modules(self) -> list[nn.Module]:
        return list(self.layers[: self.frozen_depth])

    def apply_freezing(self) -> None:
        for depth, layer in enumerate(self.layers):
            layer.requires_grad_(depth >= self.frozen_depth)
        self.train(self.training)

    def prepare(self, raw: Sequence[Any]) -> ModalityInputs:
        return {"features": torch.as_tensor(np.asarray(raw, dtype=np.float32))}

    def frozen_prefix_of(self, inputs: ModalityInputs) -> torch.Tensor:
        hidden = inputs["features"].float()
        for layer in self.layers[: self.frozen_depth]:
            hidden = torch.tanh(layer(hidden))
        return hidden

    def tokens(self, inputs: ModalityInputs | None, prefix: torch.Tensor | None = None) -> ModalityTokens:
        if prefix is None and not inputs:
            raise ValueError("the toy encoder needs features")
        hidden = prefix if prefix is not None else self.frozen_prefix_of(inputs or {})
        for layer in self.layers[self.frozen_depth :]:
            hidden = torch.tanh(layer(hidden))
        return ModalityTokens(self.projection(hidden).view(hidden.shape[0], TOKENS, self.dim), None)
'''

TOY_READER = '''"""The toy modality's reader: toy.npy in the dataset folder, [N, F] float32 features in items.tsv's order."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from pmmrec.components import ItemEncoder, ModalityInputs
from pmmrec.data.readers import ItemInputs, register_reader
from pmmrec.errors import DatasetError

FILE = "toy.npy"


@register_reader
class ToyFeatures(ItemInputs):
    modality: ClassVar[str] = "toy"
    cache_label: ClassVar[str] = "toy"

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features  # [N+1, F], row 0 the padding item

    @classmethod
    def provided_by(cls, dataset) -> bool:
        return (dataset.root / FILE).is_file()

    @classmethod
    def from_dataset(cls, dataset, encoder: ItemEncoder) -> ToyFeatures:
        if not cls.provided_by(dataset):
            raise DatasetError(f"{dataset.root}: the model reads toy features but the dataset has no {FILE}")
        raw = np.load(dataset.root / FILE, allow_pickle=False)
        if raw.shape[0] != dataset.num_items:
            raise DatasetError(f"{FILE}: {raw.shape[0]} rows for {dataset.num_items} items")
        prepared = encoder.prepare(list(raw))["features"]
        return cls(torch.cat([prepared.new_zeros(1, prepared.shape[1]), prepared]))

    def rows(self, items: Sequence[int] | torch.Tensor) -> ModalityInputs:
        return {"features": self.features[torch.as_tensor(items, dtype=torch.int64)]}

    def digest(self) -> bytes:
        return hashlib.sha256(self.features.numpy().tobytes()).digest()
'''

SCRIPT = '''
import json, sys
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import pmmrec
import tiny
from pmmrec.cli import app
from pmmrec.data import load_dataset, registered_readers
from pmmrec.inference import encode_catalogue, make_collator
from pmmrec.model import PMMRec
from pmmrec.prefix_cache import FrozenPrefixCache
from pmmrec.serving import create_app

root = Path(sys.argv[1])
facts = {"package": pmmrec.__file__}
data = tiny.write_tiny_dataset(root / "data")
np.save(data / "toy.npy", np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32))
facts["provided"] = registered_readers()["toy"].provided_by(load_dataset(data))
runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


facts["finetune_help"] = cli("finetune", "--help")
facts["init"] = cli("init", "toy", "--dim", "32", "--out", root / "toy")
tiny.tiny_text_encoder(seed=1).save_pretrained(root / "text")
tiny.tiny_user_encoder(seed=2).save_pretrained(root / "user")
facts["assemble"] = cli("assemble", "--out", root / "assembled", "--text", root / "text", "--toy", root / "toy", "--user", root / "user")
cli("finetune", "--data", data, "--out", root / "run", "--text", root / "text", "--toy", root / "toy",
    "--user", root / "user", "--toy-trainable-layers", "1", "--epochs", "1", "--max-steps", "3", "--batch-size", "4",
    "--max-length", "8", "--device", "cpu", "--quiet")
facts["losses"] = [json.loads(line).get("rec") for line in (root / "run" / "log.jsonl").read_text().splitlines()]
model = PMMRec.from_pretrained(root / "run" / "model")
facts["modalities"] = sorted(model.modalities)
facts["manifest_modalities"] = json.loads((root / "run" / "model" / "pmmrec.json").read_text())["modalities"]
facts["fusion_config"] = json.loads((root / "run" / "model" / "fusion" / "config.json").read_text())["config"]
facts["toy_trainable"] = model.toy.trainable_layers
dataset = load_dataset(data)
collator = make_collator(model, dataset)
table = encode_catalogue(model, collator, dataset.num_items, torch.device("cpu"))
cache = FrozenPrefixCache.for_model(model, collator, torch.device("cpu"))
facts["cached"] = sorted(cache.cached_modalities)
facts["cached_table_error"] = float((cache.item_table(model) - table).abs().max())
raw = np.load(data / "toy.npy")
encoded = model.encode_items(texts=dataset.item_texts[:4], toys=list(raw[:4]))
facts["encode_items_error"] = float((encoded - table[1:5]).abs().max())
client = TestClient(create_app(model, dataset))
health = client.get("/health").json()
facts["health"] = {key: health[key] for key in ("modalities", "can_add_items", "add_items_refusal")}
facts["recommend"] = client.post("/recommend", json={"history": ["i1", "i2"], "k": 3}).json()["items"]
print("FACTS " + json.dumps(facts))
'''


def toy_tree(root: Path) -> Path:
    """A copy of the package with the toy modality added in four files; returns the folder to put on the path."""
    tree = copy_package(root)
    insert_before(tree / "pmmrec" / "slots.py", '    Slot("fusion", kind="fusion"', TOY_ROW)
    (tree / "pmmrec" / "components" / "toy_encoder.py").write_text(TOY_ENCODER, encoding="utf-8")
    (tree / "pmmrec" / "data" / "readers" / "toy.py").write_text(TOY_READER, encoding="utf-8")
    add_assemble_option(tree / "pmmrec")
    return tree


# `pmmrec assemble` names each encoder by an explicit option, like --text and --vision: the api parameter, whose
# `Opt` makes it the CLI option (the training commands' --toy, --toy-backbone, --toy-trainable-layers are generated
# from the table).
API_USER = "    user: UserRef = None,\n    overwrite: Overwrite = False,\n"
API_TOY = '    toy: Annotated[str | None, Opt("Toy encoder reference (default: none).")] = None,\n'
ASSEMBLE_EDITS: dict[str, list[tuple[str, str]]] = {  # file -> (text, its replacement)
    "api.py": [
        (API_USER, API_TOY + API_USER),
        ("fusion=fusion, user=user)", "fusion=fusion, user=user, toy=toy)"),
    ],
}


def add_assemble_option(package: Path) -> None:
    """Apply ASSEMBLE_EDITS; a text not found exactly once means `assemble` changed shape: update the edits."""
    for name, edits in ASSEMBLE_EDITS.items():
        path = package / name
        text = path.read_text(encoding="utf-8")
        for old, new in edits:
            assert text.count(old) == 1, f"{name}: {old!r} (the toy's assemble option goes there) not found once"
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")


@pytest.mark.slow
def test_a_new_modality_is_a_row_an_encoder_a_reader_and_an_assemble_option(tmp_path: Path) -> None:
    tree = toy_tree(tmp_path)
    assert changed_files(tree) == [
        "pmmrec/api.py",
        "pmmrec/components/toy_encoder.py",
        "pmmrec/data/readers/toy.py",
        "pmmrec/slots.py",
    ]
    facts = run_in_copy(tree, SCRIPT, tmp_path, timeout=900)
    assert facts["provided"] is True
    shown = " ".join(facts["finetune_help"].split())
    for flag in ("--toy ", "--toy-backbone ", "--toy-trainable-layers ", "Toy encoder: top layers trained"):
        assert flag in shown, flag
    assert "text|vision|toy" in shown  # --modality's choices
    assert "wrote toy component" in facts["init"]
    assert "created a fresh fusion/merge_attention (d=32, 8 heads) for text + toy" in facts["assemble"]
    assert len(facts["losses"]) >= 3 and all(isinstance(loss, float) for loss in facts["losses"][:3])
    assert facts["modalities"] == facts["manifest_modalities"] == ["text", "toy"]
    assert facts["fusion_config"]["modalities"] == ["text", "toy"]
    assert facts["toy_trainable"] == 1 and facts["cached"] == ["text", "toy"]  # both frozen bottoms cached
    assert facts["cached_table_error"] < 1e-5 and facts["encode_items_error"] < 1e-5
    assert facts["health"]["modalities"] == ["text", "toy"] and facts["health"]["can_add_items"] is False
    assert "toy encoder (toy_encoder/mlp)" in facts["health"]["add_items_refusal"]
    assert len(facts["recommend"]) == 3
