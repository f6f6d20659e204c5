"""Score ensembles of finished runs: does averaging several trained models' scores rank better than one of them?

Each run's model (RUN/model) encodes the catalogue and scores every user of the split against every item (the
leave-one-out split of pmmrec's protocol: min_length 3, every interaction, the last 50 items read, history items
not ranked, ties counted in the user's favour). The script prints each run's own HR@10 / NDCG@10, then, for every
subset size k >= 2, the mean over all subsets of k runs of the metrics of their summed scores, three ways: the raw
dot products, each user's scores z-normalised, and each user's log-softmax over the catalogue.

    python benchmarks/score_ensemble.py --data /tmp/ml100k --split valid RUN1 RUN2 RUN3 [...]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from pmmrec.data import Dataset, leave_one_out, load_dataset
from pmmrec.evaluation import metrics_from_ranks
from pmmrec.inference import encode_catalogue, make_collator
from pmmrec.model import PMMRec
from pmmrec.ranking import left_pad, user_states

NORMALISATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "raw": lambda scores: scores,
    "z": lambda scores: (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True),
    "log-softmax": lambda scores: torch.log_softmax(scores, 1),
}


def run_scores(run: str, dataset: Dataset, histories: list[np.ndarray], max_length: int, batch: int = 256) -> Tensor:
    """One run's scores [users, items] (catalogue index i in column i - 1; the padding row left out)."""
    model = PMMRec.from_pretrained(f"{run}/model").eval()
    model.bind_catalogue(dataset.item_ids)
    table = encode_catalogue(model, make_collator(model, dataset), dataset.num_items, torch.device("cpu"))
    rows = []
    for start in range(0, len(histories), batch):
        windows = [list(history)[-max_length:] for history in histories[start : start + batch]]
        rows.append(user_states(model.user, table, *left_pad(windows)) @ table[1:].T)
    return torch.cat(rows)


def metrics(scores: Tensor, seen: Tensor, targets: Tensor) -> dict[str, float]:
    """HR / NDCG @10 of 1-based ranks: items scored above the target, history items left out, plus one."""
    column = targets - 1
    masked = scores.masked_fill(seen, float("-inf"))
    target_scores = scores.gather(1, column[:, None])
    ranks = (masked > target_scores).sum(1) + 1
    return metrics_from_ranks(ranks, (10,))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (each with model/)")
    parser.add_argument("--data", required=True, help="dataset folder the runs trained on")
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    parser.add_argument("--max-length", type=int, default=50, help="history items the user encoder reads")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    parts = leave_one_out(dataset.sequences, 3, None)
    ragged = parts.valid_history if args.split == "valid" else parts.test_history
    histories = [ragged[i] for i in range(len(ragged))]
    targets = torch.as_tensor(parts.valid_target if args.split == "valid" else parts.test_target, dtype=torch.long)
    scores = [run_scores(run, dataset, histories, args.max_length) for run in args.runs]
    seen = torch.zeros_like(scores[0], dtype=torch.bool)
    for user, history in enumerate(histories):
        seen[user, torch.as_tensor(history, dtype=torch.long) - 1] = True
    seen[torch.arange(len(targets)), targets - 1] = False
    print(f"{args.split}: {len(targets)} users, {scores[0].shape[1]} items")
    for run, run_score in zip(args.runs, scores, strict=True):
        single = metrics(run_score, seen, targets)
        print(f"  {run}: hr@10 {single['hr@10']:.4f}  ndcg@10 {single['ndcg@10']:.4f}")
    for size in range(2, len(scores) + 1):
        for name, normalise in NORMALISATIONS.items():
            subsets = list(itertools.combinations(range(len(scores)), size))
            results = [metrics(sum(normalise(scores[i]) for i in subset), seen, targets) for subset in subsets]
            hr = statistics.mean(result["hr@10"] for result in results)
            ndcg = statistics.mean(result["ndcg@10"] for result in results)
            print(f"  {size} runs, {name:11s} (mean of {len(subsets)} subsets): hr@10 {hr:.4f}  ndcg@10 {ndcg:.4f}")


if __name__ == "__main__":
    main()
