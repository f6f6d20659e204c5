"""RecBole's SASRec on its own MovieLens-100K, run by `peer_recbole.py` inside RecBole's throw-away venv.

Never imported by pmmrec, and pmmrec is not importable where it runs: it uses RecBole 1.2.1's public API only
(Config, create_dataset, data_preparation, get_model, get_trainer), patches nothing, and reads one JSON argument:

    {"out": PATH, "threads": N, "max_length": L, "epochs": E|null, "stopping_step": S|null, "seed": S|null,
     "users_tsv": PATH (pmmrec's dataset, to compare sequence orders), "workdir": DIR}

It writes PATH (JSON): per-epoch training and validation seconds, the epoch of the early stop and the best epoch,
RecBole's own test metrics (its protocol: history items are ranked), the same model's test HR/NDCG/MRR@10 under
both protocols recomputed here with pmmrec's rank (1 + the number of items scoring strictly higher), and how
RecBole's per-user order differs from pmmrec's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

K = 10


def sequences_in_recbole_order(dataset: Any) -> dict[str, list[str]]:
    """Each user's item tokens in the order RecBole trains and splits them.

    RecBole min-max normalises the timestamp (float64, pandas), stores it as float32 (one ulp near 1 is about
    1 s of the 7-month range), sorts by it with a stable argsort, then groups by user: events closer than the
    rounding keep their file order. This replays exactly that on the loaded, not yet built, interactions.
    """
    frame = dataset.inter_feat
    users = frame[dataset.uid_field].to_numpy()
    items = frame[dataset.iid_field].to_numpy()
    times = frame[dataset.time_field].to_numpy().astype(np.float32)
    order = np.argsort(times, kind="stable")
    order = order[np.argsort(users[order], kind="stable")]
    result: dict[str, list[str]] = {}
    for row in order:
        user = str(dataset.id2token(dataset.uid_field, users[row]))
        result.setdefault(user, []).append(str(dataset.id2token(dataset.iid_field, items[row])))
    return result


def order_differences(recbole: dict[str, list[str]], users_tsv: Path) -> dict[str, int]:
    """How many users' sequences, validation targets and test targets differ between RecBole and pmmrec."""
    pmmrec = {}
    for line in users_tsv.read_text(encoding="utf-8").splitlines():
        user, _, items = line.partition("\t")
        pmmrec[user] = items.split()
    if set(pmmrec) != set(recbole) or any(sorted(pmmrec[u]) != sorted(recbole[u]) for u in pmmrec):
        raise SystemExit("RecBole's and pmmrec's MovieLens-100K hold different interactions")
    return {
        "users": len(pmmrec),
        "users_ordered_differently": sum(pmmrec[u] != recbole[u] for u in pmmrec),
        "interactions_at_other_positions": sum(
            a != b for u in pmmrec for a, b in zip(pmmrec[u], recbole[u], strict=True)
        ),
        "valid_targets_differ": sum(pmmrec[u][-2] != recbole[u][-2] for u in pmmrec),
        "test_targets_differ": sum(pmmrec[u][-1] != recbole[u][-1] for u in pmmrec),
        "test_inputs_differ": sum(pmmrec[u][:-1] != recbole[u][:-1] for u in pmmrec),
    }


def metrics(ranks: np.ndarray) -> dict[str, float]:
    hit = ranks <= K
    return {
        f"hr@{K}": float(hit.mean()),
        f"ndcg@{K}": float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean()),
        f"mrr@{K}": float(np.where(hit, 1.0 / ranks, 0.0).mean()),
    }


