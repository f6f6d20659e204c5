"""Issue 25, kinds 1 to 3: crashes without a message, broken models served as fine, memory from a few bytes.

Every folder here is edited as a careful hostile author would: the file changed, then every checksum and pin
rewritten to match (`tiny.reseal`, `stranger.seal_model`, `stranger.seal_dataset`), so only pmmrec's checks of
meaning stand between the edit and the user. Whatever could end the process (a signal) or allocate gigabytes runs
in a forked child with its address space capped (the `stranger_worker` fixture); the rest runs in-process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import stranger
import tiny
import torch
from PIL import Image

from pmmrec.components import load_component
from pmmrec.errors import ArtefactError, DatasetError

pytestmark = pytest.mark.robustness


# ---- 1. a process that crashes with no message --------------------------------------------------------------


def test_a_truncated_image_lmdb_is_one_line_never_a_signal(
    stranger_worker: stranger.Stranger, stranger_folders: dict[str, Path], tmp_path: Path
) -> None:
    """Bug: a data.mdb truncated (its hash in dataset.json updated) killed `data check` and `recommend` with SIGBUS."""
    data = stranger.copy_folder(stranger_folders["data"], tmp_path / "data")
    lmdb_file = data / "images.lmdb" / "data.mdb"
    lmdb_file.write_bytes(lmdb_file.read_bytes()[: lmdb_file.stat().st_size // 2])
    stranger.seal_dataset(data)
    model = stranger_folders["model"]
    for args in (["data", "check", data], ["recommend", "--model", model, "--data", data, "--user", "u0"]):
        stranger.assert_one_line(stranger_worker.run(*args), "images.lmdb/data.mdb: truncated LMDB file")


def test_a_corrupted_lmdb_page_is_one_line(
    stranger_worker: stranger.Stranger, stranger_folders: dict[str, Path], tmp_path: Path
) -> None:
    """Bug: a corrupted LMDB page gave an lmdb.CorruptedError traceback (or worse, a read outside the map)."""
    data = stranger.copy_folder(stranger_folders["data"], tmp_path / "data")
    lmdb_file = data / "images.lmdb" / "data.mdb"
    raw = bytearray(lmdb_file.read_bytes())
    page = 4096
    for number in range(2, len(raw) // page):  # scramble every tree page's node offsets
        raw[number * page + 16 : number * page + 24] = b"\xff\x0f" * 4
    lmdb_file.write_bytes(bytes(raw))
    stranger.seal_dataset(data)
    stranger.assert_one_line(stranger_worker.run("data", "check", data), "images.lmdb/data.mdb: corrupted LMDB")


def test_an_lmdb_error_while_reading_is_one_line_naming_the_file(
    tiny_image_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards against lmdb errors escaping as tracebacks when a read fails after the file passed its checks."""
    import lmdb

    from pmmrec.data import ImageStore

    class Failing:
        def begin(self, **_: Any) -> Any:
            raise lmdb.CorruptedError("mdb_get: MDB_CORRUPTED: Located page was wrong type")

    store = ImageStore(tiny_image_dataset / "images.lmdb")
    monkeypatch.setattr("pmmrec.data.image_store.shared_environment", lambda _path: Failing())
    with pytest.raises(DatasetError, match=r"images.lmdb: unreadable LMDB \(CorruptedError: mdb_get"):
        store.get_many(["i1"])


def test_every_truncation_of_an_lmdb_file_is_refused_before_it_is_mapped(tiny_image_dataset: Path, tmp_path: Path) -> None:
    """Guards against a truncation the check lets through (lmdb would then read pages that are not there)."""
    from pmmrec.data.lmdb_check import check_lmdb_file

    raw = (tiny_image_dataset / "images.lmdb" / "data.mdb").read_bytes()
    check_lmdb_file(tiny_image_dataset / "images.lmdb" / "data.mdb")
    for size in sorted({0, 100, 4095, 4096, 8192, *range(8192, len(raw), 2048), len(raw) - 1}):
        path = tmp_path / f"cut-{size}.mdb"
        path.write_bytes(raw[:size])
        with pytest.raises(DatasetError, match="LMDB"):
            check_lmdb_file(path)


# ---- 2. broken models served as if fine ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda t: t["blocks.0.linear1.weight"].__setitem__((0, 0), float("nan")), "holds NaN or infinite values"),
        (lambda t: t["positions.weight"].__setitem__((1, 1), float("inf")), "holds NaN or infinite values"),
        (lambda t: t.__setitem__("input_norm.weight", torch.ones(32, dtype=torch.int64)), "is torch.int64, expected a floating-point"),
    ],
    ids=["nan", "inf", "integer"],
)
def test_broken_weights_are_refused_at_load_naming_component_and_tensor(
    user_encoder: Any, tmp_path: Path, change: Any, fragment: str
) -> None:
    """Bug: a model whose weights are NaN loaded without complaint (nan scores in arbitrary order, a 500 per
    /recommend); integer tensors loaded where floats are expected."""
    folder = user_encoder.save_pretrained(tmp_path / "user")
    stranger.rewrite_weights(folder, change)
    with pytest.raises(ArtefactError) as info:
        load_component(folder)
    message = str(info.value)
    assert "\n" not in message and "model.safetensors: user_encoder/sasrec: tensor" in message and fragment in message


