"""MovieLens-100K read from the installed `recbole==1.2.1` wheel, whole or split into two transfer domains.

The wheel is located with `importlib.util.find_spec`, which finds a top-level package without executing it:
recbole itself is never imported (its imports pull heavy packages). GroupLens' terms forbid redistributing the
data, so pmmrec ships none of it and the built folders must not be committed or published.

Domain split (deterministic, documented in docs/datasets.md; `DOMAIN_RULES`, default `thriller`):

- an item belongs to the *target* domain when its genres include any of the rule's target genres (Thriller),
  otherwise to the *source* domain;
- a user belongs to the *target* domain when sha256(user id as UTF-8), read as a big-endian integer, modulo
  USER_BUCKETS is below the rule's target buckets (6 of 10), otherwise to the *source* domain;
- each user keeps only the interactions with items of their own domain, and users left with fewer than
  MIN_DOMAIN_INTERACTIONS interactions are dropped; each domain's catalogue is the items its users interacted with.

Item sets and user sets of the two domains are therefore disjoint. The default rule (issue 24) makes the source
domain more than 3x the target's training interactions (405 users, 34,310 interactions against the target's 494
users and about 10,500 training interactions with new items held out), the regime where transfer is meant to pay;
`issue-12` is the earlier rule (Fantasy, Horror, Sci-Fi, Thriller; 7 of 10 buckets: a source barely larger than
the target), kept to reproduce older tables.
Optionally a share of the items is held out as *new items*: by default those whose first interaction in the domain
is latest (cold start in time; `new_items`, see pmmrec.data.new_items).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pmmrec.data.builders import ImageSource, write_dataset
from pmmrec.data.image_store import DEFAULT_IMAGE_SIZE
from pmmrec.data.new_items import (
    NEW_ITEM_RULES,
    hashed_items,
    hold_out_new_items,
    new_items_record,
    newest_items,
)
from pmmrec.data.synthetic_images import render_synthetic_image
from pmmrec.errors import DatasetError

RECBOLE_REQUIREMENT = "recbole==1.2.1"
INSTALL_HINT = (
    f"install the wheel that carries MovieLens-100K without its dependencies: "
    f"pip install --no-deps {RECBOLE_REQUIREMENT}"
)
EXPECTED_COUNTS = {"users": 943, "items": 1682, "interactions": 100_000}
USER_BUCKETS = 10


@dataclass(frozen=True)
class DomainRule:
    """How MovieLens-100K splits into a source and a target domain: the target's genres and user buckets."""

    target_genres: tuple[str, ...]
    target_user_buckets: int  # users whose sha256 bucket (of USER_BUCKETS) is below this belong to the target


DOMAIN_RULES: dict[str, DomainRule] = {
    "thriller": DomainRule(("Thriller",), 6),  # issue 24: source > 3x the target's training interactions
    "issue-12": DomainRule(("Fantasy", "Horror", "Sci-Fi", "Thriller"), 7),  # before issue 24
}
DEFAULT_DOMAIN_RULE = "thriller"
TARGET_GENRES: tuple[str, ...] = DOMAIN_RULES[DEFAULT_DOMAIN_RULE].target_genres
TARGET_USER_BUCKETS = DOMAIN_RULES[DEFAULT_DOMAIN_RULE].target_user_buckets
MIN_DOMAIN_INTERACTIONS = 5
DOMAINS: tuple[str, ...] = ("all", "source", "target")
IMAGE_MODES: tuple[str, ...] = ("none", "synthetic")
# What an item's text holds (`--item-text`). `title-year` leaves the genres out of the text while synthetic pictures
# keep their genre colours: the one place where the pictures carry something the text lacks (issue 24.6).
ITEM_TEXTS: dict[str, str] = {
    "title-year-genres": "'<title> (<year>). Genres: <genre>, <genre>.' (unknown title/year/genre parts left out)",
    "title-year": "'<title> (<year>).' (no genres; unknown title/year parts left out)",
}
DEFAULT_ITEM_TEXT = "title-year-genres"
DATASET_NAMES = {"all": "ml-100k", "source": "ml-100k-source", "target": "ml-100k-target"}
LICENCE_NOTE = (
    "MovieLens-100K, GroupLens Research (https://grouplens.org/datasets/movielens/100k/): its terms forbid "
    "redistribution; keep this folder private and never commit it"
)
_UNKNOWN_TITLES = {"unknown", "unkonwn"}


