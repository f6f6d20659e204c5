"""The learning curve's jobs (pmmrec.demo.curve): pre-train, fine-tune, test and zero-shot runs.

Each runs in the calling process or in a spawned worker (so each is a module-level function of plain arguments) and
caches its result as JSON in its own folder: a job found finished is not run again, and one finished with other
overrides is redone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULT_FILE = "result.json"


def model_ranks(model: Any, dataset: Any, which: str, max_length: int) -> np.ndarray:
    """Per-user ranks of a model on the valid or test split (full ranking, history excluded), where the model is."""
    from pmmrec.data import leave_one_out
    from pmmrec.inference import evaluate_split, make_collator

    split = leave_one_out(dataset.sequences)
    model.bind_catalogue(dataset.item_ids)
    collator = make_collator(model, dataset)
    return evaluate_split(model, split, which, collator, dataset.num_items, model.device, max_length=max_length).ranks


def _prepare(threads: int | None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads:
        import torch

        torch.set_num_threads(threads)


def _cached(folder: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """A finished job's result; a result made with other overrides is dropped (its folder removed) and redone."""
    path = folder / RESULT_FILE
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    if overrides is not None and result.get("overrides") != json.loads(json.dumps(overrides)):
        shutil.rmtree(folder)
        return None
    return result


def _store(folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    from pmmrec.fileio import write_json

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / RESULT_FILE, result)
    return result


def tidy(run: Path, keep_model: bool) -> None:
    """Drop what a finished run no longer needs (a model folder holds a whole text encoder)."""
    for name in ("best", "checkpoints", *(() if keep_model else ("model",))):
        shutil.rmtree(run / name, ignore_errors=True)


def pretrain_job(folder: str, source: str, overrides: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """One pre-training run on the source domain; returns the folders of its components."""
    where = Path(folder)
    cached = _cached(where, overrides)
    if cached is not None:
        return cached
    result, cost = _train(threads, "pretrain", source, where, overrides, keep_model=True)
    components = where / "run" / "components"
    return _store(where, {
        "components": {slot.name: str(slot) for slot in sorted(components.iterdir())},
        "best_epoch": result.best_epoch, "epochs": len(result.history), "overrides": overrides, **cost,
    })  # fmt: skip


def _train(
    threads: int | None, mode: str, data: str, where: Path, overrides: dict[str, Any], keep_model: bool
) -> tuple[Any, dict[str, float]]:
    """Train `mode` into `where/run` without checkpoints, tidy the run folder; the result and its wall and CPU time."""
    _prepare(threads)
    from pmmrec.training.jobs import train

    started, cpu = time.perf_counter(), time.process_time()
    result = train(mode, data, where / "run", overrides=overrides | {"save_checkpoints": False}, progress=False)
    tidy(where / "run", keep_model=keep_model)
    return result, {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


def finetune_job(folder: str, target: str, overrides: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """One fine-tuning run; its validation score, epochs, and test ranks when its test split is evaluated (the
    model folder is kept only for a search run, whose test a later `test_job` may evaluate)."""
    where = Path(folder)
    cached = _cached(where, overrides)
    if cached is not None:
        return cached
    keep_model = not overrides.get("evaluate_test", True)
    result, cost = _train(threads, "finetune", target, where, overrides, keep_model=keep_model)
    summary = json.loads((where / "run" / "summary.json").read_text(encoding="utf-8"))
    return _store(where, {
        "valid_ndcg@10": result.best_valid.get("ndcg@10"), "best_epoch": result.best_epoch,
        "epochs": len(result.history), "steps": summary["steps"], "train_users": summary["train_users"],
        "curve": [entry["ndcg@10"] for entry in result.history],
        "test_ranks": result.test_ranks.tolist() if result.test_ranks is not None else None,
        "overrides": overrides, **cost,
    })  # fmt: skip


def test_job(folder: str, target: str, max_length: int, device: str | None, threads: int | None = None) -> dict[str, Any]:
    """The test ranks of a finished search run's model, evaluated once (then its model folder is dropped)."""
    _prepare(threads)
    from pmmrec.data import load_dataset
    from pmmrec.distributed import choose_device
    from pmmrec.model import PMMRec

    where = Path(folder)
    cached = _cached(where)
    assert cached is not None, f"{where}: not trained"
    if cached.get("test_ranks") is None:
        model = PMMRec.from_pretrained(where / "run" / "model").to(choose_device(device))
        cached["test_ranks"] = model_ranks(model, load_dataset(target), "test", max_length).tolist()
        _store(where, cached)
    tidy(where / "run", keep_model=False)
    return cached


def zero_shot_job(
    folder: str, target: str, components: dict[str, str], max_length: int, device: str | None, threads: int | None = None
) -> dict[str, Any]:
    """Valid and test ranks of the pre-trained text and user encoders assembled, nothing trained on the target."""
    _prepare(threads)
    from pmmrec.data import load_dataset
    from pmmrec.distributed import choose_device
    from pmmrec.model import PMMRec

    where = Path(folder)
    cached = _cached(where)
    if cached is not None:
        return cached
    model = PMMRec.assemble(text=components["text"], user=components["user"]).to(choose_device(device))
    dataset = load_dataset(target)
    ranks = {f"{which}_ranks": model_ranks(model, dataset, which, max_length).tolist() for which in ("valid", "test")}
    return _store(where, ranks)
