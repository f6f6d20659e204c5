"""References: parsing, local folders, and hub references resolved offline from a temporary HF cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import tiny
import torch

from pmmrec.components import SASRecUserEncoder, load_component
from pmmrec.errors import PmmrecError, ReferenceResolutionError
from pmmrec.hub import folder_commit_id, publish_to_local_cache
from pmmrec.references import format_hub_reference, parse_reference, resolve_reference

pytestmark = pytest.mark.usefixtures("single_thread", "no_fsync")

REPO = "acme/user-tiny"

# ---- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "repo_id", "revision"),
    [
        ("hub:acme/user-tiny", "acme/user-tiny", None),
        ("hub:acme/user-tiny@v1", "acme/user-tiny", "v1"),
        ("hub:acme/user-tiny@refs/pr/3", "acme/user-tiny", "refs/pr/3"),
        ("hf://acme/user_tiny.v2@main", "acme/user_tiny.v2", "main"),
        ("hf://models/acme/user-tiny@" + "a" * 40, "acme/user-tiny", "a" * 40),
    ],
)
def test_parse_hub_references(text: str, repo_id: str, revision: str | None) -> None:
    """hub: and hf:// references carry their own repo and revision."""
    reference = parse_reference(text)
    assert reference.is_hub
    assert (reference.repo_id, reference.revision, reference.path) == (repo_id, revision, None)


def test_parse_local_reference(tmp_path: Path) -> None:
    """Anything that is not a hub reference is a path (no revision)."""
    reference = parse_reference(str(tmp_path / "x"))
    assert not reference.is_hub
    assert reference.path == tmp_path / "x"


def test_revision_argument_fills_or_must_agree() -> None:
    """A Python `revision=` pins an unpinned reference; a conflicting one is refused (never two pins)."""
    assert parse_reference("hub:acme/user", revision="v2").revision == "v2"
    assert parse_reference("hub:acme/user@v2", revision="v2").revision == "v2"
    with pytest.raises(ReferenceResolutionError, match="pins revision 'v1' but revision='v2' was also given"):
        parse_reference("hub:acme/user@v1", revision="v2")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty component reference"),
        ("   ", "empty component reference"),
        ("hub:acme", "'acme' is not a valid repo id"),
        ("hub:acme/user/extra", "is not a valid repo id"),
        ("hub:acme/..", "is not a valid repo id"),
        ("hub:-acme/user", "is not a valid repo id"),
        ("hub:acme/user@", "empty revision after '@'"),
        ("hub:acme/user@v1 beta", "invalid revision 'v1 beta'"),
        ("hub:acme/user@../main", "invalid revision"),
        ("hub:acme/us\x00er", "NUL byte"),
    ],
)
def test_parse_errors(text: str, fragment: str) -> None:
    """Malformed references are refused with the reference and the problem in the message."""
    with pytest.raises(ReferenceResolutionError) as info:
        parse_reference(text)
    assert fragment in str(info.value)


def test_format_round_trip() -> None:
    """format_hub_reference writes what parse_reference reads."""
    text = format_hub_reference("acme/user", "v3")
    assert text == "hub:acme/user@v3"
    assert parse_reference(text).revision == "v3"
    assert format_hub_reference("acme/user") == "hub:acme/user"


# ---- local folders ---------------------------------------------------------------------------------


def test_resolve_local_folder(tmp_path: Path) -> None:
    """A local folder resolves to itself (absolute) with no commit."""
    resolved = resolve_reference(str(tmp_path))
    assert resolved.path == tmp_path.resolve()
    assert resolved.commit is None


def test_resolve_missing_folder(tmp_path: Path) -> None:
    """A missing folder names the path."""
    missing = tmp_path / "nope"
    with pytest.raises(ReferenceResolutionError, match=f"no such folder {missing}"):
        resolve_reference(str(missing))


# ---- hub references from a temporary offline cache ---------------------------------------------------


@pytest.fixture
def published(user_encoder: SASRecUserEncoder, publish: Callable[..., str], tmp_path: Path) -> tuple[str, Path]:
    """The tiny user encoder published as acme/user-tiny (branch main, tag v1); returns (commit, source folder)."""
    folder = user_encoder.save_pretrained(tmp_path / "user")
    return publish(folder, REPO, tag="v1"), folder