@torch.no_grad()
def both_protocols(model: Any, test_data: Any, dataset: Any, sequences: dict[str, list[str]]) -> dict[str, Any]:
    """Test metrics of `model` with the history ranked (RecBole's protocol) and excluded (pmmrec's)."""
    model.eval()
    histories = {
        int(dataset.token2id(dataset.uid_field, user)): [int(dataset.token2id(dataset.iid_field, i)) for i in seq[:-1]]
        for user, seq in sequences.items()
    }
    included, excluded = [], []
    for interaction, _, positive_u, positive_i in test_data:
        scores = model.full_sort_predict(interaction).view(len(positive_u), -1).float()
        scores[:, 0] = float("-inf")
        target = scores[positive_u, positive_i].unsqueeze(1)
        included.append((scores > target).sum(1) + 1)
        for row, user in enumerate(interaction[dataset.uid_field].tolist()):
            scores[row, histories[user]] = float("-inf")
        excluded.append((scores > target).sum(1) + 1)
    ranks_in, ranks_ex = torch.cat(included).numpy(), torch.cat(excluded).numpy()
    return {"users": len(ranks_in), "history_included": metrics(ranks_in), "history_excluded": metrics(ranks_ex)}


def timed_trainer(base: type, config: Any, model: Any) -> Any:
    """RecBole's own trainer class, subclassed only to time its training and validation epochs."""

    class Timed(base):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.train_seconds: list[float] = []
            self.valid_seconds: list[float] = []
            self.valid_scores: list[float] = []

        def _train_epoch(self, *args: Any, **kwargs: Any) -> Any:
            begin = time.perf_counter()
            result = super()._train_epoch(*args, **kwargs)
            self.train_seconds.append(time.perf_counter() - begin)
            return result

        def _valid_epoch(self, *args: Any, **kwargs: Any) -> Any:
            begin = time.perf_counter()
            score, result = super()._valid_epoch(*args, **kwargs)
            self.valid_seconds.append(time.perf_counter() - begin)
            self.valid_scores.append(float(score))
            return score, result

    return Timed(config, model)


def main() -> None:
    started = time.perf_counter()
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    os.chdir(args["workdir"])  # RecBole writes log/ and log_tensorboard/ into the working directory
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    settings: dict[str, Any] = {
        "data_path": str(Path(recbole.__file__).parent / "dataset_example"),
        "checkpoint_dir": str(Path(args["workdir"]) / "saved"),
        "MAX_ITEM_LIST_LENGTH": args["max_length"],
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [K],
        "valid_metric": f"NDCG@{K}",
        "train_neg_sample_args": None,
        "use_gpu": False,
        "show_progress": False,
    }
    for key, name in (("epochs", "epochs"), ("stopping_step", "stopping_step"), ("seed", "seed")):
        if args.get(key) is not None:
            settings[name] = args[key]
    config = Config(model="SASRec", dataset="ml-100k", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    sequences = sequences_in_recbole_order(dataset)
    differences = order_differences(sequences, Path(args["users_tsv"]))
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = timed_trainer(get_trainer(config["MODEL_TYPE"], config["model"]), config, model)
    prepared = time.perf_counter()
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    fitted = time.perf_counter()
    own_test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    tested = time.perf_counter()
    recomputed = both_protocols(trainer.model, test_data, dataset, sequences)
    scores = trainer.valid_scores
    report = {
        "recbole_version": recbole.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "config": {
            key: config[key]
            for key in (
                "MAX_ITEM_LIST_LENGTH",
                "train_batch_size",
                "learning_rate",
                "epochs",
                "stopping_step",
                "hidden_size",
                "n_layers",
                "n_heads",
                "inner_size",
                "hidden_dropout_prob",
                "attn_dropout_prob",
                "loss_type",
                "seed",
                "normalize_all",
                "eval_step",
            )
        },
        "train_examples": len(train_data._dataset),
        "order_vs_pmmrec": differences,
        "epochs_run": len(trainer.train_seconds),
        "best_epoch": int(np.argmax(scores)) + 1 if scores else None,
        "best_valid_ndcg@10": max(scores) if scores else None,
        "train_seconds": trainer.train_seconds,
        "valid_seconds": trainer.valid_seconds,
        "prepare_s": prepared - started,
        "fit_s": fitted - prepared,
        "test_s": tested - fitted,
        "recbole_test": {key: float(value) for key, value in own_test.items()},
        "test": recomputed,
    }
    Path(args["out"]).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
