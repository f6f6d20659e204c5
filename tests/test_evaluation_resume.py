"""Evaluation that finishes at any size (issue 16): it streams, resumes after an interruption, shows an ETA.

An interrupted evaluation keeps the ranks of the users it finished and a rerun ranks only the others, giving
exactly the ranks of one uninterrupted run; a folder of another evaluation is refused; the score chunk obeys its
memory budget without changing any rank; the cached-prefix catalogue ranks like the encoded one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from tiny import MAX_LENGTH, isolated_environment, run_cli, torchrun, write_tiny_dataset

import pmmrec.inference as inference
from pmmrec.data import leave_one_out, load_dataset
from pmmrec.errors import ConfigError
from pmmrec.evaluation import CELL_BYTES
from pmmrec.inference import evaluate_split, make_collator
from pmmrec.model import PMMRec

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with isolated_environment(tmp_path, monkeypatch):
        yield


def _setup(tmp_path: Path, seed: int = 1) -> tuple[PMMRec, object, object, int]:
    dataset = load_dataset(write_tiny_dataset(tmp_path / "data"))
    model = PMMRec(
        user=tiny.tiny_user_encoder(seed=seed, max_length=MAX_LENGTH), text=tiny.tiny_text_encoder(seed=seed),
        fusion=tiny.tiny_text_only(),
    ).eval()  # fmt: skip
    return model, leave_one_out(dataset.sequences), make_collator(model, dataset), dataset.num_items


class _Interrupted(Exception):
    pass


def test_an_interrupted_evaluation_resumes_with_the_same_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards against losing finished work on a crash, and against resumed ranks differing from a full run."""
    model, split, collator, num_items = _setup(tmp_path)
    full = evaluate_split(model, split, "test", collator, num_items, CPU, batch_size=4)  # type: ignore[arg-type]
    folder = tmp_path / "results"
    original = inference.rank_targets_with_unscored
    calls = 0

    def failing(*args: object, **kwargs: object) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise _Interrupted
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inference, "rank_targets_with_unscored", failing)
    with pytest.raises(_Interrupted):  # two batches of 4 users finished, written at once (flush_seconds=0)
        evaluate_split(model, split, "test", collator, num_items, CPU, batch_size=4, resume_dir=folder, flush_seconds=0)  # type: ignore[arg-type]
    assert len(list(folder.glob("part-*.npz"))) == 2 and (folder / "item-table.npy").is_file()
    monkeypatch.setattr(inference, "rank_targets_with_unscored", original)
    resumed = evaluate_split(model, split, "test", collator, num_items, CPU, batch_size=4, resume_dir=folder)  # type: ignore[arg-type]
    assert resumed.timings["users_resumed"] == 8 and resumed.timings["users_ranked"] == len(full.ranks) - 8
    np.testing.assert_array_equal(resumed.ranks, full.ranks)
    assert resumed.metrics == full.metrics
    again = evaluate_split(model, split, "test", collator, num_items, CPU, resume_dir=folder)  # type: ignore[arg-type]
    assert again.timings["users_ranked"] == 0
    np.testing.assert_array_equal(again.ranks, full.ranks)


def test_a_folder_of_another_evaluation_is_refused(tmp_path: Path) -> None:
    """Guards against mixing ranks of another model or split into a result."""
    model, split, collator, num_items = _setup(tmp_path)
    folder = tmp_path / "results"
    evaluate_split(model, split, "test", collator, num_items, CPU, resume_dir=folder)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="another evaluation"):
        evaluate_split(model, split, "valid", collator, num_items, CPU, resume_dir=folder)  # type: ignore[arg-type]
    other, _, _, _ = _setup(tmp_path / "other", seed=2)
    with pytest.raises(ConfigError, match="another evaluation"):
        evaluate_split(other, split, "test", collator, num_items, CPU, resume_dir=folder)  # type: ignore[arg-type]