def test_a_model_with_nan_weights_is_one_line_on_the_command_line(
    stranger_worker: stranger.Stranger, stranger_folders: dict[str, Path], tmp_path: Path
) -> None:
    model = stranger.copy_folder(stranger_folders["model"], tmp_path / "model")
    stranger.rewrite_weights(model / "user", lambda t: t["positions.weight"].fill_(float("nan")))
    stranger.seal_model(model)
    args = ["recommend", "--model", model, "--data", stranger_folders["data"], "--user", "u0"]
    stranger.assert_one_line(stranger_worker.run(*args), "user/model.safetensors", "tensor 'positions.weight'", "NaN")


def test_the_server_never_answers_500_because_of_a_score(encoded: Any) -> None:
    """Bug: NaN scores made every /recommend a 500 (JSON cannot hold NaN). An item whose score is not finite is
    never recommended; the others are, in order."""
    from fastapi.testclient import TestClient

    from pmmrec.serving import RecommenderService, create_app

    table = encoded.snapshot().table.clone()
    table[3] = float("nan")
    table[5] = float("inf")
    service = RecommenderService(
        encoded.model, encoded.item_ids, encoded.item_texts, table, users=encoded.view.users,
        image_store=encoded.view.image_store, dataset_name=encoded.view.dataset_name,
    )  # fmt: skip
    response = TestClient(create_app(service=service)).post("/recommend", json={"history": ["1", "2"], "k": 30})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    scores = [item["score"] for item in items]
    assert all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
    returned = {item["item_id"] for item in items}
    assert encoded.item_ids[2] not in returned and encoded.item_ids[4] not in returned and len(returned) == 26


def test_ranking_never_returns_a_non_finite_score() -> None:
    from pmmrec.ranking import NO_ITEM, top_k

    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [float("nan"), 0.0], [0.5, 0.0], [float("inf"), 0.0]])
    scores, indices = top_k(torch.tensor([[1.0, 0.0]]), table, 4)
    assert indices.tolist() == [[1, 3, NO_ITEM, NO_ITEM]]
    assert scores[0, :2].tolist() == [1.0, 0.5]


# ---- 3. memory from a few bytes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("user", {"dim": 8192, "layers": 48, "heads": 2}),
        ("id", {"dim": 8192, "num_items": 50_000_000}),
        ("text", {"backbone_config": {"hidden_size": 8192, "num_hidden_layers": 96, "num_attention_heads": 256,
                                      "intermediate_size": 65536, "vocab_size": 1_000_000,
                                      "max_position_embeddings": 65536}}),
    ],
    ids=["user-8192x48", "id-5e7x8192", "bert-at-its-maximum"],
)  # fmt: skip
def test_absurd_products_of_valid_fields_are_refused_before_allocation(
    stranger_worker: stranger.Stranger, tmp_path: Path, kind: str, config: dict[str, Any]
) -> None:
    """Bug: configs whose every field is within its limit but whose product is absurd started allocating 32 GB
    to 1.6 TB. The memory budget refuses them first, naming config.json and the configuration."""
    component = {"user": tiny.tiny_user_encoder, "id": tiny.tiny_id_tower, "text": tiny.tiny_text_encoder}[kind]()
    folder = component.save_pretrained(tmp_path / kind)

    def grow(document: dict[str, Any]) -> None:
        for key, value in config.items():
            if isinstance(value, dict):
                document["config"][key].update(value)
            else:
                document["config"][key] = value
        if kind == "id":
            (folder / "item_ids.json").unlink()

    stranger.edit_json(folder / "config.json", grow)
    tiny.reseal(folder)
    stranger.assert_one_line(stranger_worker.run("inspect", folder), f"{folder}/config.json", "needs about", "of memory")


def test_a_budget_set_by_the_user_refuses_what_exceeds_it(isolated: Path) -> None:
    stranger.cli_one_line("--max-memory", "1M", "init", "user", "--dim", "64", "--out", isolated / "u", fragments=(
        "needs about", "PMMREC_MAX_MEMORY / --max-memory"))  # fmt: skip
    stranger.cli_one_line("--max-memory", "lots", "init", "user", "--out", isolated / "u", code=2)
    stranger.cli_one_line("--max-memory", "64M", "init", "user", "--dim", "64", "--out", isolated / "u", code=0)