@dataclass(frozen=True)
class MovieLensItem:
    """One movie as the wheel describes it."""

    item_id: str
    title: str
    year: str
    genres: tuple[str, ...]

    def display_title(self) -> str:
        """'Title (year)', with an unknown title or a non-year release field left out."""
        title = "Unknown title" if self.title.strip().lower() in _UNKNOWN_TITLES else self.title.strip()
        year = f" ({self.year})" if self.year.isdigit() and len(self.year) == 4 else ""
        return f"{title}{year}"

    def text(self, fields: str = DEFAULT_ITEM_TEXT) -> str:
        """Item text: 'Title (year). Genres: A, B.'; unknown title, year or genre parts are left out.
        fields `title-year` (ITEM_TEXTS) leaves the genres out: 'Title (year).'."""
        if fields not in ITEM_TEXTS:
            raise DatasetError(f"unknown item text {fields!r}; use one of {list(ITEM_TEXTS)}")
        genres = [genre for genre in self.genres if genre != "unknown"] if fields == "title-year-genres" else []
        genre_part = f" Genres: {', '.join(genres)}." if genres else ""
        return f"{self.display_title()}.{genre_part}"


@dataclass(frozen=True)
class MovieLensData:
    """Parsed MovieLens-100K: movies in file order and each user's item ids sorted by (timestamp, file order).

    user_times: per user, the (timestamp, ml-100k.inter line) of each interaction, in the order of user_items.
    """

    items: list[MovieLensItem]
    user_items: dict[str, list[str]]
    provenance: dict[str, Any]
    user_times: dict[str, list[tuple[float, int]]] = field(default_factory=dict)


def locate_movielens() -> Path:
    """The ml-100k folder inside the installed recbole wheel (found without importing recbole)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"MovieLens-100K is read from the {RECBOLE_REQUIREMENT} wheel, which is not installed; {INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "dataset_example" / "ml-100k"
        if (folder / "ml-100k.inter").is_file() and (folder / "ml-100k.item").is_file():
            return folder
    raise DatasetError(f"the installed recbole package has no dataset_example/ml-100k files; {INSTALL_HINT}")


def _typed_columns(header: str, label: str, wanted: tuple[str, ...]) -> dict[str, int]:
    """Column positions of `wanted` names in a RecBole typed header such as 'user_id:token'."""
    names = [column.split(":", 1)[0] for column in header.split("\t")]
    positions = {}
    for name in wanted:
        if name not in names:
            raise DatasetError(f"{label} line 1: header lacks column {name!r} (found {names})")
        positions[name] = names.index(name)
    return positions


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path.name}: cannot read ({exc})") from exc


def read_movielens(folder: Path | None = None) -> MovieLensData:
    """Parse ml-100k.item and ml-100k.inter and check the well-known counts (943 / 1,682 / 100,000)."""
    folder = folder or locate_movielens()
    item_path, inter_path = folder / "ml-100k.item", folder / "ml-100k.inter"

    item_lines = _read_lines(item_path)
    columns = _typed_columns(item_lines[0], item_path.name, ("item_id", "movie_title", "release_year", "class"))
    items: list[MovieLensItem] = []
    for number, line in enumerate(item_lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) <= max(columns.values()):
            raise DatasetError(f"{item_path.name} line {number}: expected {len(columns)} columns, found {len(fields)}")
        items.append(
            MovieLensItem(
                item_id=fields[columns["item_id"]],
                title=fields[columns["movie_title"]],
                year=fields[columns["release_year"]],
                genres=tuple(fields[columns["class"]].split()),
            )
        )
    known_items = {item.item_id for item in items}

    inter_lines = _read_lines(inter_path)
    columns = _typed_columns(inter_lines[0], inter_path.name, ("user_id", "item_id", "timestamp"))
    events: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    interactions = 0
    for number, line in enumerate(inter_lines[1:], start=2):
        if not line:
            continue
        fields = line.split("\t")
        try:
            user_id, item_id = fields[columns["user_id"]], fields[columns["item_id"]]
            timestamp = float(fields[columns["timestamp"]])
        except (IndexError, ValueError) as exc:
            raise DatasetError(f"{inter_path.name} line {number}: malformed interaction ({exc})") from exc
        if item_id not in known_items:
            raise DatasetError(f"{inter_path.name} line {number}: unknown item id {item_id!r}")
        events[user_id].append((timestamp, number, item_id))
        interactions += 1

    counts = {"users": len(events), "items": len(items), "interactions": interactions}
    if counts != EXPECTED_COUNTS:
        raise DatasetError(f"{folder}: MovieLens-100K should have {EXPECTED_COUNTS}, found {counts}; {INSTALL_HINT}")
    ordered = {user_id: sorted(events[user_id]) for user_id in sorted(events, key=_id_sort_key)}
    user_items = {user_id: [item_id for _time, _line, item_id in rows] for user_id, rows in ordered.items()}
    user_times = {user_id: [(time, line) for time, line, _item in rows] for user_id, rows in ordered.items()}
    try:
        recbole_version = importlib.metadata.version("recbole")
    except importlib.metadata.PackageNotFoundError:
        recbole_version = "unknown"
    provenance = {
        "source": "MovieLens-100K as shipped in the recbole wheel (dataset_example/ml-100k)",
        "recbole_version": recbole_version,
        "source_files": {
            item_path.name: hashlib.sha256(item_path.read_bytes()).hexdigest(),
            inter_path.name: hashlib.sha256(inter_path.read_bytes()).hexdigest(),
        },
        "licence": LICENCE_NOTE,
    }
    return MovieLensData(items=items, user_items=user_items, provenance=provenance, user_times=user_times)


def _id_sort_key(value: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, others after them in text order."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def domain_rule(name: str) -> DomainRule:
    """A named domain rule, or one clear error."""
    if name not in DOMAIN_RULES:
        raise DatasetError(f"unknown domain rule {name!r}; use one of {list(DOMAIN_RULES)}")
    return DOMAIN_RULES[name]


def item_domain(genres: tuple[str, ...], rule: str = DEFAULT_DOMAIN_RULE) -> str:
    """'target' when the genres include any of the rule's target genres, else 'source'."""
    return "target" if set(genres) & set(domain_rule(rule).target_genres) else "source"


