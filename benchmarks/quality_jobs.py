"""The jobs of benchmarks/quality.py: each builds, trains or evaluates one thing, caches its result as JSON next to
its run folder (so an interrupted benchmark continues where it stopped) and returns plain JSON-able values.

Jobs run in worker processes (spawned), each with its own torch thread count and device.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

RESULT_FILE = "quality.json"


SMOKE = "QUALITY_SMOKE"  # set: tiny sizes and 3 steps per run, to check the whole pipeline in minutes


def _prepare(threads: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(max(1, threads))
    apply_smoke()


def apply_smoke() -> None:
    """Under QUALITY_SMOKE, shrink every setting (this process only; workers call it too)."""
    if not os.environ.get(SMOKE):
        return
    from dataclasses import replace

    from pmmrec.demo import rows

    for name, settings in rows.SETTINGS.items():
        rows.SETTINGS[name] = replace(settings, dim=16, batch_size=256, max_length=10, pretrain_epochs=1,
                                      finetune_epochs=1, patience=1, text_trainable_layers=0)  # fmt: skip


def _tidy(run: Path) -> None:
    """Drop what a finished run no longer needs (best/ equals model/ or components/; checkpoints are for resuming)."""
    import shutil

    for name in ("best", "checkpoints"):
        shutil.rmtree(run / name, ignore_errors=True)


def _smoke(overrides: dict[str, Any]) -> dict[str, Any]:
    return overrides | {"max_steps": 3, "max_epochs": 1} if os.environ.get(SMOKE) else overrides


def _cached(folder: Path) -> dict[str, Any] | None:
    path = folder / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _store(folder: Path, result: dict[str, Any]) -> dict[str, Any]:
    from pmmrec.fileio import write_json

    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / RESULT_FILE, result)
    return result


def build_data(root: str, name: str, threads: int = 1) -> dict[str, Any]:
    """One dataset folder: source / target (new items 0.2), their synthetic-image versions, or MovieLens-100K."""
    _prepare(threads)
    from pmmrec.data import build_movielens

    folder = Path(root) / "data" / name
    if (folder / "dataset.json").is_file():
        return {"path": str(folder)}
    domain = {"ml100k": "all"}.get(name, name.split("-")[0])
    images = "synthetic" if name.endswith("-img") else "none"
    new_items = 0.2 if domain == "target" else 0.0
    build_movielens(folder, domain=domain, images=images, new_items=new_items, overwrite=True)
    return {"path": str(folder)}


def pretrain(root: str, setting: str, name: str, seed: int, device: str | None, threads: int = 1) -> dict[str, Any]:
    """One pre-training run on the source domain; returns the folders of its components."""
    _prepare(threads)
    from pmmrec.demo.rows import pretrain_overrides, settings_for
    from pmmrec.training.jobs import train

    folder = Path(root) / "pre" / setting / f"{name}-s{seed}"
    cached = _cached(folder)
    if cached is not None:
        return cached
    data = Path(root) / "data" / ("source-img" if name.startswith("mm") else "source")
    overrides = _smoke(pretrain_overrides(name, settings_for(setting, seed)) | {"device": device})
    started = time.perf_counter()
    result = train("pretrain", data, folder / "run", overrides=overrides | {"save_checkpoints": False}, progress=False)
    _tidy(folder / "run")
    components = folder / "run" / "components"
    return _store(
        folder,
        {
            "components": {slot.name: str(slot) for slot in sorted(components.iterdir())},
            "best_epoch": result.best_epoch,
            "epochs": len(result.history),
            "valid_ndcg@10": result.best_valid.get("ndcg@10"),
            "seconds": time.perf_counter() - started,
        },
    )


def finetune(
    root: str, folder: str, data: str, overrides: dict[str, Any], device: str | None, threads: int = 1
) -> dict[str, Any]:
    """One fine-tuning run with the given nested overrides; validation curve, best epoch, test ranks if evaluated."""
    _prepare(threads)
    from pmmrec.training.jobs import train

    run_folder = Path(root) / folder
    cached = _cached(run_folder)
    if cached is not None:
        return cached
    started = time.perf_counter()
    overrides = _smoke(overrides | {"device": device, "save_checkpoints": False})
    result = train("finetune", Path(root) / "data" / data, run_folder / "run", overrides=overrides, progress=False)
    _tidy(run_folder / "run")
    return _store(
        run_folder,
        {
            "valid_ndcg@10": result.best_valid.get("ndcg@10"),
            "valid": result.best_valid,
            "best_epoch": result.best_epoch,
            "curve": [entry["ndcg@10"] for entry in result.history],
            "test_ranks": result.test_ranks.tolist() if result.test_ranks is not None else None,
            "test": result.test,
            "seconds": time.perf_counter() - started,
        },
    )


def test_once(root: str, folder: str, data: str, device: str | None, threads: int = 1) -> dict[str, Any]:
    """Test ranks of a finished run's model (a search run selected on validation), evaluated once and cached."""
    _prepare(threads)
    from pmmrec import api

    run_folder = Path(root) / folder
    cached = _cached(run_folder)
    assert cached is not None, f"{run_folder}: not trained"
    if cached.get("test_ranks") is not None:
        return cached
    report = run_folder / "test.json"
    api.evaluate(run_folder / "run" / "model", Path(root) / "data" / data, split="test", ks=(10, 20, 50),
                 out=report, device=device, progress=False)  # fmt: skip
    evaluated = json.loads(report.read_text(encoding="utf-8"))
    cached["test_ranks"] = evaluated["ranks"]
    cached["test"] = {key: value for key, value in evaluated.items() if "@" in key}
    return _store(run_folder, cached)


