"""A stranger's folder cannot crash pmmrec, lie to it or exhaust its memory (issue 25), property-based.

Every JSON and text file of a tiny trained model folder and of a tiny dataset folder is mutated (types, ranges,
nesting, duplicate keys, encodings, truncation, hostile lines), every checksum and pin is then rewritten to match,
as a careful hostile author would, and pmmrec's commands are run on the result in a forked child whose address space
is capped a few hundred MB above what its imports map (tests/stranger.py). Each run must end in success or in exactly
one `error:` line: never a signal, never a traceback, never the safety net's "did not handle", never out of memory.
The examples are derandomized, so every CI run tries the same ones.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import stranger
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.robustness

MODEL_FILES = (
    "pmmrec.json",
    "data_split.json",
    "text/config.json",
    "text/checksums.json",
    "text/tokenizer/tokenizer.json",
    "text/tokenizer/tokenizer_config.json",
    "fusion/config.json",
    "user/config.json",
    "user/checksums.json",
    "user/model.safetensors",
    "text/model.safetensors",
)
DATASET_FILES = ("dataset.json", "items.tsv", "users.tsv", "images.lmdb/data.mdb", "an image value")
SETTINGS = settings(  # PMMREC_STRANGER_EXAMPLES=200 explores further (random, not derandomized)
    max_examples=int(os.environ.get("PMMREC_STRANGER_EXAMPLES", "20")),
    derandomize="PMMREC_STRANGER_EXAMPLES" not in os.environ,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

HOSTILE = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 7, 4096, 4097, 2**31, 2**63, 10**9, -(10**18), 10**30]),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -0.0, 5.0, 0.5, 1e-300]),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["", "gpt2", "bert", "BertTokenizer", "XLMRobertaTokenizer", "../x", "\u0000", "gelu", "nan"]),
    st.lists(st.integers(-2, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 3), max_size=2),
)


# ---- mutations ------------------------------------------------------------------------------------------------


def _dumps_duplicating(document: Any, path: tuple[Any, ...], value: Any) -> str:
    """JSON text of `document` in which the object at `path` names its first key twice (the second with `value`)."""

    def render(node: Any, here: tuple[Any, ...]) -> str:
        if isinstance(node, dict):
            items = [f"{json.dumps(key)}: {render(child, (*here, key))}" for key, child in node.items()]
            if here == path and node:
                items.append(f"{json.dumps(next(iter(node)))}: {json.dumps(value)}")
            return "{" + ", ".join(items) + "}"
        if isinstance(node, list):
            return "[" + ", ".join(render(child, (*here, index)) for index, child in enumerate(node)) + "]"
        return json.dumps(node)

    return render(document, ())


@st.composite
def json_mutation(draw: Any, raw: bytes) -> bytes:
    """A hostile version of a JSON file's bytes."""
    kind = draw(st.sampled_from(["value", "value", "value", "delete", "add", "duplicate", "nest", "encode", "truncate"]))
    if kind == "truncate":
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    document = json.loads(raw)
    paths = stranger.leaves(document)
    path = draw(st.sampled_from(paths))
    if kind == "value":
        document = stranger.replace_at(document, path, draw(HOSTILE))
    elif kind == "delete":
        document = stranger.delete_at(document, path)
    elif kind == "add":
        dicts = [p for p in paths if isinstance(_get(document, p), dict)]
        document = stranger.replace_at(document, (*draw(st.sampled_from(dicts)), "surprise"), draw(HOSTILE))
    elif kind == "duplicate":
        dicts = [p for p in paths if isinstance(_get(document, p), dict) and _get(document, p)]
        return _dumps_duplicating(document, draw(st.sampled_from(dicts)), draw(HOSTILE)).encode()
    elif kind == "nest":
        depth = draw(st.sampled_from([70, 1000, 100_000]))
        return json.dumps(stranger.replace_at(document, path, "@")).replace('"@"', "[" * depth + "]" * depth).encode()
    else:
        text = json.dumps(document, ensure_ascii=False)
        return draw(st.sampled_from([text.encode("utf-16"), b"\xef\xbb\xbf" + text.encode(), (text + "\u00e9").encode("latin-1", "replace")]))
    return json.dumps(document).encode()


