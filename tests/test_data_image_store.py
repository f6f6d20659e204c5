"""Image LMDB: value format, resize rule, build from a folder (CLI) and read-back equal to the resized image."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pmmrec.cli import app
from pmmrec.data import (
    ImageStore,
    build_image_lmdb,
    check_dataset,
    decode_image_value,
    encode_image_value,
    resize_and_center_crop,
    write_dataset,
)
from pmmrec.data.image_store import HEADER, IMAGE_MAGIC
from pmmrec.errors import DatasetError


def _picture(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode=mode)


def test_resize_rule_is_shorter_side_then_centre_crop() -> None:
    picture = _picture(300, 200, seed=1)
    expected = picture.resize((336, 224), Image.Resampling.BICUBIC).crop((56, 0, 280, 224))
    assert np.array_equal(np.asarray(resize_and_center_crop(picture, 224)), np.asarray(expected))
    tall = _picture(100, 160, seed=2)
    result = resize_and_center_crop(tall, 50)
    assert result.size == (50, 50)
    expected_tall = tall.resize((50, 80), Image.Resampling.BICUBIC).crop((0, 15, 50, 65))
    assert np.array_equal(np.asarray(result), np.asarray(expected_tall))


@pytest.mark.parametrize("payload", ["png", "raw", "jpeg"])
def test_value_format_round_trip(payload: str) -> None:
    rows, columns = np.mgrid[0:12, 0:20]
    pixels = np.stack([rows * 20, columns * 12, (rows + columns) * 8], axis=-1).astype(np.uint8)
    value = encode_image_value(pixels, payload)
    magic, version, code, height, width, channels = HEADER.unpack_from(value)
    assert (magic, version, height, width, channels) == (IMAGE_MAGIC, 1, 12, 20, 3)
    assert code == {"raw": 0, "png": 1, "jpeg": 2}[payload]
    decoded = decode_image_value(value)
    assert decoded.shape == (12, 20, 3) and decoded.dtype == np.uint8
    if payload == "jpeg":
        assert np.abs(decoded.astype(int) - pixels.astype(int)).mean() < 4
    else:
        assert np.array_equal(decoded, pixels)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"PMRI", "shorter than the 12-byte image header"),
        (b"XXXX" + bytes(8), "not a pmmrec image value"),
        (HEADER.pack(IMAGE_MAGIC, 9, 0, 1, 1, 3), "version 9 is not supported"),
        (HEADER.pack(IMAGE_MAGIC, 1, 7, 1, 1, 3), "unknown payload format code 7"),
        (HEADER.pack(IMAGE_MAGIC, 1, 0, 2, 2, 3) + bytes(5), "raw payload has 5 bytes, header implies 12"),
        (HEADER.pack(IMAGE_MAGIC, 1, 1, 2, 2, 3) + b"junk", "undecodable png payload"),
    ],
)
def test_bad_values_are_refused(value: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        decode_image_value(value)


def _image_folder(root: Path) -> tuple[Path, Path, dict[str, Image.Image]]:
    images = root / "images"
    images.mkdir()
    pictures = {"a": _picture(300, 200, 1), "b": _picture(100, 160, 2, mode="RGBA"), "c": _picture(64, 64, 3)}
    pictures["a"].save(images / "a.JPG", quality=95)
    pictures["b"].save(images / "b.png")
    pictures["c"].save(images / "c.webp", lossless=True)
    (images / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (images / "notes.txt").write_text("ignored")
    items = root / "items.tsv"
    items.write_text("a\tA\nb\tB\nc\tC\nd\tD\ne\tE\n")
    return items, images, pictures


def test_cli_build_fails_on_missing_and_undecodable(tmp_path: Path) -> None:
    items, images, _ = _image_folder(tmp_path)
    out = tmp_path / "images.lmdb"
    result = CliRunner().invoke(
        app, ["data", "build-lmdb", "--items", str(items), "--images", str(images), "--out", str(out), "--size", "32"]
    )
    assert result.exit_code == 1
    assert "2 of 5 items have no usable image: 1 missing ('d'); 1 undecodable ('e')" in result.output
    assert "--allow-missing" in result.output
    assert not out.exists()


def test_cli_build_and_read_back_equals_resized_image(tmp_path: Path) -> None:
    items, images, _ = _image_folder(tmp_path)
    out = tmp_path / "images.lmdb"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "build-lmdb",
            "--items",
            str(items),
            "--images",
            str(images),
            "--out",
            str(out),
            "--size",
            "32",
            "--allow-missing",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "stored 3 images (32x32, png)" in result.output and "1 missing ('d')" in result.output
    store = ImageStore(out)
    assert sorted(store.keys()) == ["a", "b", "c"] and len(store) == 3
    for item_id, file_name in (("a", "a.JPG"), ("b", "b.png"), ("c", "c.webp")):
        with Image.open(images / file_name) as source:
            expected = np.asarray(resize_and_center_crop(source, 32))
        assert np.array_equal(store.get(item_id), expected)
        assert store.get_value(item_id)[:4] == IMAGE_MAGIC  # never a pickle
    assert store.get("d") is None


def test_raw_payload_and_refusal_to_overwrite(tmp_path: Path) -> None:
    items, images, _ = _image_folder(tmp_path)
    out = tmp_path / "raw.lmdb"
    report = build_image_lmdb(items, images, out, size=16, payload_format="raw", allow_missing=True)
    assert report.stored == ["a", "b", "c"] and report.missing == ["d"] and report.undecodable == ["e"]
    with Image.open(images / "b.png") as source:
        assert np.array_equal(ImageStore(out).get("b"), np.asarray(resize_and_center_crop(source, 16)))
    with pytest.raises(DatasetError, match="already exists"):
        build_image_lmdb(items, images, out, size=16, allow_missing=True)


def test_two_files_for_one_item_are_refused(tmp_path: Path) -> None:
    items, images, pictures = _image_folder(tmp_path)
    pictures["a"].save(images / "a.png")
    with pytest.raises(DatasetError, match="both name item 'a'"):
        build_image_lmdb(items, images, tmp_path / "x.lmdb", size=16, allow_missing=True)


def test_build_into_dataset_records_real_images(tmp_path: Path) -> None:
    _items, images, _ = _image_folder(tmp_path)
    root = write_dataset(
        tmp_path / "ds",
        name="photos",
        item_ids=["a", "b", "c", "d", "e"],
        item_texts=["A", "B", "C", "D", "E"],
        user_ids=["u"],
        user_items=[["a", "b", "c", "d", "e"]],
        provenance={},
        preprocessing={},
    )
    result = CliRunner().invoke(
        app,
        [
            "data",
            "build-lmdb",
            "--items",
            str(root / "items.tsv"),
            "--images",
            str(images),
            "--out",
            str(root / "images.lmdb"),
            "--size",
            "24",
            "--allow-missing",
        ],
    )
    assert result.exit_code == 0, result.output
    info = json.loads((root / "dataset.json").read_text())
    assert info["images"] == "real" and info["items_without_images"] == ["d", "e"] and info["image_size"] == 24
    stats = check_dataset(root)
    assert stats["items_with_images"] == 3 and stats["image_share"] == pytest.approx(0.6)
    check = CliRunner().invoke(app, ["data", "check", str(root)])
    assert check.exit_code == 0 and "60.0%" in check.output and "SYNTHETIC" not in check.output


def test_image_store_pickles_before_and_after_use(tmp_path: Path) -> None:
    items, images, _ = _image_folder(tmp_path)
    out = tmp_path / "images.lmdb"
    build_image_lmdb(items, images, out, size=8, allow_missing=True)
    store = ImageStore(out)
    fresh = pickle.Unpickler(io.BytesIO(pickle.dumps(store))).load()
    assert fresh.get("a").shape == (8, 8, 3)
    used = pickle.Unpickler(io.BytesIO(pickle.dumps(store))).load()
    assert np.array_equal(used.get("c"), store.get("c"))
    with pytest.raises(DatasetError, match="not an image LMDB folder"):
        ImageStore(tmp_path / "nowhere")