def _strip_png(width: int, height: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_a_thin_strip_image_is_refused_by_the_builders_before_it_is_resized(
    stranger_worker: stranger.Stranger, tmp_path: Path
) -> None:
    """Bug: a 196-byte 40000x1 PNG was resized to 8,960,000 x 224 (8.6 GB) by `data build-lmdb` and
    `data import-reference`; the server refused such shapes, the builders did not. One budget now serves all."""
    import lmdb

    png = _strip_png(40_000, 1)
    assert len(png) < 400
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png)
    (tmp_path / "images" / "b.png").write_bytes(tiny.png_bytes())
    (tmp_path / "items.tsv").write_text("a\tAlpha\nb\tBeta\n")
    (tmp_path / "users.tsv").write_text("u\ta b a b\n")
    build = ["data", "build-lmdb", "--items", tmp_path / "items.tsv", "--images", tmp_path / "images",
             "--out", tmp_path / "out.lmdb"]  # fmt: skip
    stranger.assert_one_line(stranger_worker.run(*build), "a")
    allowed = stranger_worker.run(*build, "--allow-missing")
    assert allowed.status == 0 and not allowed.problems(), allowed
    assert "aspect ratio 40,000:1 is over the limit of 20:1" in allowed.output
    source = tmp_path / "reference.lmdb"
    with lmdb.open(str(source), map_size=1 << 24) as env, env.begin(write=True) as txn:
        txn.put(b"a", png)
        txn.put(b"b", tiny.png_bytes())
    imported = ["data", "import-reference", "--users", tmp_path / "users.tsv", "--items", tmp_path / "items.tsv",
                "--lmdb", source, "--out", tmp_path / "imported"]  # fmt: skip
    stranger.assert_one_line(stranger_worker.run(*imported), "aspect ratio")


def test_every_path_that_decodes_an_image_shares_the_budget() -> None:
    from pmmrec.components.inputs import ImagePreprocessor
    from pmmrec.data.image_store import decode_image_bytes, decode_image_value, encode_image_value
    from pmmrec.imaging import ImageBudgetError

    strip = _strip_png(40_000, 1)
    with pytest.raises(ImageBudgetError, match="aspect ratio"):
        decode_image_bytes(strip, 224, "strip")  # builders and the reference import
    with pytest.raises(ImageBudgetError, match="aspect ratio"):
        ImagePreprocessor(224).pixels(Image.new("RGB", (40_000, 1)))  # training, encode_items, the server
    value = encode_image_value(np.zeros((1, 30_000, 3), dtype=np.uint8), "png")
    with pytest.raises(ImageBudgetError, match="aspect ratio"):
        decode_image_value(value, "stored")  # an image LMDB of a stranger's dataset


def test_the_restricted_unpickler_builds_nothing_large() -> None:
    """Bug: bytearray(N) passed the restricted unpickler of --trust-pickle (3.4 GB from a 33-byte pickle)."""
    import pickle

    from pmmrec.data.reference_import import ForbiddenPickleError, restricted_unpickle

    class Bomb:
        def __init__(self, call: Any, args: tuple[Any, ...]) -> None:
            self.call, self.args = call, args

        def __reduce__(self) -> Any:
            return self.call, self.args

    bombs = [
        Bomb(bytearray, (3_400_000_000,)),
        Bomb(bytes, (3_400_000_000,)),
        Bomb(np.ndarray, ((100_000, 100_000),)),
    ]
    for bomb in bombs:
        payload = pickle.dumps(bomb, protocol=2)
        assert len(payload) < 100
        with pytest.raises(DatasetError):
            restricted_unpickle(payload, "value")
    reconstruct = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\xca\x9a;\x85C\x01b\x87R."
    with pytest.raises(ForbiddenPickleError, match="empty array"):
        restricted_unpickle(reconstruct, "value")
    many = b"\x80\x02](" + b"N" * 1_100_000 + b"e."
    with pytest.raises(ForbiddenPickleError, match="more than 1,000,000 objects"):
        restricted_unpickle(many, "value")
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(restricted_unpickle(pickle.dumps(image, protocol=2), "value"), image)


def test_a_split_record_asking_for_a_billion_items_is_refused(
    stranger_worker: stranger.Stranger, stranger_folders: dict[str, Path], tmp_path: Path
) -> None:
    """Bug: data_split.json with max_length 1e9 allocated 7.45 GiB."""
    model = stranger.copy_folder(stranger_folders["model"], tmp_path / "model")
    stranger.edit_json(model / "data_split.json", lambda d: d.update(max_length=1_000_000_000))
    stranger.seal_model(model)
    args = ["evaluate", "--model", model, "--data", stranger_folders["data"], "--quiet"]
    stranger.assert_one_line(stranger_worker.run(*args), "data_split.json", "max_length")