def test_cache_layout(published: tuple[str, Path], hub_cache: Path) -> None:
    """The local cache has refs/<branch|tag> holding the commit and snapshots/<commit>/ holding the files."""
    commit, folder = published
    repo_dir = hub_cache / "models--acme--user-tiny"
    assert (repo_dir / "refs" / "main").read_text() == commit
    assert (repo_dir / "refs" / "v1").read_text() == commit
    assert commit == folder_commit_id(folder)
    snapshot = repo_dir / "snapshots" / commit
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("revision", ["main", "v1", "COMMIT", None])
def test_resolve_by_branch_tag_and_commit(revision: str | None, published: tuple[str, Path], hub_cache: Path) -> None:
    """@main, @v1, @<40-hex commit> and no revision all resolve to the snapshot, and report the commit."""
    commit, _ = published
    pinned = commit if revision == "COMMIT" else revision
    text = format_hub_reference(REPO, pinned)
    resolved = resolve_reference(text)
    assert resolved.commit == commit
    assert resolved.path == hub_cache / "models--acme--user-tiny" / "snapshots" / commit
    assert resolved.text == text


@pytest.mark.parametrize("prefix", ["hub:", "hf://"])
def test_load_component_from_hub_reference(
    prefix: str, published: tuple[str, Path], user_encoder: SASRecUserEncoder
) -> None:
    """A component loads from a hub reference and computes exactly what the original did."""
    loaded = load_component(f"{prefix}{REPO}@v1")
    assert isinstance(loaded, SASRecUserEncoder)
    inputs = tiny.golden_inputs("user_sasrec")
    assert torch.equal(tiny.run_component(loaded, inputs), tiny.run_component(user_encoder, inputs))
    typed = SASRecUserEncoder.from_pretrained(f"hub:{REPO}", revision="v1")
    assert torch.equal(typed.positions.weight, user_encoder.positions.weight)


def test_explicit_cache_dir(user_encoder: SASRecUserEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """resolve_reference(cache_dir=...) reads a cache other than HF_HUB_CACHE."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-default-cache"))
    folder = user_encoder.save_pretrained(tmp_path / "user")
    commit = publish_to_local_cache(folder, REPO, cache_dir=tmp_path / "other-cache", tag="v1")
    resolved = resolve_reference(f"hub:{REPO}@v1", cache_dir=tmp_path / "other-cache")
    assert resolved.commit == commit
    with pytest.raises(ReferenceResolutionError, match="not in the local Hub cache"):
        resolve_reference(f"hub:{REPO}@v1")


def test_tags_pin_while_main_moves(published: tuple[str, Path], publish: Callable[..., str], tmp_path: Path) -> None:
    """Publishing new weights moves main; v1 keeps resolving to the old commit."""
    old_commit, _ = published
    newer = tiny.tiny_user_encoder(seed=7).save_pretrained(tmp_path / "user-v2")
    new_commit = publish(newer, REPO, tag="v2")
    assert new_commit != old_commit
    assert resolve_reference(f"hub:{REPO}@main").commit == new_commit
    assert resolve_reference(f"hub:{REPO}@v2").commit == new_commit
    assert resolve_reference(f"hub:{REPO}@v1").commit == old_commit
    old = load_component(f"hub:{REPO}@{old_commit}")
    new = load_component(f"hub:{REPO}@main")
    assert not torch.equal(old.positions.weight, new.positions.weight)  # type: ignore[union-attr]


def test_tags_never_move(published: tuple[str, Path], publish: Callable[..., str], tmp_path: Path) -> None:
    """Re-publishing the same tag for different content is refused; for the same content it is a no-op."""
    commit, folder = published
    assert publish(folder, REPO, tag="v1") == commit
    resaved = load_component(str(folder)).save_pretrained(tmp_path / "resaved")
    assert publish(resaved, REPO, tag="v1") == commit  # a byte-identical re-save is the same commit
    other = tiny.tiny_user_encoder(seed=3).save_pretrained(tmp_path / "other")
    with pytest.raises(PmmrecError, match="tag 'v1' of acme/user-tiny already points to another commit"):
        publish(other, REPO, tag="v1")


@pytest.mark.parametrize(
    "text",
    [f"hub:{REPO}@v9", "hub:acme/absent@v1", f"hub:{REPO}@{'b' * 40}"],
    ids=["unknown-tag", "unknown-repo", "unknown-commit"],
)
def test_unresolvable_offline(text: str, published: tuple[str, Path]) -> None:
    """What the cache does not hold fails at once offline, naming the reference and HF_HUB_CACHE."""
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_reference(text)
    message = str(info.value)
    assert repr(text) in message
    assert "offline (HF_HUB_OFFLINE=1)" in message and "HF_HUB_CACHE" in message


def test_publish_refuses_non_artefacts(tmp_path: Path, hub_cache: Path) -> None:
    """Only component or model folders can be published."""
    (tmp_path / "junk").mkdir()
    with pytest.raises(PmmrecError, match="neither a component"):
        publish_to_local_cache(tmp_path / "junk", REPO, cache_dir=hub_cache)
    assert list(hub_cache.iterdir()) == []
