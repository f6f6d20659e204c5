"""The default ID training step, before and after its two CPU changes, side by side in one process (issue 28.1).

The two changes: the user encoder's dropouts draw their masks from uniform numbers (`UniformDropout`, instead of
`nn.Dropout`'s `bernoulli_`), and the full softmax's cross-entropy runs in cache-sized row chunks
(`chunked_cross_entropy`, instead of one [R, U] logits matrix through `F.cross_entropy`). Four variants (before,
each change alone, both) are four Trainers of `pmmrec finetune --data ML --item-tower id` with the defaults, built
from the same seed (same initial weights), stepping through the same batches of the first epoch in turn, one step
each per batch (forward, backward, AdamW), so load from other processes falls on all of them alike. Reported: median
ms per step per variant and its ratio to `before`, and the loss of each variant's first step (the same up to float32
summation order and the dropout masks). Then the two dropouts alone on the feed-forward activations' shape.

    python benchmarks/id_step.py --data ML --steps 40 --threads 2 [--json PATH]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _measure import finish_step_benchmark, step_arguments, step_rows
from torch import nn

from pmmrec.components._dropout import UniformDropout
from pmmrec.data import load_dataset
from pmmrec.objectives import next_item
from pmmrec.training.config import finetune_defaults
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.jobs import build_model
from pmmrec.training.trainer import Trainer

VARIANTS = {  # name: (uniform dropout, chunked cross-entropy)
    "before": (False, False),
    "uniform dropout": (True, False),
    "chunked softmax": (False, True),
    "both (now)": (True, True),
}


def bernoulli_dropout(module: nn.Module) -> None:
    """Back to `nn.Dropout` everywhere in `module` (the code before the change)."""
    for name, child in list(module.named_children()):
        if isinstance(child, UniformDropout):
            setattr(module, name, nn.Dropout(child.p, inplace=child.inplace))
        else:
            bernoulli_dropout(child)


@contextlib.contextmanager
def chunked(enabled: bool) -> Iterator[None]:
    original = next_item._chunked
    if not enabled:
        next_item._chunked = lambda states, items: False  # type: ignore[assignment]
    try:
        yield
    finally:
        next_item._chunked = original


def trainer_for(data: Path, uniform: bool, folder: Path) -> Trainer:
    config = load_train_config(finetune_defaults(), None, {"model": {"item_tower": "id"}})
    dataset = load_dataset(data)
    model = build_model(config.model, dataset, config.max_length, config.seed)
    if not uniform:
        bernoulli_dropout(model)
    return Trainer(model, dataset, config, folder, progress=False)


def dropout_alone(threads: int, repeats: int = 30) -> dict[str, float]:
    """ms per forward of `nn.Dropout`, the uniform-float mask `UniformDropout` drew before, and `UniformDropout`
    (p 0.3) on a [256, 20, 256] tensor (the default ID batch's feed-forward activations), alternating, median of
    `repeats` each."""
    x = torch.randn(256, 20, 256)

    def uniform_floats(x: torch.Tensor) -> torch.Tensor:  # UniformDropout's mask before the 64-bit words (7e4e7d7)
        return x * torch.rand_like(x).ge_(0.3).mul_(1.0 / 0.7)

    modules = {"nn.Dropout": nn.Dropout(0.3), "uniform floats": uniform_floats, "UniformDropout": UniformDropout(0.3)}
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(repeats):
        for name, module in modules.items():
            started = time.perf_counter()
            module(x)
            times[name].append(time.perf_counter() - started)
    return {name: round(statistics.median(values) * 1e3, 2) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = step_arguments(__doc__.split("\n\n")[0], argv, "variant")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {name: trainer_for(args.data, uniform, Path(scratch) / str(i))
                    for i, (name, (uniform, _)) in enumerate(VARIANTS.items())}  # fmt: skip
        for trainer in trainers.values():
            trainer.model.train()
        loader = next(iter(trainers.values()))._loader(0, 0)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        first_loss: dict[str, float] = {}
        for index, batch in enumerate(loader):
            if index >= args.steps:
                break
            order = list(VARIANTS) if index % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                with chunked(VARIANTS[name][1]):
                    started = time.perf_counter()
                    values = trainers[name]._step(batch, index)
                    times[name].append(time.perf_counter() - started)
                first_loss.setdefault(name, values["loss"])
    rows: dict[str, Any] = step_rows(times, first_loss, base="before", label="variant")
    alone = dropout_alone(args.threads)
    print(f"dropout alone, [256, 20, 256]: nn.Dropout {alone['nn.Dropout']} ms, uniform floats "
          f"{alone['uniform floats']} ms, UniformDropout {alone['UniformDropout']} ms "
          f"({alone['nn.Dropout'] / alone['UniformDropout']:.2f}x and "
          f"{alone['uniform floats'] / alone['UniformDropout']:.2f}x faster)")
    rows["dropout alone (ms)"] = alone
    finish_step_benchmark(args, load_before, {"variants": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
