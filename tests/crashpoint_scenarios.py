"""The writing commands the crash-point harness (crashpoints.py) kills, each with its starting folder and readers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crashpoints import Scenario, choose_points, cli, snapshot


def _tiny_movielens(folder: Path) -> None:
    folder.mkdir(parents=True)
    genres = ["Comedy", "Drama", "Sci-Fi", "Horror", "Fantasy", "Action"]
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{n}\tFilm {n}\t{1990 + n}\t{genres[n % 6]} {genres[(n + 2) % 6]}" for n in range(1, 21)]
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{(u * 3 + s) % 20 + 1}\t4\t{880000000 + 1000 * u + s}" for u in range(1, 13) for s in range(7)]
    (folder / "ml-100k.item").write_text("\n".join(items) + "\n")
    (folder / "ml-100k.inter").write_text("\n".join(inter) + "\n")


def _movielens_from(root: Path) -> None:
    """Point `data movielens` at a 20-item stand-in of the recbole wheel (same format, same code path)."""
    from pmmrec.data import movielens

    movielens.locate_movielens = lambda: root / "ml-src"  # type: ignore[assignment]
    movielens.EXPECTED_COUNTS = {"users": 12, "items": 20, "interactions": 84}


def _images(folder: Path, item_ids: list[str]) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    for n, item_id in enumerate(item_ids):
        pixels = np.random.default_rng(n).integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{item_id}.png")


def _same_component(folder: Path, reference: Path) -> None:
    from pmmrec.components import load_component

    load_component(str(folder))
    assert snapshot(folder) == snapshot(reference), f"{folder} differs from {reference}"


def scenarios() -> list[Scenario]:
    """init, assemble, data movielens / import-reference / build-lmdb, a local Hub publish, finetune."""
    import tiny
    from tiny import MAX_LENGTH, save_tiny_components, write_tiny_dataset

    def init_prepare(root: Path) -> None:
        cli("init", "user", "--dim", "8", "--out", root / "user")

    def init_command(root: Path) -> None:
        import torch

        torch.manual_seed(0)
        cli("init", "user", "--dim", "16", "--layers", "1", "--out", root / "user", "--overwrite")

    def assemble_prepare(root: Path) -> None:
        tiny.tiny_clip_encoder().save_pretrained(root / "vision")
        for seed in (1, 2):
            tiny.tiny_user_encoder(seed=seed).save_pretrained(root / f"user{seed}")
        cli("assemble", "--vision", root / "vision", "--user", root / "user1", "--out", root / "model")

    def assemble_command(root: Path) -> None:
        cli("assemble", "--vision", root / "vision", "--user", root / "user2", "--out", root / "model", "--overwrite")

    def movielens_prepare(root: Path) -> None:
        _tiny_movielens(root / "ml-src")
        write_tiny_dataset(root / "data")

    def movielens_command(root: Path) -> None:
        _movielens_from(root)
        cli("data", "movielens", "--out", root / "data", "--overwrite")

    def import_prepare(root: Path) -> None:
        import lmdb

        (root / "X_items_texts.tsv").write_text("".join(f"i{n}\tThe item number {n}\n" for n in range(1, 11)))
        (root / "X_users.tsv").write_text("".join(f"u{u}\t" + " ".join(f"i{(u + s) % 10 + 1}" for s in range(5)) + "\n" for u in range(8)))
        _images(root / "img", [f"i{n}" for n in range(1, 11)])
        with lmdb.open(str(root / "X.lmdb"), map_size=1 << 24) as env, env.begin(write=True) as txn:
            for n in range(1, 11):
                txn.put(f"i{n}".encode(), (root / "img" / f"i{n}.png").read_bytes())
        write_tiny_dataset(root / "data")

    def import_command(root: Path) -> None:
        cli("data", "import-reference", "--users", root / "X_users.tsv", "--items", root / "X_items_texts.tsv",
            "--lmdb", root / "X.lmdb", "--size", "8", "--out", root / "data", "--overwrite")  # fmt: skip

    def lmdb_prepare(root: Path) -> None:
        write_tiny_dataset(root / "data")
        _images(root / "img", [f"i{n}" for n in range(1, 31)])

    def lmdb_command(root: Path) -> None:
        data = root / "data"
        cli("data", "build-lmdb", "--items", data / "items.tsv", "--images", root / "img", "--out", data / "images.lmdb",
            "--size", "8")  # fmt: skip

    def load_dataset_if_there(root: Path, _done: list[str]) -> None:
        from pmmrec.data import load_dataset

        load_dataset(root / "data")

    def publish_prepare(root: Path) -> None:
        tiny.tiny_user_encoder(seed=3).save_pretrained(root / "user")
        (root / "cache").mkdir()

    def publish_command(root: Path) -> None:
        from pmmrec.hub import publish_to_local_cache

        publish_to_local_cache(root / "user", "acme/user", cache_dir=root / "cache", tag="v1")

    def publish_readers(root: Path, _done: list[str] | None = None) -> None:
        from pmmrec.errors import ReferenceResolutionError
        from pmmrec.references import resolve_reference

        for reference in ("hub:acme/user@v1", "hub:acme/user"):
            try:
                resolved = resolve_reference(reference, cache_dir=root / "cache")
            except ReferenceResolutionError as exc:
                assert "not in the local Hub cache" in str(exc), str(exc)
                continue
            _same_component(resolved.path, root / "user")

    def publish_rerun(root: Path) -> None:
        publish_command(root)
        publish_readers(root)
        assert (root / "cache" / "models--acme--user" / "refs" / "v1").is_file()

    def finetune_args(root: Path) -> list[Any]:
        return [
            "finetune", "--data", root / "data", "--text", root / "parts" / "text", "--user", root / "parts" / "user",
            "--max-length", MAX_LENGTH, "--epochs", 2, "--batch-size", 8, "--lr", 0.003, "--seed", 7, "--device",
            "cpu", "--quiet", "--out", root / "run",
        ]  # fmt: skip

    def finetune_prepare(root: Path) -> None:
        write_tiny_dataset(root / "data")
        save_tiny_components(root / "parts")

    def finetune_command(root: Path) -> None:
        os.environ["PMMREC_CACHE"] = str(root / "cache")
        cli(*finetune_args(root))

    def finetune_resume(root: Path) -> None:
        os.environ["PMMREC_CACHE"] = str(root / "cache")
        cli(*finetune_args(root), "--resume")

    def finetune_readers(root: Path, done: list[str]) -> None:
        # Once best/ was complete, it must load whatever instant the process died at (a later replacement too).
        if any(op.startswith("rename") and op.endswith("run/best") for op in done):
            _load_model_if_there(root / "run" / "best")

    def finetune_points(trace: list[str], root: Path) -> list[int]:
        # The renames of checkpoints/last and best/ and the deletion of their old versions (with one operation
        # inside it); four other moments, evenly spread: each kill point costs a training run and a resume.
        targets = [root / "run" / "checkpoints" / "last", root / "run" / "best"]
        return choose_points(trace, targets, rest=4, kinds=("rename", "replace", "rmtree"), inside_rmtree=1)

    def finetune_after_kill(root: Path, trace: list[str], k: int, rerun_log: str) -> None:
        done = [i for i, op in enumerate(trace, 1) if op.startswith("rename") and op.endswith("checkpoints/last") and i < k]
        if done:  # a complete checkpoint existed when the process died: --resume must continue from it
            assert "starting the run from the beginning" not in rerun_log, "a complete checkpoint was lost"

    return [
        Scenario("init", init_prepare, init_command, ["user"], lambda r, _: _load_if_there(r / "user")),
        Scenario("assemble", assemble_prepare, assemble_command, ["model"], lambda r, _: _load_model_if_there(r / "model")),
        Scenario("data-movielens", movielens_prepare, movielens_command, ["data"], load_dataset_if_there),
        Scenario("data-import-reference", import_prepare, import_command, ["data"], load_dataset_if_there),
        Scenario("data-build-lmdb", lmdb_prepare, lmdb_command, ["data"], load_dataset_if_there,
                 rerun=lambda r: _rerun_build_lmdb(r, lmdb_command)),
        Scenario("push-local-cache", publish_prepare, publish_command, ["cache"], publish_readers,
                 rerun=publish_rerun, exact=False),
        Scenario("finetune", finetune_prepare, finetune_command,
                 ["run/model", "run/checkpoints/last/training_module.safetensors"],
                 finetune_readers, rerun=finetune_resume, points=finetune_points, exact=False,
                 after_kill=finetune_after_kill),
    ]


def _load_if_there(folder: Path) -> None:
    from pmmrec.components import load_component

    load_component(str(folder))


def _load_model_if_there(folder: Path) -> None:
    from pmmrec.model import PMMRec

    PMMRec.from_pretrained(folder)


def _rerun_build_lmdb(root: Path, command: Callable[[Path], None]) -> None:
    """build-lmdb again; the images may already be in place (the kill came after the swap), then with --overwrite."""
    from pmmrec.data import load_dataset

    if load_dataset(root / "data").images_path is None:
        command(root)
    else:
        data = root / "data"
        cli("data", "build-lmdb", "--items", data / "items.tsv", "--images", root / "img", "--out",
            data / "images.lmdb", "--size", "8", "--overwrite")  # fmt: skip
