"""Independent references for the pipeline around the maths: each written here as a plain loop, item by item and
user by user, and compared with what pmmrec computes.

- evaluation: a naive per-user ranking (the split's own histories, every item encoded on its own, strict-greater
  counts) against `pmmrec evaluate`, `pmmrec recommend` and the server's ranking, on a model whose items all score
  below zero (so the padding row, at score 0, would win wherever its mask is missing) and on the tiny text model;
- the trainer's popularity table against counts of the training split made here;
- the training module's losses (next item, NID, RCL) against loops over users and positions;
- best-epoch selection, ties and patience, driven by scripted validation scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny
import torch

from pmmrec import api
from pmmrec.components import IdItemTower, IdItemTowerConfig
from pmmrec.data import Dataset, TrainSequences, leave_one_out, load_dataset
from pmmrec.inference import EvaluationResult, make_collator
from pmmrec.model import PMMRec
from pmmrec.objectives import corrupt_slots
from pmmrec.training.config import TrainConfig, finetune_defaults, pretrain_defaults
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.module import TrainingModule
from pmmrec.training.trainer import Trainer

KS = (1, 5, 10)


@pytest.fixture(autouse=True)
def _environment(isolated: Path) -> None:
    """A private cache, offline, one thread."""


# ---- models ---------------------------------------------------------------------------------------------------


def negative_id_model(dataset: Dataset, dim: int = 16) -> PMMRec:
    """An ID model whose every real item scores below zero for every user, with history-dependent scores.

    The last block's output LayerNorm is set to weight 0.05 and bias -u, so a user state is -u plus a small
    history-dependent part; every item embedding is 2u plus small noise, so each score is about -2 +- 0.5.
    """
    torch.manual_seed(0)
    tower = IdItemTower(IdItemTowerConfig(dim=dim, num_items=dataset.num_items), item_ids=list(dataset.item_ids))
    user = tiny.tiny_user_encoder(seed=5, dim=dim, max_length=tiny.MAX_LENGTH)
    direction = torch.nn.functional.normalize(torch.randn(dim), dim=0)
    with torch.no_grad():
        tower.embeddings.weight[1:] = 2.0 * direction + 0.3 * torch.randn(dataset.num_items, dim)
        tower.embeddings.weight[0] = 0.0
        last = user.blocks[-1].norm2
        last.weight.fill_(0.05)
        last.bias.copy_(-direction)
    return PMMRec.assemble(item_tower=tower, user=user).eval()


def item_embedding(model: PMMRec, dataset: Dataset, index: int) -> torch.Tensor:
    """One catalogue item encoded on its own (its own tokenisation, a batch of one)."""
    with torch.no_grad():
        if model.item_tower is not None:
            return model.embed_items(None, None, None, item_indices=torch.tensor([index])).embeddings[0].float()
        ids, mask = model.text.preprocessor([dataset.item_texts[index - 1]])  # type: ignore[union-attr]
        return model.embed_items(ids, mask, None, item_indices=torch.tensor([index])).embeddings[0].float()


def catalogue(model: PMMRec, dataset: Dataset) -> dict[int, torch.Tensor]:
    return {index: item_embedding(model, dataset, index) for index in range(1, dataset.num_items + 1)}


def user_state(model: PMMRec, items: dict[int, torch.Tensor], history: list[int]) -> torch.Tensor:
    """The state after the last max_length items of `history` (no padding: the window is exactly those items)."""
    window = history[-model.max_length :]
    embeddings = torch.stack([items[i] for i in window]).unsqueeze(0)
    with torch.no_grad():
        return model.encode_users(embeddings, torch.ones(1, len(window), dtype=torch.bool))[0, -1].float()


def scores_for(model: PMMRec, items: dict[int, torch.Tensor], history: list[int]) -> dict[int, float]:
    state = user_state(model, items, history)
    return {index: float(embedding @ state) for index, embedding in items.items()}


# ---- naive evaluation -------------------------------------------------------------------------------------------


def naive_ranks(model: PMMRec, dataset: Dataset, which: str, min_length: int = 3) -> list[int]:
    """Per user with at least `min_length` items: 1 + the items (not in the history, not the padding) that score
    strictly higher than the target. Histories: test = all but the last item, valid = all but the last two."""
    items = catalogue(model, dataset)
    split = leave_one_out(dataset.sequences, min_length)
    ranks, kept = [], 0
    for sequence in dataset.sequences:
        sequence = [int(i) for i in sequence]
        if len(sequence) < min_length:
            continue
        history, target = (sequence[:-1], sequence[-1]) if which == "test" else (sequence[:-2], sequence[-2])
        own = split.test_history[kept] if which == "test" else split.valid_history[kept]
        assert [int(i) for i in own] == history  # the split's own histories are those
        kept += 1
        scores = scores_for(model, items, history)
        seen = set(history) - {target}
        ranks.append(1 + sum(1 for i, s in scores.items() if i not in seen and s > scores[target]))
    return ranks


def naive_metrics(ranks: list[int], ks: tuple[int, ...] = KS) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"hr@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        metrics[f"ndcg@{k}"] = sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks)
        metrics[f"mrr@{k}"] = sum(1 / r for r in ranks if r <= k) / len(ranks)
    metrics["num_users"] = float(len(ranks))
    return metrics


@pytest.fixture(scope="module")
def models(tiny_dataset: Path) -> dict[str, PMMRec]:
    dataset = load_dataset(tiny_dataset)
    return {"negative-id": negative_id_model(dataset), "text": tiny.text_model().eval()}


def test_the_negative_model_scores_every_real_item_below_the_padding_row(
    models: dict[str, PMMRec], tiny_dataset: Path
) -> None:
    """The precondition of the padding-mask checks below: every real item scores below zero, the padding row's score."""
    dataset = load_dataset(tiny_dataset)
    model = models["negative-id"]
    items = catalogue(model, dataset)
    for sequence in dataset.sequences:
        scores = scores_for(model, items, [int(i) for i in sequence])
        assert max(scores.values()) < 0
    assert len({round(s, 6) for s in scores.values()}) == dataset.num_items  # no ties: rankings are unambiguous


