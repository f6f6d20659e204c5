"""MovieLens-100K from the recbole wheel: exact statistics of the whole set and of both transfer domains."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pmmrec.cli import app
from pmmrec.data import ImageStore, build_movielens, check_dataset, load_dataset, render_synthetic_image
from pmmrec.data import movielens as movielens_module
from pmmrec.errors import DatasetError

needs_recbole = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="recbole==1.2.1 (MovieLens-100K wheel) not installed"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("movielens")
    return {domain: build_movielens(root / domain, domain=domain) for domain in ("all", "source", "target")}


@needs_recbole
def test_whole_movielens_statistics(built: dict[str, Path]) -> None:
    stats = check_dataset(built["all"])
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    assert stats["sequence_length"] == {"min": 20, "median": 65.0, "mean": 100_000 / 943, "max": 737}
    assert stats["items_without_interactions"] == 0 and stats["images"] == "none"
    dataset = load_dataset(built["all"])
    assert dataset.item_texts[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert dataset.item_ids[:3] == ["1", "2", "3"] and dataset.user_ids[:3] == ["1", "2", "3"]
    assert "recbole" not in sys.modules  # located, never imported
    info = json.loads((built["all"] / "dataset.json").read_text())
    assert info["provenance"]["recbole_version"] == "1.2.1" and "redistribution" in info["provenance"]["licence"]


@needs_recbole
def test_sequences_follow_timestamp_then_file_order(built: dict[str, Path]) -> None:
    inter = movielens_module.locate_movielens() / "ml-100k.inter"
    events: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    for line_number, line in enumerate(inter.read_text().splitlines()[1:]):
        user, item, _rating, timestamp = line.split("\t")
        events[user].append((float(timestamp), line_number, item))
    dataset = load_dataset(built["all"])
    for user_id, sequence in zip(dataset.user_ids, dataset.sequences, strict=True):
        expected = [item for _t, _n, item in sorted(events[user_id])]
        assert [dataset.item_ids[index - 1] for index in sequence] == expected


@needs_recbole
def test_unusual_titles_give_clean_texts(built: dict[str, Path]) -> None:
    dataset = load_dataset(built["all"])
    texts = dict(zip(dataset.item_ids, dataset.item_texts, strict=True))
    assert texts["267"] == "Unknown title."
    assert texts["1412"] == "Land Before Time III: The Time of the Great Giving (1995). Genres: Animation, Children's."
    assert texts["1373"] == "Good Morning (1971)."


@needs_recbole
def test_domains_are_disjoint_and_measured(built: dict[str, Path]) -> None:
    source, target = load_dataset(built["source"]), load_dataset(built["target"])
    assert (source.num_users, source.num_items, source.num_interactions) == (405, 1355, 34_310)
    assert (target.num_users, target.num_items, target.num_interactions) == (494, 236, 12_227)
    assert not set(source.item_ids) & set(target.item_ids)
    assert not set(source.user_ids) & set(target.user_ids)
    assert min(len(sequence) for sequence in source.sequences + target.sequences) >= 5
    target_genres = set(movielens_module.TARGET_GENRES)
    for text in target.item_texts:
        assert any(genre in text for genre in target_genres)
    whole = load_dataset(built["all"])
    whole_index = whole.item_index()
    by_user = dict(zip(whole.user_ids, whole.sequences, strict=True))
    for user_id, sequence in zip(target.user_ids, target.sequences, strict=True):
        kept = {whole_index[target.item_ids[index - 1]] for index in sequence}
        original = [index for index in by_user[user_id] if index in kept]
        assert [whole.item_ids[index - 1] for index in original] == [target.item_ids[i - 1] for i in sequence]


@needs_recbole
def test_build_is_deterministic(built: dict[str, Path], tmp_path: Path) -> None:
    again = build_movielens(tmp_path / "target", domain="target")
    first = json.loads((built["target"] / "dataset.json").read_text())["files"]
    second = json.loads((again / "dataset.json").read_text())["files"]
    assert first == second


@needs_recbole
def test_cli_synthetic_images_are_labelled(tmp_path: Path) -> None:
    out = tmp_path / "target-img"
    result = CliRunner().invoke(
        app, ["data", "movielens", "--out", str(out), "--domain", "target", "--images", "synthetic", "--size", "64"]
    )
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output and "never commit" in result.output
    info = json.loads((out / "dataset.json").read_text())
    assert info["images"] == "synthetic" and "not real" in info["image_note"]
    check = CliRunner().invoke(app, ["data", "check", str(out)])
    assert check.exit_code == 0 and "images are SYNTHETIC" in check.output
    store = ImageStore(out / "images.lmdb")
    assert len(store) == 236 and store.get("751").shape == (64, 64, 3)
    again = CliRunner().invoke(app, ["data", "movielens", "--out", str(out), "--domain", "target"])
    assert again.exit_code == 1 and "already exists" in again.output


def test_synthetic_images_are_deterministic() -> None:
    first = render_synthetic_image("42", "Some Title (1990)", ("Horror", "Sci-Fi"), size=48)
    second = render_synthetic_image("42", "Some Title (1990)", ("Horror", "Sci-Fi"), size=48)
    other = render_synthetic_image("43", "Some Title (1990)", ("Horror", "Sci-Fi"), size=48)
    assert first.shape == (48, 48, 3) and first.dtype == np.uint8
    assert np.array_equal(first, second) and not np.array_equal(first, other)


def test_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(movielens_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match=r"pip install --no-deps recbole==1\.2\.1"):
        build_movielens(tmp_path / "x")
    result = CliRunner().invoke(app, ["data", "movielens", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "pip install --no-deps recbole==1.2.1" in result.output


@needs_recbole
def test_cli_builds_the_demo_target_with_new_items_in_time(tmp_path: Path) -> None:
    """Issue 24: new items are the ones that appear last in the domain's time line, not blockbusters chosen by hash;
    they occur only as validation or test targets; dataset.json records how many and how popular their targets are."""
    from pmmrec.data import leave_one_out, new_target_mask
    from pmmrec.data.movielens import first_interactions, read_movielens, select_domain

    out = tmp_path / "target-new"
    result = CliRunner().invoke(app, ["data", "movielens", "--out", str(out), "--domain", "target", "--new-items", "0.2"])
    assert result.exit_code == 0, result.output
    dataset = load_dataset(out)
    record = json.loads((out / "dataset.json").read_text())["preprocessing"]["new_items"]
    assert dataset.name == "ml-100k-target-new-items" and dataset.num_users == 494
    # 47 newest of 236 items; 13 of them occurred only before their users' last two items and left the catalogue.
    assert (record["rule"], record["held_out"], record["items"], len(record["left_catalogue"])) == ("first-seen", 47, 34, 13)
    assert dataset.num_items == 236 - 13 and record["cut"] == "1997-10-28T15:26:15Z"
    assert (record["dropped_interactions"], record["valid_target_users"], record["test_target_users"]) == (716, 54, 57)
    popularity = record["test_target_popularity"]
    assert popularity["interactions_before_hold_out"] == {"min": 2, "median": 20.0, "max": 106}
    assert popularity["most_popular"][0] == {"item_id": "751", "interactions": 106, "popularity_rank": 35, "users": 3}
    # Every new item is first seen after every old item; none occurs in a training sequence.
    data = read_movielens()
    first = first_interactions(data, select_domain(data, "target")[1])
    new = set(record["item_ids"]) | set(record["left_catalogue"])
    assert min(first[item] for item in new) > max(first[item] for item in first if item not in new)
    for sequence in dataset.sequences:
        assert not {dataset.item_ids[index - 1] for index in sequence[:-2]} & new
    split = leave_one_out(dataset.sequences)
    assert new_target_mask(split, "test").sum() == 57 and new_target_mask(split, "valid").sum() == 54
    # Issue 24: the source has at least 3x the target's training interactions (10,523 with the new items held out).
    source = load_dataset(build_movielens(tmp_path / "source", domain="source"))
    training = sum(len(sequence) for sequence in split.train)
    assert training == 10_523 and source.num_interactions >= 3 * training


@needs_recbole
def test_the_hash_rule_is_kept_under_its_own_name(tmp_path: Path) -> None:
    """The pre-issue-24 rules reproduce the old target: its domains (`rule="issue-12"`: 611 users, 388 items) and,
    with the hash rule, its new items (145 test users; Star Wars, 384 interactions, held out)."""
    out = build_movielens(tmp_path / "hash", domain="target", new_items=0.2, new_items_rule="hash", rule="issue-12")
    record = json.loads((out / "dataset.json").read_text())["preprocessing"]["new_items"]
    assert load_dataset(out).name == "ml-100k-target-new-items-hash" and record["test_target_users"] == 145
    assert record["test_target_popularity"]["most_popular"][0]["interactions"] == 384
    old = load_dataset(build_movielens(tmp_path / "old", domain="target", rule="issue-12"))
    assert (old.num_users, old.num_items, old.num_interactions) == (611, 388, 22_571)
    assert json.loads((old.root / "dataset.json").read_text())["preprocessing"]["domain_rule"] == "issue-12"
    with pytest.raises(DatasetError, match="unknown domain rule"):
        build_movielens(tmp_path / "bad-rule", domain="target", rule="comedy")
    with pytest.raises(DatasetError, match="unknown new-item rule"):
        build_movielens(tmp_path / "bad", domain="target", new_items=0.2, new_items_rule="random")


@needs_recbole
def test_item_text_without_genres_keeps_the_genre_pictures(tmp_path: Path) -> None:
    """Issue 24.6: `--item-text title-year` drops the genres from the text only; the synthetic pictures are the same
    pixels as with the default text (still drawn from title and genres), and dataset.json says which text it is."""
    out = tmp_path / "no-genres"
    result = CliRunner().invoke(app, ["data", "movielens", "--out", str(out), "--domain", "target", "--images",
                                      "synthetic", "--size", "32", "--item-text", "title-year"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "SYNTHETIC" in result.output
    plain = build_movielens(tmp_path / "default", domain="target", images="synthetic", image_size=32)
    no_genres, default = load_dataset(out), load_dataset(plain)
    assert no_genres.item_ids == default.item_ids
    assert all(np.array_equal(a, b) for a, b in zip(no_genres.sequences, default.sequences, strict=True))
    assert not any("Genres" in text for text in no_genres.item_texts)
    assert all(text.startswith(short[:-1]) for text, short in zip(default.item_texts, no_genres.item_texts, strict=True))
    assert sum("Genres: " in text for text in default.item_texts) > 0.9 * default.num_items
    first = no_genres.item_ids[0]
    assert np.array_equal(ImageStore(out / "images.lmdb").get(first), ImageStore(plain / "images.lmdb").get(first))
    info = json.loads((out / "dataset.json").read_text())
    assert no_genres.name == "ml-100k-target-title-year" and "no genres" in info["preprocessing"]["item_text"]
    with pytest.raises(DatasetError, match="unknown item text"):
        build_movielens(tmp_path / "bad", domain="target", item_text="genres-only")