def user_domain(user_id: str, rule: str = DEFAULT_DOMAIN_RULE) -> str:
    """'target' when sha256(user id) read as a big-endian integer, modulo USER_BUCKETS, is below the rule's
    target buckets, else 'source'."""
    value = int.from_bytes(hashlib.sha256(user_id.encode("utf-8")).digest(), "big")
    return "target" if value % USER_BUCKETS < domain_rule(rule).target_user_buckets else "source"


def select_domain(
    data: MovieLensData, domain: str, rule: str = DEFAULT_DOMAIN_RULE
) -> tuple[list[MovieLensItem], dict[str, list[str]]]:
    """The items (file order) and user sequences of one domain, or everything for domain 'all'."""
    if domain not in DOMAINS:
        raise DatasetError(f"unknown domain {domain!r}; use one of {list(DOMAINS)}")
    if domain == "all":
        return list(data.items), dict(data.user_items)
    domain_items = {item.item_id for item in data.items if item_domain(item.genres, rule) == domain}
    user_items: dict[str, list[str]] = {}
    for user_id, sequence in data.user_items.items():
        if user_domain(user_id, rule) != domain:
            continue
        kept = [item_id for item_id in sequence if item_id in domain_items]
        if len(kept) >= MIN_DOMAIN_INTERACTIONS:
            user_items[user_id] = kept
    used = {item_id for sequence in user_items.values() for item_id in sequence}
    return [item for item in data.items if item.item_id in used], user_items


def first_interactions(data: MovieLensData, user_items: dict[str, list[str]]) -> dict[str, tuple[float, int]]:
    """Each item's first interaction among the given users' sequences: (timestamp, ml-100k.inter line)."""
    first: dict[str, tuple[float, int]] = {}
    for user_id, kept in user_items.items():
        wanted = set(kept)
        for item_id, when in zip(data.user_items[user_id], data.user_times[user_id], strict=True):
            if item_id in wanted and (item_id not in first or when < first[item_id]):
                first[item_id] = when
    return first