@pytest.mark.parametrize("which", ["test", "valid"])
@pytest.mark.parametrize("name", ["negative-id", "text"])
def test_pmmrec_evaluate_equals_a_naive_per_user_evaluation(
    name: str, which: str, models: dict[str, PMMRec], tiny_dataset: Path, tmp_path: Path
) -> None:
    """Guards against ranking the test targets after the validation history (or the reverse), a padding column
    that is not masked, history items left in or the target masked out, and a shifted window."""
    dataset = load_dataset(tiny_dataset)
    model = models[name]
    folder = model.save_pretrained(tmp_path / "model")
    output = tmp_path / "metrics.json"
    ks = [arg for k in KS for arg in ("--k", str(k))]
    tiny.run_cli("evaluate", "--model", folder, "--data", tiny_dataset, "--split", which, *ks, "--output", output, "--quiet", "--device", "cpu")  # fmt: skip
    reported = json.loads(output.read_text())
    ranks = naive_ranks(model, dataset, which)
    assert max(ranks) > 1 and min(ranks) < dataset.num_items  # a real ranking, not a degenerate one
    expected = naive_metrics(ranks)
    for key, value in expected.items():
        assert reported[key] == pytest.approx(value, abs=1e-9), key


def naive_top(model: PMMRec, dataset: Dataset, history: list[int], exclude_seen: bool) -> list[int]:
    """Every real item after `history`, best first (the history left out when `exclude_seen`)."""
    scores = scores_for(model, catalogue(model, dataset), history)
    candidates = [i for i in scores if not (exclude_seen and i in set(history))]
    return sorted(candidates, key=lambda i: -scores[i])


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_the_server_and_pmmrec_recommend_rank_like_the_naive_loop(
    exclude_seen: bool, models: dict[str, PMMRec], tiny_dataset: Path, tmp_path: Path
) -> None:
    """Guards against the padding item being ranked (its mask removed) when every real item scores below zero,
    seen items leaking through `exclude_seen`, and a window other than the last max_length items."""
    from pmmrec.serving import build_service

    dataset = load_dataset(tiny_dataset)
    model = models["negative-id"]
    service = build_service(model, dataset)
    folder = model.save_pretrained(tmp_path / "model")
    for row in (0, 3, 7):  # users with 10, 5 and 9 interactions (longer and shorter than max_length 8)
        user_id, sequence = dataset.user_ids[row], [int(i) for i in dataset.sequences[row]]
        expected = [dataset.item_ids[i - 1] for i in naive_top(model, dataset, sequence, exclude_seen)]
        served = service.recommend(user_id=user_id, k=dataset.num_items, exclude_seen=exclude_seen)
        assert [item["item_id"] for item in served["items"]] == expected
        assert all(item["score"] < 0 for item in served["items"])
        listed = api.recommend(folder, tiny_dataset, user=user_id, k=dataset.num_items, exclude_seen=exclude_seen, device="cpu")
        assert [r.item_id for r in listed] == expected


