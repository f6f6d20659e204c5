"""CUDA paths: a fine-tune, evaluate and recommend round trip under bf16 and fp16 autocast.

Skipped where no CUDA device exists (these machines); run on a GPU machine, where the rest of the suite runs too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiny
import torch
from typer.testing import CliRunner

from pmmrec import api
from pmmrec.cli import app
from pmmrec.data import write_dataset
from pmmrec.model import PMMRec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ITEMS = [f"i{n}" for n in range(1, 25)]


def invoke(*args: object) -> str:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cuda")
    users = [[ITEMS[(3 * start + step) % len(ITEMS)] for step in range(8)] for start in range(16)]
    data = write_dataset(
        root / "data",
        name="tiny",
        item_ids=ITEMS,
        item_texts=[f"A film about {'boats' if n % 3 else 'stars'} number {n}" for n in range(len(ITEMS))],
        user_ids=[f"u{n}" for n in range(16)],
        user_items=users,
        provenance={"source": "tests"},
        preprocessing={},
    )
    return {
        "data": data,
        "text": tiny.tiny_text_encoder().save_pretrained(root / "text"),
        "user": tiny.tiny_user_encoder().save_pretrained(root / "user"),
        "root": root,
    }


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_finetune_evaluate_recommend_on_cuda(precision: str, setting: dict[str, Path]) -> None:
    run = setting["root"] / f"run-{precision}"
    invoke(
        "finetune", "--data", setting["data"], "--out", run, "--text", setting["text"], "--user", setting["user"],
        "--epochs", "2", "--batch-size", "4", "--max-length", "8", "--device", "cuda", "--precision", precision,
        "--quiet",
    )  # fmt: skip
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in steps if record["event"] == "step"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    on_cuda = api.evaluate(run / "model", setting["data"], device="cuda", progress=False)
    on_cpu = api.evaluate(run / "model", setting["data"], device="cpu", progress=False)
    for key in ("hr@10", "ndcg@10"):
        assert on_cuda[key] == pytest.approx(on_cpu[key], abs=1.5 / on_cpu["num_users"])  # at most a tie apart
    ranked = json.loads(
        invoke("recommend", "--model", run / "model", "--data", setting["data"], "--user", "u1", "--device", "cuda", "--json")
    )
    assert len(ranked) == 10 and len({entry["item_id"] for entry in ranked}) == 10


def test_a_model_trained_on_cuda_is_evaluated_where_it_is(setting: dict[str, Path]) -> None:
    """Bug guarded: the best model came back on CUDA and the demo then evaluated it with CPU inputs."""
    from pmmrec.data import load_dataset
    from pmmrec.demo.run import model_ranks

    model = PMMRec.assemble(text=str(setting["text"]), user=str(setting["user"])).to("cuda")
    ranks = model_ranks(model, load_dataset(setting["data"]), "test", max_length=8)
    assert ranks.shape == (16,) and ranks.min() >= 1
