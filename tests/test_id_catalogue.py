"""An ID model looks its rows up by item id (issue 13.3): never by the dataset's item order.

A dataset with the same ids in another order gives the same scores per item; a dataset with ids the model was not
trained on is refused with a one-line error that names some of them (evaluate, recommend, serve all bind the
catalogue through `make_collator`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiny
import torch
from typer.testing import CliRunner

from pmmrec import api
from pmmrec.cli import app
from pmmrec.components import IdItemTower
from pmmrec.data import load_dataset, write_dataset
from pmmrec.errors import ConfigError
from pmmrec.model import PMMRec


def _rewrite(source: Path, out: Path, rename: dict[str, str] | None = None, reverse: bool = False) -> Path:
    """The dataset at `source` written again: items in reverse order, or some ids renamed."""
    dataset = load_dataset(source)
    rename = rename or {}
    pairs = list(zip(dataset.item_ids, dataset.item_texts, strict=True))
    if reverse:
        pairs.reverse()
    users = [[rename.get(dataset.item_ids[i - 1], dataset.item_ids[i - 1]) for i in row] for row in dataset.sequences]
    return write_dataset(
        out, name="tiny", item_ids=[rename.get(item_id, item_id) for item_id, _ in pairs],
        item_texts=[text for _, text in pairs], user_ids=list(dataset.user_ids), user_items=users,
        provenance={"source": "tests"}, preprocessing={},
    )  # fmt: skip


@pytest.fixture
def id_model(tmp_path: Path) -> tuple[Path, Path]:
    """A saved ID model over the tiny training dataset's items i1..i30, and that dataset."""
    data = tiny.write_tiny_dataset(tmp_path / "data")
    ids = load_dataset(data).item_ids
    torch.manual_seed(0)
    tower = IdItemTower(tiny.IdItemTowerConfig(dim=tiny.DIM, num_items=len(ids)), item_ids=list(ids))
    model = PMMRec.assemble(item_tower=tower, user=tiny.tiny_user_encoder(max_length=tiny.MAX_LENGTH))
    return model.save_pretrained(tmp_path / "model"), data


def test_same_ids_in_another_order_give_the_same_recommendations(id_model: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = id_model
    reordered = _rewrite(data, tmp_path / "reversed", reverse=True)
    assert load_dataset(reordered).item_ids == list(reversed(load_dataset(data).item_ids))
    first = api.recommend(model, data, user="u3", k=10)
    second = api.recommend(model, reordered, user="u3", k=10)
    assert [(r.item_id, round(r.score, 5)) for r in first] == [(r.item_id, round(r.score, 5)) for r in second]


def test_make_collator_leaves_the_model_alone_and_binding_is_explicit(
    id_model: tuple[Path, Path], tmp_path: Path
) -> None:
    from pmmrec.inference import make_collator

    folder, data = id_model
    reordered = load_dataset(_rewrite(data, tmp_path / "reversed", reverse=True))
    model = PMMRec.from_pretrained(folder)
    assert model.item_tower is not None
    make_collator(model, reordered)
    assert model.item_tower.row_of is None  # still the tower's own order: nothing bound as a side effect
    model.bind_catalogue(reordered.item_ids)
    assert model.item_tower.row_of is not None and model.item_tower.row_of.tolist()[:2] == [0, 30]
    tiny.text_model().bind_catalogue(["anything"])  # a content model reads items by content: nothing to bind


def test_the_tower_maps_ids_to_its_own_rows() -> None:
    tower = tiny.tiny_id_tower(num_items=4)
    tower.bind_catalogue(["item-3", "item-1"])  # a subset, in another order
    assert torch.equal(tower(torch.tensor([0, 1, 2])), tower.embeddings.weight[[0, 3, 1]])
    tower.bind_catalogue(["item-1", "item-2", "item-3", "item-4"])
    assert tower.row_of is None  # the tower's own order: looked up directly


def test_unknown_ids_are_refused_naming_some(id_model: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = id_model
    other = _rewrite(data, tmp_path / "other", rename={"i4": "new-4", "i9": "new-9"})
    with pytest.raises(ConfigError, match=r"does not know 2 of the dataset's 30 item ids \(for example 'new-4'"):
        api.recommend(model, other, user="u3")
    result = CliRunner().invoke(app, ["evaluate", "--model", str(model), "--data", str(other), "--quiet"])
    assert result.exit_code != 0
    message = [line for line in result.output.splitlines() if line.strip()]
    assert len(message) == 1 and "'new-4'" in message[0] and "'new-9'" in message[0], result.output


def test_a_tower_without_its_ids_refuses_a_catalogue_of_another_size() -> None:
    tower = tiny.tiny_id_tower(num_items=4, with_ids=False)
    tower.bind_catalogue(["a", "b", "c", "d"])
    with pytest.raises(ConfigError, match=r"has 4 items and no item_ids\.json; the dataset has 3"):
        tower.bind_catalogue(["a", "b", "c"])