# ---- the popularity table ---------------------------------------------------------------------------------------


def small_config(mode: str = "finetune", **overrides: Any) -> TrainConfig:
    defaults = pretrain_defaults() if mode == "pretrain" else finetune_defaults()
    base = {"max_length": tiny.MAX_LENGTH, "batch_size": 4, "epochs": 1, "device": "cpu", "ks": [5, 10]}
    if mode == "finetune":
        base["refit"] = False  # a Trainer alone tests its best epoch (a refit is refit.RefitTrainer, a second Trainer)
    return load_train_config(defaults, None, base | overrides)


@pytest.mark.parametrize("max_history", [None, 6])
def test_the_popularity_table_counts_the_training_split_only(
    max_history: int | None, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Guards against popularity counts built from whole sequences (valid and test targets leaking into training)
    or before the max_history cut."""
    dataset = load_dataset(tiny_dataset)
    trainer = Trainer(tiny.text_model(), dataset, small_config(max_history=max_history), tmp_path / "run", progress=False)
    counts = [0] * (dataset.num_items + 1)
    whole = [0] * (dataset.num_items + 1)
    for sequence in dataset.sequences:
        sequence = [int(i) for i in sequence]
        for item in sequence:
            whole[item] += 1
        if len(sequence) < 3:
            continue
        kept = sequence[-max_history:] if max_history else sequence
        for item in kept[:-2]:  # what training sees: everything before the validation and test targets
            counts[item] += 1
    total = sum(counts)
    expected = [0.0] + [math.log(c / total) if c else math.log(1e-6) for c in counts[1:]]
    table = trainer.module.log_popularity.tolist()
    assert counts != whole  # the two really differ on this dataset
    for index in range(1, dataset.num_items + 1):
        if counts[index]:
            assert table[index] == pytest.approx(expected[index], abs=1e-5), index
        else:
            assert table[index] < math.log(1 / total) - 1, index  # never seen in training: far below any seen item
    assert table[0] == 0.0


# ---- the training module's losses ---------------------------------------------------------------------------------


def logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def test_training_module_losses_equal_loops_over_users_and_positions(tiny_dataset: Path) -> None:
    """Guards against RCL built from another position than the last valid one (e.g. position 0, padding for short
    users), NID scored on padding or on clean states, next-item targets shifted by one, and the popularity
    correction dropped or added with the wrong sign."""
    dataset = load_dataset(tiny_dataset)
    model = tiny.text_model().eval()
    config = small_config(objectives={"weights": {"rec": 1.0, "nid": 0.5, "rcl": 0.5}, "nid": {"corruption_rate": 0.5}})
    split = leave_one_out(dataset.sequences)
    counts = torch.ones(dataset.num_items + 1)
    counts[0] = 0
    counts[1::3] = 4.0
    log_pop = torch.log(counts / counts.sum()).clamp_min(-20.0)
    log_pop[0] = 0.0
    torch.manual_seed(0)
    module = TrainingModule(model, config, log_pop).eval()
    collator = make_collator(model, dataset)
    samples = TrainSequences(split.train, tiny.MAX_LENGTH)
    batch = collator([samples[i] for i in (0, 2, 4, 6, 9, 13)])
    with torch.no_grad():
        losses = {name: float(value) for name, value in module(batch, corruption_seed=11).items()}
    assert set(losses) == {"rec", "nid", "rcl"}

    items = catalogue(model, dataset)
    seq = batch.item_seq.tolist()
    inputs, in_mask = batch.item_seq[:, :-1].tolist(), batch.seq_mask[:, :-1].tolist()
    unique = batch.unique_items.tolist()
    tau = config.objectives.next_item.temperature

    def states(row_items: list[int], row_mask: list[bool]) -> torch.Tensor:
        embeddings = torch.stack([items[i] if m else torch.zeros(model.dim) for i, m in zip(row_items, row_mask, strict=True)])
        with torch.no_grad():
            return model.encode_users(embeddings.unsqueeze(0), torch.tensor([row_mask]))[0].float()

    # next item: each valid input position predicts the next slot among the batch's items, own non-targets masked.
    total, rows = 0.0, 0
    clean_states = [states(inputs[u], in_mask[u]) for u in range(len(seq))]
    for user, row in enumerate(seq):
        own = {i for i in row if i > 0}
        for pos in range(len(row) - 1):
            if row[pos] == 0 or row[pos + 1] == 0:
                continue
            target = row[pos + 1]
            logits = {
                j: float(clean_states[user][pos] @ items[j]) / tau - float(log_pop[j])
                for j in unique
                if j == target or j not in own
            }
            total += logsumexp(list(logits.values())) - logits[target]
            rows += 1
    assert losses["rec"] == pytest.approx(total / rows, rel=1e-4, abs=1e-5)

    # NID: the same corruption the module draws, then a BCE per valid input position on the corrupted states.
    generator = torch.Generator().manual_seed(11)
    corrupted, noise = corrupt_slots(batch.slot_index[:, :-1], batch.seq_mask[:, :-1], config.objectives.nid.corruption_rate, generator)
    assert noise.any()
    corrupted_items = [[unique[s] for s in row] for row in corrupted.tolist()]
    noisy_states = [states(corrupted_items[u], in_mask[u]) for u in range(len(seq))]
    head_weight, head_bias = module.nid.head.weight[0].detach(), float(module.nid.head.bias.detach()[0])  # type: ignore[union-attr]
    bce, count = 0.0, 0
    for user in range(len(seq)):
        for pos, valid in enumerate(in_mask[user]):
            if not valid:
                continue
            p = 1 / (1 + math.exp(-(float(noisy_states[user][pos] @ head_weight) + head_bias)))
            bce += -math.log(p) if noise[user, pos] else -math.log(1 - p)
            count += 1
    assert losses["nid"] == pytest.approx(bce / count, rel=1e-4, abs=1e-5)

    # RCL: clean vs corrupted state after each user's last valid input, symmetric InfoNCE over the batch.
    last = [max(p for p, v in enumerate(in_mask[u]) if v) for u in range(len(seq)) if any(in_mask[u])]
    users = [u for u in range(len(seq)) if any(in_mask[u])]
    assert any(p != len(in_mask[0]) - 1 for p in last) is False  # left padding: the last valid input is the last column
    assert any(not in_mask[u][0] for u in users)  # and position 0 is padding for some users
    tau_rcl = config.objectives.rcl.temperature
    clean = [torch.nn.functional.normalize(clean_states[u][p], dim=0) for u, p in zip(users, last, strict=True)]
    noisy = [torch.nn.functional.normalize(noisy_states[u][p], dim=0) for u, p in zip(users, last, strict=True)]
    info = 0.0
    for i in range(len(users)):
        row = [float(clean[i] @ noisy[j]) / tau_rcl for j in range(len(users))]
        col = [float(noisy[i] @ clean[j]) / tau_rcl for j in range(len(users))]
        info += (logsumexp(row) - row[i]) + (logsumexp(col) - col[i])
    assert losses["rcl"] == pytest.approx(info / (2 * len(users)), rel=1e-4, abs=1e-5)


# ---- best epoch and patience ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "patience", "best_epoch", "epochs_run", "stopped"),
    [
        ([0.2, 0.5, 0.5, 0.3, 0.9, 0.1], 2, 2, 4, True),  # a tie is not an improvement; two stale epochs stop the run
        ([0.4, 0.1, 0.6, 0.2, 0.3, 0.5], 2, 3, 5, True),  # a better epoch resets the count; then two stale ones
        ([0.4, 0.1, 0.6, 0.2, 0.3], 2, 3, 5, False),  # patience reached at the last epoch: no early stop to report
        ([0.4, 0.1, 0.6, 0.2], 2, 3, 4, False),  # one stale epoch at the end is not enough
        ([0.3, 0.2, 0.1], None, 1, 3, False),  # no patience: every epoch runs, the first stays best
        ([0.1, 0.2, 0.3], 1, 3, 3, False),  # always better: never stale
    ],
)
def test_best_epoch_and_patience_follow_scripted_validation_scores(
    scores: list[float],
    patience: int | None,
    best_epoch: int,
    epochs_run: int,
    stopped: bool,
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Guards against choosing the best epoch by `<` or `>=`, an off-by-one in patience, and testing (or saving as
    best/) another epoch's weights than the best one."""
    snapshots: list[dict[str, torch.Tensor]] = []
    tested: list[dict[str, torch.Tensor]] = []
    script = iter(scores)

    def scripted(self: Trainer, which: str) -> EvaluationResult:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if which == "valid":
            snapshots.append(state)
            score = next(script)
        else:
            tested.append(state)
            score = -1.0
        metrics = {f"{name}@{k}": score for k in (5, 10) for name in ("hr", "ndcg", "mrr")} | {"num_users": 15.0}
        return EvaluationResult(ranks=np.ones(15, dtype=np.int64), metrics=metrics)

    monkeypatch.setattr(Trainer, "_evaluate", scripted)
    config = small_config(epochs=len(scores), patience=patience, lr=0.01, max_steps=None)
    trainer = Trainer(tiny.text_model(), load_dataset(tiny_dataset), config, tmp_path / "run", progress=False)
    result = trainer.run()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_epoch"] == result.best_epoch == best_epoch
    assert summary["users"] == trainer.split.num_users > 0 and summary["softmax"] == "in_batch"  # resolved "auto"
    assert [h["epoch"] for h in summary["history"]] == list(range(1, epochs_run + 1))
    assert summary["valid"]["ndcg@10"] == scores[best_epoch - 1]
    printed = capsys.readouterr().out
    assert ("early stopping" in printed) == stopped
    best_so_far = [max(scores[:e]) for e in range(1, epochs_run + 1)]
    for epoch in range(1, epochs_run + 1):
        improved = epoch == 1 or scores[epoch - 1] > best_so_far[epoch - 2]
        note = "(best)" if improved else f"(best {best_so_far[epoch - 1]:.4f} at epoch "
        assert f"epoch {epoch}/{len(scores)}: valid ndcg@10 = {scores[epoch - 1]:.4f} {note}" in printed
    assert summary["mode"] == "finetune" and summary["gather_negatives"] is False
    assert summary["test"]["ndcg@10"] == -1.0 and summary["objectives"] == ["rec"]
    best = PMMRec.from_pretrained(tmp_path / "run" / "best").state_dict()
    chosen = snapshots[best_epoch - 1]
    assert all(torch.equal(best[k], chosen[k]) for k in chosen)  # best/ holds the best epoch's weights ...
    assert all(torch.equal(tested[0][k], chosen[k]) for k in chosen)  # ... and they are what the test split saw
    other = snapshots[epochs_run - 1] if best_epoch != epochs_run else snapshots[0]
    assert any(not torch.equal(other[k], chosen[k]) for k in chosen)  # epochs really differ
    # The log: one step record per optimiser step, numbered; one valid record per epoch; the test record last.
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 4 * epochs_run + 1))  # 15 users, batches of 4
    evals = [r for r in records if r["event"] == "eval"]
    assert [(r["split"], r["epoch"]) for r in evals] == [("valid", e) for e in range(1, epochs_run + 1)] + [("test", best_epoch)]
    assert all(r["seconds"] > 0 and r["ndcg@10"] == scores[r["epoch"] - 1] for r in evals[:-1])
    assert summary["data_wait_s"] == pytest.approx(sum(r["data_wait_s"] for r in steps), rel=1e-6, abs=1e-9)


