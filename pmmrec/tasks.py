"""What a model does on a dataset folder, as `pmmrec evaluate` and `pmmrec recommend` run it: full-ranking evaluation
(of a model or a zero-training baseline, with the JSON document of its per-user ranks) and top-k recommendation.

`pmmrec.api` checks the arguments and paths first (nothing is loaded before they pass), then calls these.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pmmrec.data import dataset_fingerprint, describe_other_dataset, leave_one_out, load_dataset, read_items_tsv
from pmmrec.distributed import choose_device, setup_distributed
from pmmrec.errors import ConfigError, PmmrecWarning
from pmmrec.fileio import write_json
from pmmrec.inference import Recommendation, encode_catalogue, evaluate_split, make_collator, top_k
from pmmrec.model import PMMRec, read_model_split_record

PathLike = str | os.PathLike[str]


def _requested_device(model: Any, device: str | None) -> str | None:
    """`device`, or for a model object given without one, where that model is (it is not moved)."""
    return str(model.device) if device is None and isinstance(model, PMMRec) else device


def _split_record(model: Any) -> dict[str, Any]:
    """The model folder's data_split.json (empty for a model object, a hub reference or an untrained model)."""
    if isinstance(model, str | os.PathLike) and Path(model).is_dir():
        return read_model_split_record(model) or {}
    return {}


def evaluate_model_or_baseline(
    model: PathLike | PMMRec | None,
    data: PathLike,
    *,
    baseline: str | None,
    split: str,
    ks: tuple[int, ...],
    min_length: int | None,
    max_history: int | None,
    max_length: int | None,
    exclude_seen: bool,
    json_path: PathLike | None,
    device: str | None,
    progress: bool,
    resume_dir: PathLike | None,
    cache_prefixes: bool,
) -> dict[str, float]:
    """`pmmrec.api.evaluate` once its arguments are checked (see there)."""
    record = _split_record(model)
    min_length = min_length if min_length is not None else record.get("min_length") or 3
    max_history = max_history if max_history is not None else record.get("max_history")
    max_length = max_length if max_length is not None else record.get("max_length")
    context = setup_distributed(_requested_device(model, device))
    loaded = None
    if model is not None:
        loaded = model if isinstance(model, PMMRec) else PMMRec.from_pretrained(str(model))
        loaded.to(context.device)
    dataset = load_dataset(data)
    fingerprint = dataset_fingerprint(dataset)
    other = describe_other_dataset(record.get("dataset"), fingerprint)
    if other is not None and context.is_main:
        warnings.warn(f"--model {model}: {other}", PmmrecWarning, stacklevel=2)
    if record.get("valid_targets_trained") and split == "valid" and context.is_main:
        warnings.warn(
            f"--model {model}: a refit's model, trained on the validation targets too: its validation figures are not "
            "held out (the run's best/ folder holds the model validation chose)",
            PmmrecWarning, stacklevel=2,
        )  # fmt: skip
    split_data = leave_one_out(dataset.sequences, min_length, max_history)
    if split_data.num_users == 0:
        raise ConfigError(
            f"{data}: no user has the {min_length} interactions a leave-one-out split needs, so there is nothing to "
            "evaluate (lower --min-length, or use a dataset with longer sequences)"
        )
    if loaded is not None and max_length is not None and max_length > loaded.max_length:
        raise ConfigError(
            f"--max-length {max_length} (or data_split.json's max_length) is longer than the {loaded.max_length} items "
            "the model's user encoder reads"
        )
    timing = None
    if baseline is not None:
        from pmmrec.baselines import KNN_HISTORY, baseline_ranks
        from pmmrec.evaluation import metrics_from_ranks

        window = max_length if max_length is not None else KNN_HISTORY
        ranks = baseline_ranks(baseline, dataset, split_data, split, exclude_seen=exclude_seen, max_length=window)
        metrics = metrics_from_ranks(torch.as_tensor(ranks), tuple(ks))
    else:
        assert loaded is not None
        loaded.bind_catalogue(dataset.item_ids)
        result = evaluate_split(
            loaded, split_data, split, make_collator(loaded, dataset), dataset.num_items, context.device, context,
            ks=tuple(ks), progress=progress, max_length=max_length, exclude_seen=exclude_seen,
            resume_dir=Path(resume_dir) if resume_dir is not None else None, cache_prefixes=cache_prefixes,
        )  # fmt: skip
        ranks, metrics, timing = result.ranks, result.metrics, result.timings
    if json_path is not None and context.is_main:
        source = baseline if baseline is not None else None if not isinstance(model, str | os.PathLike) else str(model)
        document = evaluation_document(
            model=source, data=str(data), split=split,
            settings={"min_length": min_length, "max_history": max_history, "max_length": max_length,
                      "exclude_seen": exclude_seen},
            metrics=metrics, users=[dataset.user_ids[row] for row in split_data.user_rows], ranks=ranks,
            dataset=fingerprint, timing=timing,
        )  # fmt: skip
        write_json_or_stdout(json_path, document)
    return metrics