def _get(document: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        document = document[part]
    return document


@st.composite
def text_mutation(draw: Any, raw: bytes) -> bytes:
    """A hostile version of a TSV file's bytes."""
    lines = raw.split(b"\n")
    index = draw(st.integers(0, max(len(lines) - 2, 0)))
    kind = draw(st.sampled_from(["truncate", "bytes", "duplicate", "drop", "huge", "encode", "fields", "empty"]))
    if kind == "truncate":
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    if kind == "bytes":
        junk = draw(st.sampled_from([b"\x00", b"\xff\xfe", b"\t", b"\r", b"\xc2\x85", b"\xe2\x80\xa8", b" \t "]))
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + junk + raw[at:]
    if kind == "duplicate":
        lines.insert(index, lines[index])
    elif kind == "drop":
        del lines[index]
    elif kind == "huge":
        lines[index] = lines[index] + b" x" * 200_000
    elif kind == "encode":
        return raw.decode().encode("utf-16")
    elif kind == "fields":
        lines[index] = lines[index].replace(b"\t", b" ", 1) if b"\t" in lines[index] else lines[index] + b"\t\t"
    else:
        return b""
    return b"\n".join(lines)


@st.composite
def binary_mutation(draw: Any, raw: bytes) -> bytes:
    """A truncated or bit-flipped version of a binary file."""
    if draw(st.booleans()):
        return raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@st.composite
def weights_mutation(draw: Any, path: Path) -> bytes:
    """A model.safetensors with one tensor made hostile (values, dtype, shape, presence); its header's tensor digest
    rewritten to match, as pmmrec would have written it."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    from pmmrec.integrity import tensors_digest

    tensors = load_file(str(path))
    key = draw(st.sampled_from(sorted(tensors)))
    kind = draw(st.sampled_from(["nan", "inf", "huge", "int", "half", "bool", "shape", "drop", "extra"]))
    tensor = tensors[key]
    if kind in ("nan", "inf", "huge"):
        value = {"nan": float("nan"), "inf": float("-inf"), "huge": 3e38}[kind]
        tensor = tensor.clone().reshape(-1)
        tensor[draw(st.integers(0, tensor.numel() - 1))] = value
        tensors[key] = tensor.reshape(tensors[key].shape)
    elif kind in ("int", "half", "bool"):
        tensors[key] = tensor.to({"int": torch.int64, "half": torch.float16, "bool": torch.bool}[kind])
    elif kind == "shape":
        tensors[key] = tensor.reshape(-1)[: max(tensor.numel() - 1, 0)]
    elif kind == "drop":
        del tensors[key]
    else:
        tensors["surprise"] = torch.zeros(3)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    metadata["pmmrec_tensors_sha256"] = tensors_digest(tensors)
    return save(tensors, metadata=metadata)


def _png(width: int, height: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@st.composite
def image_value_mutation(draw: Any, lmdb_folder: Path) -> bytes:
    """The image LMDB rewritten (a valid LMDB) with one item's value made hostile: a strip, a payload larger than
    its header says, a raw payload of the wrong size, a pickle, random bytes."""
    import pickle
    import struct
    import tempfile

    import lmdb

    from pmmrec.data.image_store import HEADER, IMAGE_MAGIC, write_image_lmdb

    with lmdb.open(str(lmdb_folder), readonly=True, lock=False) as env, env.begin() as txn:
        pairs = [(bytes(key).decode(), bytes(value)) for key, value in txn.cursor()]
    index = draw(st.integers(0, len(pairs) - 1))
    kind = draw(st.sampled_from(["strip", "bomb", "raw", "pickle", "junk", "header"]))
    if kind == "strip":
        value = HEADER.pack(IMAGE_MAGIC, 1, 1, 1, 40_000, 3) + _png(40_000, 1)
    elif kind == "bomb":
        value = HEADER.pack(IMAGE_MAGIC, 1, 1, 32, 32, 3) + _png(2_000, 2_000)
    elif kind == "raw":
        value = HEADER.pack(IMAGE_MAGIC, 1, 0, 60_000, 60_000, 3) + b"\0" * 100
    elif kind == "pickle":
        value = pickle.dumps({"image": b"\0" * 12})
    elif kind == "header":
        value = struct.pack("<4sBBHHBx", IMAGE_MAGIC, 1, draw(st.integers(0, 255)), 0, 65_535, 3) + b"x" * 10
    else:
        value = draw(st.binary(max_size=64))
    pairs[index] = (pairs[index][0], value)
    with tempfile.TemporaryDirectory() as scratch:
        write_image_lmdb(Path(scratch) / "out", pairs)
        return (Path(scratch) / "out" / "data.mdb").read_bytes()


def mutation_for(name: str, raw: bytes, path: Path | None = None) -> st.SearchStrategy[bytes]:
    if name.endswith(".safetensors") and path is not None:
        return weights_mutation(path)
    if name.endswith(".json"):
        return json_mutation(raw)
    if name.endswith(".tsv"):
        return text_mutation(raw)
    return binary_mutation(raw)


# ---- runs ----------------------------------------------------------------------------------------------------


def _copy(source: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return target


def _check(worker: stranger.Stranger, runs: list[list[str]], where: str) -> None:
    for args in runs:
        outcome = worker.run(*args)
        assert not outcome.problems(), (where, args, outcome.problems())


def test_the_worker_reports_success_errors_and_signals(
    stranger_worker: stranger.Stranger, stranger_folders: dict[str, Path]
) -> None:
    """Guards against a harness that cannot see what it is meant to catch."""
    ok = stranger_worker.run("data", "check", stranger_folders["data"])
    assert ok.status == 0 and not ok.problems(), ok
    refused = stranger_worker.run("inspect", stranger_folders["root"] / "nothing-here")
    assert refused.status == 1 and refused.output.startswith("error: ") and not refused.problems(), refused
    capped = stranger_worker.run("init", "user", "--dim", "8192", "--layers", "48", "--out", stranger_folders["root"] / "big", cap=200 << 20)
    assert capped.status == 1 and "address-space limit" in capped.output and not capped.problems(), capped


@SETTINGS
@given(data=st.data())
def test_a_mutated_model_folder_is_refused_in_one_line_or_works(
    data: st.DataObject, stranger_worker: stranger.Stranger, stranger_folders: dict[str, Path]
) -> None:
    name = data.draw(st.sampled_from(MODEL_FILES), label="file")
    model = _copy(stranger_folders["model"], stranger_folders["root"] / "mutated-model")
    raw = (model / name).read_bytes()
    mutated = data.draw(mutation_for(name, raw, model / name), label="bytes")
    if name == "pmmrec.json":
        stranger.seal_model(model)
        (model / name).write_bytes(mutated)
    else:
        (model / name).write_bytes(mutated)
        stranger.seal_model(model, keep=model / name if name.endswith("checksums.json") else None)
    runs = [
        ["inspect", str(model)],
        ["recommend", "--model", str(model), "--data", str(stranger_folders["data"]), "--user", "u0", "--k", "3"],
        ["evaluate", "--model", str(model), "--data", str(stranger_folders["data"]), "--quiet", "--k", "5"],
    ]
    _check(stranger_worker, runs, name)


@SETTINGS
@given(data=st.data())
def test_a_mutated_dataset_folder_is_refused_in_one_line_or_works(
    data: st.DataObject, stranger_worker: stranger.Stranger, stranger_folders: dict[str, Path]
) -> None:
    name = data.draw(st.sampled_from(DATASET_FILES), label="file")
    dataset = _copy(stranger_folders["data"], stranger_folders["root"] / "mutated-data")
    if name == "an image value":
        mutated = data.draw(image_value_mutation(dataset / "images.lmdb"), label="bytes")
        name = "images.lmdb/data.mdb"
    else:
        mutated = data.draw(mutation_for(name, (dataset / name).read_bytes()), label="bytes")
    if name == "dataset.json":
        stranger.seal_dataset(dataset)
        (dataset / name).write_bytes(mutated)
    else:
        (dataset / name).write_bytes(mutated)
        stranger.seal_dataset(dataset)
    runs = [
        ["data", "check", str(dataset)],
        ["recommend", "--model", str(stranger_folders["model"]), "--data", str(dataset), "--user", "u0", "--k", "3"],
    ]
    _check(stranger_worker, runs, name)