def untrained(
    root: str,
    setting: str,
    name: str,
    seed: int,
    components: dict[str, str] | None,
    device: str | None,
    splits: tuple[str, ...] = ("valid", "test"),
    threads: int = 1,
) -> dict[str, Any]:
    """Ranks of a row that trains nothing on the target: popularity or content-knn (their configurations searched
    on validation, the test split ranked once at the selected one: pmmrec.baselines.tune_baseline), or zero-shot
    transfer (the pre-trained components assembled) on the given splits."""
    _prepare(threads)
    import torch

    from pmmrec.baselines import tune_baseline
    from pmmrec.data import leave_one_out, load_dataset
    from pmmrec.demo.rows import settings_for
    from pmmrec.inference import evaluate_split, make_collator
    from pmmrec.model import PMMRec

    folder = Path(root) / "untrained" / setting / f"{name}-s{seed}-{'-'.join(splits)}"
    cached = _cached(folder)
    if cached is not None:
        return cached
    mm = name.startswith("mm")
    target = load_dataset(Path(root) / "data" / ("target-img" if mm else "target"))
    split = leave_one_out(target.sequences)
    if name in ("popularity", "content-knn"):
        search = tune_baseline(name, target, split)
        return _store(folder, {"search": search.as_dict(), "valid_ranks": search.valid_ranks.tolist(),
                               "test_ranks": search.test_ranks.tolist()})  # fmt: skip
    assert components is not None
    model = PMMRec.assemble(**components)
    target_device = torch.device(device or "cpu")
    model.to(target_device)
    collator = make_collator(model, target)
    max_length = settings_for(setting).max_length
    ranks = {which: evaluate_split(model, split, which, collator, target.num_items, target_device,
                                   max_length=max_length).ranks.tolist() for which in splits}  # fmt: skip
    return _store(folder, {f"{which}_ranks": values for which, values in ranks.items()})


def protocols(root: str, folder: str, data: str, device: str | None, threads: int = 1) -> dict[str, Any]:
    """Test metrics of a finished run's model under both protocols: history excluded (pmmrec) and included
    (RecBole's sequential models); evaluated once each and cached."""
    _prepare(threads)
    from pmmrec import api

    run_folder = Path(root) / folder
    cached = _cached(run_folder)
    assert cached is not None, f"{run_folder}: not trained"
    if cached.get("test_include") is None:
        cached = test_once(root, folder, data, device, threads)
        cached["test_include"] = api.evaluate(run_folder / "run" / "model", Path(root) / "data" / data, split="test",
                                              ks=(10, 20, 50), history="include", device=device, progress=False)  # fmt: skip
        _store(run_folder, cached)
    return cached