def evaluation_document(
    *,
    model: str | None,
    data: str,
    split: str,
    settings: dict[str, Any],
    metrics: dict[str, float],
    users: Sequence[str],
    ranks: Sequence[int] | Any,
    dataset: dict[str, str] | None = None,
    timing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What `pmmrec evaluate --json` writes and `pmmrec compare` reads: the metrics, the settings, and each user's
    rank of their target (users in split order). `history` repeats exclude_seen in the old spelling, for readers of
    the old files."""
    history = "exclude" if settings.get("exclude_seen", True) else "include"
    return {
        "model": model, "data": data, "split": split, **settings, "history": history, **metrics,
        "dataset": dataset, "users": list(users), "ranks": [int(rank) for rank in ranks],
        **({"timing": timing} if timing else {}),
    }  # fmt: skip


def write_json_or_stdout(path: PathLike, document: Any) -> None:
    """Write `document` as JSON to `path`, atomically, or to standard output when `path` is "-"."""
    if os.fspath(path) == "-":
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        write_json(path, document)


def recommend_for(
    model: PathLike | PMMRec,
    data: PathLike,
    *,
    user: str | None,
    history: Sequence[str] | None,
    k: int,
    exclude_seen: bool,
    extra_items: PathLike | None,
    device: str | None,
    progress: bool,
) -> list[Recommendation]:
    """`pmmrec.api.recommend` once its arguments are checked (see there)."""
    target_device = choose_device(_requested_device(model, device))
    loaded = model if isinstance(model, PMMRec) else PMMRec.from_pretrained(str(model))
    loaded.to(target_device)
    dataset = load_dataset(data)
    if extra_items is not None:
        if loaded.item_tower is not None:
            raise ConfigError("--items: an ID-based model cannot score items it was not trained on")
        if loaded.vision is not None:
            raise ConfigError(
                "--items: this model reads images; extra items need images (add them to the dataset instead)"
            )
        extra_ids, extra_texts = read_items_tsv(extra_items)
        dataset = dataset.with_extra_items(extra_ids, extra_texts, source=str(extra_items))
    loaded.bind_catalogue(dataset.item_ids)
    index = dataset.item_index()
    if user is not None:
        try:
            row = dataset.user_ids.index(user)
        except ValueError:
            raise ConfigError(f"--user {user!r}: not in {dataset.root / 'users.tsv'}") from None
        sequence = [int(i) for i in dataset.sequences[row]]
    else:
        unknown = [item for item in history or [] if item not in index]
        if unknown:
            raise ConfigError(f"--history: unknown item ids {unknown[:5]} (not in items.tsv or --items)")
        sequence = [index[item] for item in history or []]
    collator = make_collator(loaded, dataset)
    on_terminal = progress and sys.stderr.isatty()  # a bar only where someone watches (the output may be parsed)
    table = encode_catalogue(loaded, collator, len(dataset.item_ids), target_device, progress=on_terminal)
    exclude = sequence if exclude_seen else ()
    return top_k(loaded, table, dataset.item_ids, dataset.item_texts, sequence, k=k, exclude=exclude)