def _hold_out_new_items(
    data: MovieLensData, items: list[MovieLensItem], user_items: dict[str, list[str]], share: float, rule: str
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The sequences with the new items held out (see pmmrec.data.new_items) and dataset.json's record of it."""
    if rule not in NEW_ITEM_RULES:
        raise DatasetError(f"unknown new-item rule {rule!r}; use one of {list(NEW_ITEM_RULES)}")
    cut = None
    if rule == "first-seen":
        first = first_interactions(data, user_items)
        new = newest_items(first, share)
        if new:
            stamp = datetime.datetime.fromtimestamp(first[new[0]][0], tz=datetime.timezone.utc)
            cut = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    else:
        new = hashed_items([item.item_id for item in items], share)
    sequences = hold_out_new_items(list(user_items.values()), new)
    record = new_items_record(rule, share, new, list(user_items.values()), sequences, cut)
    return dict(zip(user_items, sequences, strict=True)), record


def build_movielens(
    out: Path | str,
    domain: str = "all",
    images: str = "none",
    image_size: int = DEFAULT_IMAGE_SIZE,
    overwrite: bool = False,
    source_folder: Path | None = None,
    new_items: float = 0.0,
    new_items_rule: str = "first-seen",
    item_text: str = DEFAULT_ITEM_TEXT,
    rule: str = DEFAULT_DOMAIN_RULE,
    progress: bool = True,
) -> Path:
    """Write MovieLens-100K (or one transfer domain) as a dataset folder at `out`, optionally with synthetic images.

    new_items: the share of items held out as new items (they occur only as users' validation and test targets,
    never in a training sequence; see pmmrec.data.new_items); 0 keeps every interaction. new_items_rule:
    `first-seen` (the items that appear last in the domain's time line) or `hash` (the pre-issue-24 rule, unrelated
    to time). dataset.json's preprocessing.new_items records the items, the users with a new target and the
    popularity of those targets. rule: the domain rule (`DOMAIN_RULES`: `thriller`, the default, or `issue-12`).
    item_text: what each item's text holds (ITEM_TEXTS): title, year and genres (the default) or title and year
    only; synthetic pictures are drawn from title and genres either way.
    """
    if images not in IMAGE_MODES:
        raise DatasetError(f"unknown image mode {images!r}; use one of {list(IMAGE_MODES)}")
    if item_text not in ITEM_TEXTS:
        raise DatasetError(f"unknown item text {item_text!r}; use one of {list(ITEM_TEXTS)}")
    data = read_movielens(source_folder)
    items, user_items = select_domain(data, domain, rule)
    name = DATASET_NAMES[domain]
    record: dict[str, Any] | None = None
    if new_items:
        user_items, record = _hold_out_new_items(data, items, user_items, new_items, new_items_rule)
        name = f"{name}-new-items" if new_items_rule == "first-seen" else f"{name}-new-items-hash"
        if new_items_rule == "first-seen":  # the catalogue holds the items that still occur (the hash rule kept all)
            used = {item_id for sequence in user_items.values() for item_id in sequence}
            items = [item for item in items if item.item_id in used]
    preprocessing = _preprocessing(domain, rule, item_text, record)
    if item_text != DEFAULT_ITEM_TEXT:
        name = f"{name}-{item_text}"
    image_source = None
    if images == "synthetic":
        by_id = {item.item_id: item for item in items}

        def fetch(item_id: str) -> np.ndarray:
            item = by_id[item_id]
            return render_synthetic_image(item_id, item.display_title(), item.genres, image_size)

        image_source = ImageSource(
            kind="synthetic", fetch=fetch, size=image_size, payload_format="png", progress=progress
        )
    return write_dataset(
        out,
        name=name,
        item_ids=[item.item_id for item in items],
        item_texts=[item.text(item_text) for item in items],
        user_ids=list(user_items),
        user_items=list(user_items.values()),
        provenance=data.provenance,
        preprocessing=preprocessing,
        images=image_source,
        overwrite=overwrite,
    )


def _preprocessing(domain: str, rule: str, item_text: str, new_items: dict[str, Any] | None) -> dict[str, Any]:
    """dataset.json's preprocessing record: the order of sequences, users and items, the item text, and for a
    domain its rule; `new_items`: the record of the items held out (None when none were)."""
    preprocessing: dict[str, Any] = {
        "domain": domain,
        "sequence_order": "timestamp ascending, ties in ml-100k.inter file order",
        "item_text": ITEM_TEXTS[item_text],
        "user_order": "numeric user id",
        "item_order": "ml-100k.item file order",
    }
    if domain != "all":
        chosen = domain_rule(rule)
        preprocessing.update(
            domain_rule=rule,
            target_genres=list(chosen.target_genres),
            item_rule="target if the item's genres include any target genre, else source",
            user_rule=f"target if sha256(user id) read as a big-endian integer, modulo {USER_BUCKETS}, is below "
            f"{chosen.target_user_buckets}, else source",
            min_domain_interactions=MIN_DOMAIN_INTERACTIONS,
            catalogue="items interacted with by the domain's kept users",
        )
    if new_items is not None:
        preprocessing["new_items"] = new_items
    return preprocessing
