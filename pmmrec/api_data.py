"""The `pmmrec data ...` commands: build, import and check dataset folders (see `pmmrec.api`, which lists them).

Declared like every command (`@command`, parameters with their help); imported at the end of `pmmrec.api`, so the
command line shows them after the others. Nothing heavy is imported at the top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pmmrec.commands import Arg, Opt, Overwrite, PathLike, command, lazy

ImageSize = Annotated[int, Opt("Side of the stored square images (resize + centre crop).", flag="--size")]
Payload = Annotated[
    Literal["png", "jpeg", "raw"], Opt("Stored image payload: png (lossless), jpeg or raw pixels.", flag="--format")
]
AllowMissing = Annotated[bool, Opt("Record items without a usable image instead of failing.")]
OutFolder = Annotated[PathLike, Opt("Folder to create.", cli=Path)]


# ---- datasets ------------------------------------------------------------------------------------------------


def _show_dataset(path: Path, _: dict[str, Any], *more: str) -> str:
    from pmmrec.data import format_statistics

    return "\n".join([f"wrote {path}", format_statistics(data_check(path)), *more])


@command(show=lambda path, a: _show_dataset(path, a, f"licence: {lazy('pmmrec.data.movielens', 'LICENCE_NOTE')}"))
def data_movielens(
    out: OutFolder,
    *,
    domain: Annotated[
        Literal["all", "source", "target"],
        Opt("all = whole MovieLens-100K; source/target = the two transfer domains."),
    ] = "all",
    images: Annotated[
        Literal["none", "synthetic"], Opt("none, or synthetic pictures drawn from title and genres.")
    ] = "none",
    size: ImageSize = 224,
    new_items: Annotated[
        float,
        Opt("Share of items held out as new items: they occur only as validation and test targets (the demo: 0.2)."),
    ] = 0.0,
    new_items_rule: Annotated[
        Literal["first-seen", "hash"],
        Opt(
            "first-seen = the items whose first interaction is latest (cold start in time); hash = the rule used "
            "before issue 24, unrelated to time (kept to reproduce older tables)."
        ),
    ] = "first-seen",
    item_text: Annotated[
        Literal["title-year-genres", "title-year"],
        Opt(
            "What each item's text holds: title-year-genres, or title-year (no genres: synthetic pictures still show "
            "them as colours, the one case where pictures carry what the text lacks)."
        ),
    ] = "title-year-genres",
    overwrite: Overwrite = False,
    progress: bool = True,
) -> Path:
    """Build MovieLens-100K from the installed recbole==1.2.1 wheel (never redistribute the result)."""
    from pmmrec.arguments import check_arguments
    from pmmrec.data import build_movielens

    check_arguments(size=size, new_items=new_items)
    return build_movielens(
        out, domain=domain, images=images, image_size=size, overwrite=overwrite, new_items=new_items,
        new_items_rule=new_items_rule, item_text=item_text, progress=progress,
    )  # fmt: skip


def _show_build_lmdb(report: Any, a: dict[str, Any]) -> str:
    out = Path(a["out"])
    lines = [f"stored {len(report.stored):,} images ({a['size']}x{a['size']}, {a['payload']}) in {out}"]
    if report.failed:
        lines.append(f"warning: without image: {report.describe_failures()}")
    if (out.parent / "dataset.json").is_file() and out.name == "images.lmdb":
        lines.append(f"recorded the images in {out.parent / 'dataset.json'}")
    return "\n".join(lines)


@command(show=_show_build_lmdb)
def data_build_lmdb(
    items: Annotated[PathLike, Opt("items.tsv whose item ids name the images.", cli=Path)],
    images: Annotated[PathLike, Opt("Folder of <item id>.jpg|jpeg|png|webp files.", cli=Path)],
    out: Annotated[PathLike, Opt("LMDB folder to create (e.g. DATASET/images.lmdb).", cli=Path)],
    *,
    size: ImageSize = 224,
    payload: Payload = "png",
    allow_missing: AllowMissing = False,
    overwrite: Overwrite = False,
    progress: bool = True,
) -> Any:
    """Resize item images once and store them in an LMDB keyed by item id (no pickle).

    Returns the build report (images stored, missing, undecodable).
    """
    from pmmrec.arguments import check_arguments
    from pmmrec.data import build_image_lmdb

    check_arguments(size=size)
    return build_image_lmdb(
        Path(items), Path(images), Path(out), size=size, payload_format=payload, allow_missing=allow_missing,
        overwrite=overwrite, progress=progress,
    )  # fmt: skip


@command(show=_show_dataset)
def data_import_reference(
    users: Annotated[PathLike, Opt("Reference-family X_users.tsv.", cli=Path)],
    items: Annotated[PathLike, Opt("Reference-family X_items_texts.tsv.", cli=Path)],
    out: OutFolder,
    *,
    lmdb: Annotated[
        PathLike | None, Opt("Reference-family image LMDB, file or folder (default: none).", cli=Path)
    ] = None,
    trust_pickle: Annotated[
        bool, Opt("Read pickled LMDB values. Unpickling can run code chosen by the file's author: trusted files only.")
    ] = False,
    name: Annotated[str | None, Opt("Dataset name (default: from the users file name).")] = None,
    size: ImageSize = 224,
    payload: Payload = "png",
    allow_missing: AllowMissing = False,
    overwrite: Overwrite = False,
    progress: bool = True,
) -> Path:
    """Convert the reference family's users/items files (and image LMDB) into a dataset folder."""
    from pmmrec.arguments import check_arguments
    from pmmrec.data import import_reference

    check_arguments(size=size)
    return import_reference(
        users, items, out, lmdb_path=lmdb, trust_pickle=trust_pickle, image_size=size, payload_format=payload,
        allow_missing=allow_missing, overwrite=overwrite, name=name, progress=progress,
    )  # fmt: skip


@command(show=lambda stats, _: lazy("pmmrec.data", "format_statistics")(stats), json=True)
def data_check(folder: Annotated[PathLike, Arg("Dataset folder.", metavar="FOLDER", cli=Path)]) -> dict[str, Any]:
    """Validate a dataset folder (hashes, lines, ids, texts, images) and print its statistics."""
    from pmmrec.arguments import check_dataset_folder
    from pmmrec.data import check_dataset

    check_dataset_folder(folder, flag="FOLDER")
    return check_dataset(folder)