# ---- the server's ranking: its refusals (found by mutation testing, docs/testing.md) -------------------------------


def test_the_server_refuses_bad_requests_with_status_and_reason(models: dict[str, PMMRec], tiny_dataset: Path) -> None:
    """Guards against refusals that lose their HTTP status or their reason, an off-by-one history limit, and a list
    of unknown ids that shows more than five or marks a list of exactly five as cut."""
    from pmmrec.serving import Limits, ServeOptions, ServiceError, build_service

    service = build_service(models["negative-id"], load_dataset(tiny_dataset), ServeOptions(limits=Limits(max_k=5, max_history=3)))

    def refusal(**request: Any) -> tuple[int, str]:
        with pytest.raises(ServiceError) as info:
            service.recommend(**({"k": 1} | request))
        return info.value.status, info.value.message

    assert refusal(user_id="u0", history=["i1"]) == (422, "give exactly one of user_id and history")
    assert refusal() == (422, "give exactly one of user_id and history")
    assert refusal(user_id="u0", k=6) == (422, "k must be between 1 and 5, got 6")
    assert refusal(user_id="u0", k=0) == (422, "k must be between 1 and 5, got 0")
    assert refusal(history=[]) == (422, "history is empty: give at least one item id")
    assert refusal(history=["i1", "i2", "i3", "i4"]) == (422, "history has 4 items; at most 3 are accepted")
    assert len(service.recommend(history=["i1", "i2", "i3"], k=5)["items"]) == 5  # exactly at the limit: served
    assert refusal(user_id="nobody") == (404, "unknown user id 'nobody'")
    assert refusal(history=["x1", "x2", "x3"]) == (404, "unknown item ids in history: 'x1', 'x2', 'x3'")
    wide = build_service(models["negative-id"], load_dataset(tiny_dataset))
    with pytest.raises(ServiceError) as info:
        wide.recommend(history=[f"x{n}" for n in range(1, 6)])
    assert info.value.message == "unknown item ids in history: 'x1', 'x2', 'x3', 'x4', 'x5'"
    with pytest.raises(ServiceError) as info:
        wide.recommend(history=[f"x{n}" for n in range(1, 8)])
    assert info.value.message == "unknown item ids in history: 'x1', 'x2', 'x3', 'x4', 'x5' ..."


def test_the_training_module_takes_its_options_and_keeps_popularity_out_of_its_weights(tiny_image_dataset: Path) -> None:
    """Guards against objective heads built with default options instead of the configured ones, and the
    popularity table (derived from the data) saved with the weights in checkpoints."""
    config = small_config(
        "pretrain", objectives={"nicl": {"temperature": 0.3, "projection_dim": 8}, "nid": {"corruption_rate": 0.4}}
    )
    module = TrainingModule(tiny.text_vision_model(), config, torch.zeros(tiny.NUM_ITEMS + 1))
    assert module.nicl is not None and module.nid is not None
    assert module.nicl.config == config.objectives.nicl and module.nid.config == config.objectives.nid
    assert "log_popularity" not in module.state_dict() and module.log_popularity.shape == (tiny.NUM_ITEMS + 1,)


def test_a_dataset_without_long_enough_users_is_refused_with_the_reason(tiny_dataset: Path, tmp_path: Path) -> None:
    from pmmrec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tiny: no user has at least 11 interactions$"):
        Trainer(tiny.text_model(), load_dataset(tiny_dataset), small_config(min_length=11), tmp_path / "run", progress=False)
