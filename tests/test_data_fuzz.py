"""Parsers fuzzed with random bytes: each either succeeds or raises DatasetError, never another exception."""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmmrec.data import decode_image_value, load_dataset, read_items_tsv, read_users_tsv, write_dataset
from pmmrec.data.image_store import HEADER, IMAGE_MAGIC
from pmmrec.data.reference_import import decode_reference_value
from pmmrec.errors import DatasetError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Random bytes mostly fail on the first byte; this alphabet reaches deeper into the parsers.
tsv_like = st.lists(
    st.sampled_from([b"a", b"b", b"1", b"x", b"\t", b" ", b"\n", b"\r\n", b"\xef\xbb\xbf", b"\xff", b"\x00", b"\xc3"]),
    max_size=40,
).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=300), tsv_like)


def _write(directory: str, name: str, content: bytes) -> Path:
    path = Path(directory) / name
    path.write_bytes(content)
    return path


@FUZZ
@given(content=any_bytes)
def test_items_parser(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        try:
            item_ids, texts = read_items_tsv(_write(directory, "items.tsv", content))
        except DatasetError as error:
            assert str(error).startswith("items.tsv")
        else:
            assert len(item_ids) == len(texts) == len(set(item_ids)) > 0
            assert all(text.strip() for text in texts)


@FUZZ
@given(content=any_bytes)
def test_users_parser(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        try:
            user_ids, sequences = read_users_tsv(_write(directory, "users.tsv", content), {"a": 1, "b": 2, "1": 3})
        except DatasetError as error:
            assert str(error).startswith("users.tsv")
        else:
            assert len(user_ids) == len(sequences) > 0
            assert all(sequence.dtype == np.int64 and len(sequence) for sequence in sequences)


@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=200).map(
            lambda tail: HEADER.pack(IMAGE_MAGIC, 1, tail[0] % 3 if tail else 0, 2, 2, 3) + tail
        ),
    )
)
def test_image_value_decoder(content: bytes) -> None:
    try:
        pixels = decode_image_value(content)
    except DatasetError:
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3


@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=60).map(
            lambda tail: pickle.dumps(np.zeros((2, 2, 3), np.uint8), protocol=2)[: -len(tail) or None] + tail
        ),
        st.binary(max_size=60).map(lambda tail: b"\x80\x04" + tail),
    )
)
def test_trusted_reference_values(content: bytes) -> None:
    try:
        pixels = decode_reference_value(content, trust_pickle=True, size=4, where="fuzz")
    except DatasetError:
        return
    assert pixels.shape == (4, 4, 3)


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=80).map(str.encode)))
def test_dataset_json(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = write_dataset(
            Path(directory) / "ds",
            name="t",
            item_ids=["a"],
            item_texts=["A"],
            user_ids=["u"],
            user_items=[["a"]],
            provenance={},
            preprocessing={},
        )
        (root / "dataset.json").write_bytes(content)
        try:
            load_dataset(root)
        except DatasetError:
            return
        raise AssertionError("random dataset.json accepted")


@FUZZ
@given(
    info=st.dictionaries(
        st.sampled_from(["format", "format_version", "name", "counts", "images", "files", "items_without_images"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=5),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        ),
    )
)
def test_dataset_json_fields(info: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = write_dataset(
            Path(directory) / "ds",
            name="t",
            item_ids=["a"],
            item_texts=["A"],
            user_ids=["u"],
            user_items=[["a"]],
            provenance={},
            preprocessing={},
        )
        original = json.loads((root / "dataset.json").read_text())
        (root / "dataset.json").write_text(json.dumps({**original, **info}))
        try:
            load_dataset(root)
        except DatasetError:
            return
