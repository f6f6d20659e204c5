"""Reference-family import: text files, pickled LMDB values refused without trust, malicious pickles refused always."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pmmrec.cli import app
from pmmrec.data import ImageStore, check_dataset, import_reference, load_dataset, resize_and_center_crop
from pmmrec.data.reference_import import ForbiddenPickleError, decode_reference_value, restricted_unpickle
from pmmrec.errors import DatasetError


class LMDB_Image:  # the reference code's class name, which its pickles record
    """Same attributes as the reference code's record (pixel bytes, size, channels, id)."""

    def __init__(self, image: np.ndarray, item_id: str) -> None:
        self.channels = image.shape[2]
        self.size = image.shape[:2]
        self.image = image.tobytes()
        self.id = item_id


class RunsShellCommand:
    """A hostile value: unpickling it would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _pixels(seed: int, width: int = 40, height: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _reference_files(root: Path) -> tuple[Path, Path]:
    users = root / "Demo_users.tsv"
    items = root / "Demo_items_texts.tsv"
    items.write_text("v1\tfirst title\nv2\tsecond title\nv3\tthird title\n", encoding="utf-8")
    users.write_text("u1\tv1 v2 v3\nu2\tv3 v1 v2\n", encoding="utf-8")
    return users, items


def _write_lmdb(path: Path, values: dict[bytes, bytes]) -> Path:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key, value)
    env.close()
    return path


def _pickled_lmdb(root: Path, protocol: int = 4) -> Path:
    values = {
        str(n).encode("ascii"): pickle.dumps(LMDB_Image(_pixels(n), f"v{n}"), protocol=protocol) for n in (1, 2, 3)
    }
    return _write_lmdb(root / "Demo.lmdb", values)


def _expected(seed: int, size: int) -> np.ndarray:
    return np.asarray(resize_and_center_crop(Image.fromarray(_pixels(seed)), size))


def test_pickled_lmdb_is_refused_without_trust(tmp_path: Path) -> None:
    users, items = _reference_files(tmp_path)
    lmdb_path = _pickled_lmdb(tmp_path)
    out = tmp_path / "ds"
    with pytest.raises(DatasetError) as caught:
        import_reference(users, items, out, lmdb_path=lmdb_path, image_size=16)
    message = str(caught.value)
    assert "pickled Python object" in message and "arbitrary code" in message and "--trust-pickle" in message
    assert not out.exists()
    result = CliRunner().invoke(
        app,
        [
            "data",
            "import-reference",
            "--users",
            str(users),
            "--items",
            str(items),
            "--lmdb",
            str(lmdb_path),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1 and "--trust-pickle" in result.output and not out.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_trusted_pickles_are_read_with_a_warning(tmp_path: Path, protocol: int) -> None:
    users, items = _reference_files(tmp_path)
    lmdb_path = _pickled_lmdb(tmp_path, protocol=protocol)
    with pytest.warns(UserWarning, match="trust-pickle"):
        root = import_reference(users, items, tmp_path / "ds", lmdb_path=lmdb_path, trust_pickle=True, image_size=16)
    dataset = load_dataset(root)
    assert dataset.name == "Demo" and dataset.item_ids == ["v1", "v2", "v3"] and dataset.info["images"] == "real"
    assert [sequence.tolist() for sequence in dataset.sequences] == [[1, 2, 3], [3, 1, 2]]
    store = ImageStore(dataset.images_path)
    for seed in (1, 2, 3):
        assert np.array_equal(store.get(f"v{seed}"), _expected(seed, 16))
    assert check_dataset(root)["image_share"] == 1.0


def test_cli_trusted_import_warns_and_says_why(tmp_path: Path) -> None:
    users, items = _reference_files(tmp_path)
    lmdb_path = _pickled_lmdb(tmp_path)
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "import-reference",
            "--users",
            str(users),
            "--items",
            str(items),
            "--lmdb",
            str(lmdb_path),
            "--out",
            str(out),
            "--trust-pickle",
            "--size",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "warning: --trust-pickle" in result.stderr and "arbitrary code" in result.stderr
    assert "share of items with images  100.0%" in result.stdout


def test_malicious_pickle_is_refused_even_when_trusted(tmp_path: Path) -> None:
    users, items = _reference_files(tmp_path)
    marker = tmp_path / "pwned"
    values = {str(n).encode(): pickle.dumps(LMDB_Image(_pixels(n), f"v{n}")) for n in (1, 3)}
    values[b"2"] = pickle.dumps(RunsShellCommand(marker))
    lmdb_path = _write_lmdb(tmp_path / "Evil.lmdb", values)
    with pytest.warns(UserWarning), pytest.raises(ForbiddenPickleError) as caught:
        import_reference(users, items, tmp_path / "ds", lmdb_path=lmdb_path, trust_pickle=True, allow_missing=True)
    assert f"refused to unpickle global '{os.system.__module__}.system'" in str(caught.value)
    assert "item 'v2'" in str(caught.value)
    assert not marker.exists() and not (tmp_path / "ds").exists()
    result = CliRunner().invoke(
        app,
        [
            "data",
            "import-reference",
            "--users",
            str(users),
            "--items",
            str(items),
            "--lmdb",
            str(lmdb_path),
            "--out",
            str(tmp_path / "ds"),
            "--trust-pickle",
        ],
    )
    assert result.exit_code == 1 and "refused to unpickle" in result.output and not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"cos\nsystem\n(S'true'\ntR.",
        b"c__builtin__\ngetattr\n(c__builtin__\nobject\nS'__subclasses__'\ntR.",
        pickle.dumps({"image": np.zeros((2, 2, 3), dtype=np.uint8), "x": os.getcwd}),
    ],
)
def test_non_allow_listed_globals_are_refused(payload: bytes) -> None:
    with pytest.raises(ForbiddenPickleError, match="refused to unpickle global"):
        restricted_unpickle(payload, "test value")


def test_encoded_images_need_no_trust(tmp_path: Path) -> None:
    users, items = _reference_files(tmp_path)
    values = {}
    for n in (1, 2, 3):
        buffer = io.BytesIO()
        Image.fromarray(_pixels(n)).save(buffer, format="PNG")
        values[str(n).encode()] = buffer.getvalue()
    lmdb_path = _write_lmdb(tmp_path / "Png.lmdb", values)
    root = import_reference(users, items, tmp_path / "ds", lmdb_path=lmdb_path, image_size=16)
    assert np.array_equal(ImageStore(root / "images.lmdb").get("v2"), _expected(2, 16))


def test_missing_images_and_text_only_import(tmp_path: Path) -> None:
    users, items = _reference_files(tmp_path)
    values = {b"1": pickle.dumps(LMDB_Image(_pixels(1), "v1"))}
    lmdb_path = _write_lmdb(tmp_path / "Part.lmdb", values)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=r"2 missing \('v2', 'v3'\)"):
        import_reference(users, items, tmp_path / "ds", lmdb_path=lmdb_path, trust_pickle=True, image_size=8)
    with pytest.warns(UserWarning):
        root = import_reference(
            users, items, tmp_path / "ds", lmdb_path=lmdb_path, trust_pickle=True, image_size=8, allow_missing=True
        )
    assert check_dataset(root)["items_with_images"] == 1
    text_only = import_reference(users, items, tmp_path / "text", name="demo-text")
    assert load_dataset(text_only).images_path is None and load_dataset(text_only).name == "demo-text"


def test_reference_users_errors_name_their_file_and_line(tmp_path: Path) -> None:
    users, items = _reference_files(tmp_path)
    users.write_text("u1\tv1 v2\nu2\tv1 v9\n", encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"Demo_users\.tsv line 2: unknown item id 'v9' \(not in Demo_items_texts\.tsv\)"
    ):
        import_reference(users, items, tmp_path / "ds")


def test_decode_reference_value_rejects_non_images() -> None:
    with pytest.raises(DatasetError, match="is not an image record"):
        decode_reference_value(pickle.dumps([1, 2, 3]), trust_pickle=True, size=8, where="v")
    with pytest.raises(DatasetError, match="not an image"):
        decode_reference_value(pickle.dumps(np.zeros((2, 2), dtype=np.float32)), trust_pickle=True, size=8, where="v")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_trusted_numpy_array_values(protocol: int) -> None:
    pixels = _pixels(7)
    value = pickle.dumps(pixels, protocol=protocol)
    decoded = decode_reference_value(value, trust_pickle=True, size=16, where="v7")
    assert np.array_equal(decoded, _expected(7, 16))
