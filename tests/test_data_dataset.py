"""Dataset folder: writer, loader, statistics and every validation error on small broken fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pmmrec.cli import app
from pmmrec.data import (
    Dataset,
    ImageSource,
    ImageStore,
    check_dataset,
    encode_image_value,
    format_statistics,
    load_dataset,
    read_items_tsv,
    read_users_tsv,
    write_dataset,
)
from pmmrec.data.image_store import HEADER, IMAGE_MAGIC, write_image_lmdb
from pmmrec.errors import ConfigError, DatasetError
from pmmrec.fileio import sha256_file

ITEMS = [("a", "Alpha movie"), ("b", "Beta film"), ("c", "Gamma show")]
USERS = [("u1", ["a", "b", "c"]), ("u2", ["c", "a", "b", "a"])]


def _pixels(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def make_dataset(root: Path, with_images: bool = False) -> Path:
    images = {item_id: _pixels(position) for position, (item_id, _text) in enumerate(ITEMS)}
    source = ImageSource(kind="real", fetch=images.get, size=8) if with_images else None
    return write_dataset(
        root,
        name="tiny",
        item_ids=[item_id for item_id, _ in ITEMS],
        item_texts=[text for _, text in ITEMS],
        user_ids=[user_id for user_id, _ in USERS],
        user_items=[items for _, items in USERS],
        provenance={"source": "test"},
        preprocessing={},
        images=source,
    )


def rehash(root: Path) -> None:
    """Record the current sha256 and size of every listed file, so a test reaches the check after the hash check."""
    info = json.loads((root / "dataset.json").read_text())
    for name in info["files"]:
        info["files"][name]["sha256"] = sha256_file(root / name)
        info["files"][name]["bytes"] = (root / name).stat().st_size
    (root / "dataset.json").write_text(json.dumps(info))


def run_check(root: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["data", "check", str(root)])
    return result.exit_code, result.output


def test_round_trip_and_statistics(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    dataset = load_dataset(root)
    assert isinstance(dataset, Dataset)
    assert dataset.name == "tiny" and dataset.num_items == 3 and dataset.images_path is None
    assert dataset.item_index() == {"a": 1, "b": 2, "c": 3}
    assert [sequence.tolist() for sequence in dataset.sequences] == [[1, 2, 3], [3, 1, 2, 1]]
    assert all(sequence.dtype == np.int64 for sequence in dataset.sequences)
    stats = check_dataset(root)
    assert stats["users"] == 2 and stats["items"] == 3 and stats["interactions"] == 7
    assert stats["sequence_length"] == {"min": 3, "median": 3.5, "mean": 3.5, "max": 4}
    assert stats["repeated_interactions"] == 1 and stats["image_share"] == 0.0
    table = format_statistics(stats)
    assert "interactions" in table and "SYNTHETIC" not in table
    assert (root / "users.tsv").read_text() == "u1\ta b c\nu2\tc a b a\n"


def test_existing_folder_is_refused_without_overwrite(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match="already exists"):
        make_dataset(root)
    write_dataset(
        root,
        name="x",
        item_ids=["a"],
        item_texts=["t"],
        user_ids=["u"],
        user_items=[["a"]],
        provenance={},
        preprocessing={},
        overwrite=True,
    )
    assert load_dataset(root).name == "x"


def test_crlf_and_bom_are_accepted(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    for name in ("items.tsv", "users.tsv"):
        text = (root / name).read_bytes().replace(b"\n", b"\r\n")
        (root / name).write_bytes(b"\xef\xbb\xbf" + text)
    rehash(root)
    dataset = load_dataset(root)
    assert dataset.item_ids == ["a", "b", "c"] and dataset.user_ids == ["u1", "u2"]


BROKEN_FILES = [
    ("items.tsv", b"a\tAlpha\nb Beta\nc\tGamma\n", "items.tsv line 2: expected 2 tab-separated fields"),
    ("items.tsv", b"a\tAlpha\nb\tBeta\na\tGamma\n", "items.tsv line 3: duplicate item id 'a' (first on line 1)"),
    ("items.tsv", b"a\tAlpha\nb\t   \nc\tGamma\n", "items.tsv line 2: empty item text"),
    ("items.tsv", b"a\tAlpha\nb\tBeta\n\tGamma\n", "items.tsv line 3: empty item id"),
    ("items.tsv", b"a\tAlpha\nb\tBe\xfft\nc\tGamma\n", "items.tsv line 2: invalid UTF-8"),
    ("users.tsv", b"u1\ta b c\nu2\tc zzz b a\n", "users.tsv line 2: unknown item id 'zzz' (not in items.tsv)"),
    ("users.tsv", b"u1\ta b c\nu1\tc a b a\n", "users.tsv line 2: duplicate user id 'u1' (first on line 1)"),
    ("users.tsv", b"u1\ta b c\nu2 c a b a\n", "users.tsv line 2: expected 2 tab-separated fields"),
    ("users.tsv", b"u1\ta b c\nu2\t\n", "users.tsv line 2: user 'u2' has no items"),
    ("users.tsv", b"u1\ta b c\n\xc3\x28\tc a b a\n", "users.tsv line 2: invalid UTF-8"),
    ("users.tsv", b"u1\ta b c\n\nu2\tc a b a\n", "users.tsv line 2: expected 2 tab-separated fields"),
]


@pytest.mark.parametrize(("name", "content", "message"), BROKEN_FILES)
def test_broken_lines_name_file_and_line(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / name).write_bytes(content)
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert message in str(caught.value)
    code, output = run_check(root)
    assert code == 1 and message in output and output.count("\n") == 1


def test_parsers_used_directly(tmp_path: Path) -> None:
    path = tmp_path / "extra.tsv"
    path.write_bytes(b"x\tNew item\ny\tAnother\n")
    assert read_items_tsv(path) == (["x", "y"], ["New item", "Another"])
    users = tmp_path / "u.tsv"
    users.write_bytes(b"p\ty x  y \n")
    ids, sequences = read_users_tsv(users, {"x": 1, "y": 2})
    assert ids == ["p"] and sequences[0].tolist() == [2, 1, 2]
    with pytest.raises(DatasetError, match=r"extra\.tsv: no items"):
        path.write_bytes(b"")
        read_items_tsv(path)


def test_extra_items_extend_a_copy_and_leave_the_loaded_dataset_alone(tmp_path: Path) -> None:
    dataset = load_dataset(make_dataset(tmp_path / "ds"))
    extended = dataset.with_extra_items(["new"], ["A new show"], source="extra.tsv")
    assert extended.item_ids == ["a", "b", "c", "new"] and extended.item_texts[-1] == "A new show"
    assert extended.item_index()["new"] == 4 and extended.sequences is dataset.sequences
    assert dataset.item_ids == ["a", "b", "c"] and len(dataset.item_texts) == 3  # unchanged
    with pytest.raises(ConfigError, match=r"^extra\.tsv: item ids already in the dataset: \['b'\]$"):
        dataset.with_extra_items(["b", "new"], ["x", "y"], source="extra.tsv")


def test_hash_mismatch_names_the_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "users.tsv").write_bytes(b"u1\tc b a\nu2\tc a b a\n")  # still valid, same counts, other content
    with pytest.raises(DatasetError, match=r"sha256 mismatch for users\.tsv"):
        load_dataset(root)
    assert load_dataset(root, verify_hashes=False).sequences[0].tolist() == [3, 2, 1]
    code, output = run_check(root)
    assert code == 1 and "sha256 mismatch for users.tsv" in output


def test_counts_mismatch(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    info = json.loads((root / "dataset.json").read_text())
    info["counts"]["interactions"] = 8
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"counts\.interactions is 8 but users\.tsv has 7"):
        load_dataset(root)


def test_dataset_json_defects(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").write_text('{\n  "format": "pmmrec-dataset",\n  oops\n}')
    with pytest.raises(DatasetError, match=r"dataset\.json line 3: invalid JSON"):
        load_dataset(root)
    (root / "dataset.json").unlink()
    with pytest.raises(DatasetError, match=r"no dataset\.json"):
        load_dataset(root)


def test_images_recorded_and_read(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", with_images=True)
    dataset = load_dataset(root)
    assert dataset.images_path == root / "images.lmdb"
    store = dataset.image_store()
    assert store is not None and sorted(store.keys()) == ["a", "b", "c"]
    assert np.array_equal(store.get("b"), _pixels(1))
    stats = check_dataset(root)
    assert stats["images"] == "real" and stats["image_share"] == 1.0


def _rewrite_lmdb(root: Path, values: dict[str, bytes]) -> None:
    lmdb_dir = root / "images.lmdb"
    for child in lmdb_dir.iterdir():
        child.unlink()
    write_image_lmdb(lmdb_dir, values.items())
    rehash(root)


def test_image_missing_from_lmdb(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", with_images=True)
    _rewrite_lmdb(root, {"a": encode_image_value(_pixels(0)), "c": encode_image_value(_pixels(2))})
    message = "images.lmdb: no image for item 'b' (items.tsv line 2)"
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert message in str(caught.value)
    code, output = run_check(root)
    assert code == 1 and message in output


def test_undecodable_image(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", with_images=True)
    garbage = HEADER.pack(IMAGE_MAGIC, 1, 1, 8, 8, 3) + b"not a png at all"
    _rewrite_lmdb(root, {"a": encode_image_value(_pixels(0)), "b": garbage, "c": encode_image_value(_pixels(2))})
    load_dataset(root)  # keys are all present; decoding is check's job
    message = "undecodable image for item 'b' (items.tsv line 2)"
    with pytest.raises(DatasetError) as caught:
        check_dataset(root)
    assert message in str(caught.value)
    code, output = run_check(root)
    assert code == 1 and message in output


def test_image_lmdb_without_declaration_and_declared_without_lmdb(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    write_image_lmdb(root / "images.lmdb", [("a", encode_image_value(_pixels(0)))])
    with pytest.raises(DatasetError, match=r"images\.lmdb: present, but dataset\.json says images: none"):
        load_dataset(root)
    root = make_dataset(tmp_path / "ds2", with_images=True)
    for child in (root / "images.lmdb").iterdir():
        child.unlink()
    (root / "images.lmdb").rmdir()
    with pytest.raises(DatasetError, match=r"lists images\.lmdb/data\.mdb, which is missing"):
        load_dataset(root)


def test_stores_share_one_handle_and_see_a_rebuilt_lmdb(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", with_images=True)
    check_dataset(root)
    first, second = ImageStore(root / "images.lmdb"), ImageStore(root / "images.lmdb")
    assert len(first) == 3 and "a" in second and "zz" not in second
    _rewrite_lmdb(root, {key: encode_image_value(_pixels(9)) for key in ("a", "b", "c")})
    assert np.array_equal(first.get("a"), _pixels(9))
    assert not (root / "images.lmdb" / "lock.mdb").exists()