def test_score_chunks_obey_the_budget_and_change_no_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards against holding a users x items score matrix: chunks shrink with the catalogue, ranks stay."""
    model, split, collator, num_items = _setup(tmp_path)
    full = evaluate_split(model, split, "test", collator, num_items, CPU)  # type: ignore[arg-type]
    chunks: list[int] = []
    original = inference.rank_targets_with_unscored

    def recording(*args: object) -> torch.Tensor:
        chunks.append(int(args[6]))  # type: ignore[call-overload]
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(inference, "rank_targets_with_unscored", recording)
    budget = 3 * CELL_BYTES * (num_items + 1)  # three users' scores (a tiny catalogue is one block)
    small = evaluate_split(model, split, "test", collator, num_items, CPU, score_budget=budget)  # type: ignore[arg-type]
    assert set(chunks) == {3}
    np.testing.assert_array_equal(small.ranks, full.ranks)


def test_cached_prefix_catalogue_ranks_like_encoding(tmp_path: Path) -> None:
    """Guards the fp16 prefix files used for evaluation: the same ranks up to fp16 rounding of near-ties."""
    model, split, collator, num_items = _setup(tmp_path)
    encoded = evaluate_split(model, split, "test", collator, num_items, CPU)  # type: ignore[arg-type]
    cached = evaluate_split(model, split, "test", collator, num_items, CPU, cache_prefixes=True)  # type: ignore[arg-type]
    assert np.mean(np.abs(cached.ranks - encoded.ranks)) <= 0.5
    assert list((tmp_path / "pmmrec-cache" / "prefix").glob("text-*.npy"))  # written, so later runs reuse it


def test_cli_resume_dir_and_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the CLI plumbing: a second run with the same --resume-dir ranks nobody and prints the same metrics;
    the progress bar reports users and an ETA, and is never drawn into output that is not a terminal (issue 26:
    a log got every refresh) unless PMMREC_PROGRESS=always."""
    model, _, _, _ = _setup(tmp_path)
    model_dir = model.save_pretrained(tmp_path / "model")
    data, folder = tmp_path / "data", tmp_path / "results"
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    logged = run_cli("evaluate", "--model", model_dir, "--data", data, "--output", tmp_path / "logged.json")
    assert "ranking test" not in logged and "ndcg" in logged  # CliRunner's output is not a terminal: no bar
    monkeypatch.setenv("PMMREC_PROGRESS", "always")
    output = run_cli("evaluate", "--model", model_dir, "--data", data, "--resume-dir", folder, "--output", first)
    assert "ranking test" in output and "user/s]" in output and "<" in output  # tqdm: n/N [elapsed<ETA, rate]
    run_cli("evaluate", "--model", model_dir, "--data", data, "--resume-dir", folder, "--output", second, "--quiet")
    one, two = json.loads(first.read_text()), json.loads(second.read_text())
    assert two["timing"]["users_ranked"] == 0 and two["timing"]["users_resumed"] == one["num_users"]
    assert {k: v for k, v in one.items() if "@" in k} == {k: v for k, v in two.items() if "@" in k}


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_parts_of_two_processes_resume_in_one(tmp_path: Path) -> None:
    """Guards against results bound to a world size: shards written by two processes complete a one-process run."""
    model, _, _, _ = _setup(tmp_path)
    model_dir = model.save_pretrained(tmp_path / "model")
    data, folder = tmp_path / "data", tmp_path / "results"
    two, one = tmp_path / "two.json", tmp_path / "one.json"
    torchrun("evaluate", "--model", model_dir, "--data", data, "--device", "cpu", "--resume-dir", folder,
             "--output", two, "--quiet")  # fmt: skip
    run_cli("evaluate", "--model", model_dir, "--data", data, "--resume-dir", folder, "--output", one, "--quiet")
    by_two, by_one = json.loads(two.read_text()), json.loads(one.read_text())
    assert by_one["timing"]["users_ranked"] == 0 and by_one["timing"]["users_resumed"] == by_one["num_users"]
    assert {k: v for k, v in by_one.items() if "@" in k} == {k: v for k, v in by_two.items() if "@" in k}
