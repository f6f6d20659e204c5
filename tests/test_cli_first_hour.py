"""A newcomer's first hour on the command line (issue 26): defaults in every help text, one vocabulary, fast help,
path errors before any model loads, what a training run says first, `compare` and `env`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tiny
import typer
from typer.testing import CliRunner

from pmmrec.cli import app
from pmmrec.commands import DEVICE_HELP
from pmmrec.training import progress
from pmmrec.training.config import finetune_defaults
from pmmrec.training.config_loading import load_train_config
from pmmrec.training.progress import SLOW_RUN_SECONDS, slow_text_hint

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: object) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def leaf_commands(group: Any = None, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    group = group or typer.main.get_command(app)
    ctx = typer.Context(group)
    found: dict[tuple[str, ...], Any] = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if hasattr(command, "list_commands"):
            found.update(leaf_commands(command, (*prefix, name)))
        else:
            found[(*prefix, name)] = command
    return found


COMMANDS = leaf_commands()


# ---- help --------------------------------------------------------------------------------------------------------


def states_its_default(param: Any, ctx: Any) -> bool:
    """The help of an option shows its default (`[default: ...]`), says what decides it ("default: ..."), or the
    option is required or an on/off flag that is off unless given."""
    record = param.get_help_record(ctx)
    if record is None:  # hidden
        return True
    text = record[1]
    plain_flag = getattr(param, "is_flag", False) and not getattr(param, "secondary_opts", None)
    return plain_flag or "[required]" in text or re.search(r"\bdefault\b", text, re.IGNORECASE) is not None


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_every_option_shows_its_default_or_what_decides_it(words: tuple[str, ...]) -> None:
    command = COMMANDS[words]
    ctx = typer.Context(command)
    missing = [param.name for param in command.params if not states_its_default(param, ctx)]
    assert not missing, f"pmmrec {' '.join(words)}: no default stated for {missing}"


def test_the_default_check_catches_an_option_without_one() -> None:
    command = typer.main.get_command(_toy_app())
    ctx = typer.Context(command)
    states = {param.name: states_its_default(param, ctx) for param in command.params}
    assert states == {"silent": False, "loud": True, "flag": True, "decided": True}


def _toy_app() -> typer.Typer:
    toy = typer.Typer(add_completion=False)

    @toy.command()
    def run(
        silent: str | None = typer.Option(None, help="No word about it."),
        loud: int = typer.Option(3, help="Shown by Typer."),
        flag: bool = typer.Option(False, "--flag", help="Off unless given."),
        decided: str | None = typer.Option(None, help="(default: the model's own)"),
    ) -> None:
        pass

    return toy


def test_training_help_shows_each_commands_own_defaults() -> None:
    """Bug guarded: pretrain/finetune --help showed no value for 33 of 45 options, and pretrain's batch size (64)
    was not finetune's (32) without a word."""
    pretrain, finetune = invoke("pretrain", "--help").output, invoke("finetune", "--help").output
    batch = {mode: " ".join(text.split("--batch-size")[1].split("--")[0].split()) for mode, text in
             (("pretrain", pretrain), ("finetune", finetune))}  # fmt: skip
    assert batch["pretrain"] == batch["finetune"]  # one help: it states every case, as no one [default] can
    assert "256 for ID towers, 32 for content towers; pretrain: 64" in batch["pretrain"]
    assert "[default: 0.1]" in pretrain.split("--nid-weight")[1].split("--")[0]
    assert "[default: 0.0]" in finetune.split("--nid-weight")[1].split("--")[0]
    assert "(null: never)" not in pretrain


def test_usage_lines_name_arguments_as_written() -> None:
    """Bug guarded: evaluate's usage showed a phantom `[[K]...]` argument and usage lines showed `{kind}`."""
    for words in COMMANDS:
        usage = invoke(*words, "--help").output.splitlines()[0]
        assert "{" not in usage and "[K]" not in usage, usage
    assert invoke("evaluate", "--help").output.splitlines()[0] == "Usage: pmmrec evaluate [OPTIONS]"
    assert invoke("init", "--help").output.splitlines()[0] == "Usage: pmmrec init [OPTIONS] KIND"


# ---- one vocabulary ------------------------------------------------------------------------------------------------


def options_of(words: tuple[str, ...]) -> dict[str, Any]:
    command = COMMANDS[words]
    return {
        opt: param
        for param in command.params
        for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
    }


def test_one_spelling_for_seen_items_json_quiet_and_device() -> None:
    """Seen items are --exclude-seen/--keep-seen, JSON output is --json, progress bars go with --quiet, and --device
    has one help text, in every command that has them."""
    for words in (("evaluate",), ("recommend",)):
        assert {"--exclude-seen", "--keep-seen"} <= set(options_of(words)), words
    for words in (("evaluate",), ("recommend",), ("inspect",), ("data", "check"), ("env",), ("compare",)):
        assert "--json" in options_of(words), words
    quiet = [("evaluate",), ("recommend",), ("pretrain",), ("finetune",), ("serve",), ("demo",), ("data", "movielens"),
             ("data", "build-lmdb"), ("data", "import-reference")]  # fmt: skip
    for words in quiet:
        assert "--quiet" in options_of(words), words
    helps = {words: options_of(words)["--device"].help for words in COMMANDS if "--device" in options_of(words)}
    assert len(helps) >= 6 and set(helps.values()) == {DEVICE_HELP}


def test_old_spellings_are_hidden() -> None:
    text = invoke("evaluate", "--help").output
    assert "--output" not in text and "--history" not in text
    assert options_of(("evaluate",))["--output"].hidden and options_of(("evaluate",))["--history"].hidden


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("first-hour")
    data = tiny.write_tiny_dataset(root / "data")
    other = tiny.write_tiny_dataset(root / "other", seed=3)
    parts = tiny.save_tiny_components(root / "components")
    model = tiny.text_only_model().save_pretrained(root / "model")
    return {"root": root, "data": data, "other": other, "model": model, **parts}


def test_old_spellings_still_work_and_say_their_new_name(model_and_data: dict[str, Path], tmp_path: Path) -> None:
    model, data = model_and_data["model"], model_and_data["data"]
    base = ["evaluate", "--model", model, "--data", data, "--k", "5", "--quiet"]
    new = invoke(*base, "--keep-seen", "--json")
    assert new.exit_code == 0, new.output
    document = json.loads(new.stdout)
    old = invoke(*base, "--history", "include", "--output", tmp_path / "old.json")
    assert old.exit_code == 0, old.output
    assert "note: --history include (history='include') is renamed --keep-seen (exclude_seen=False)" in old.stderr
    assert "note: --output PATH (out=) is renamed --json (json_path=)" in old.stderr
    written = json.loads((tmp_path / "old.json").read_text())
    assert (
        written["ranks"] == document["ranks"] and written["exclude_seen"] is False and written["history"] == "include"
    )


def test_cut_offs_after_k_still_count_and_stray_values_do_not(model_and_data: dict[str, Path]) -> None:
    model, data = model_and_data["model"], model_and_data["data"]
    listed = invoke("evaluate", "--model", model, "--data", data, "--k", "5", "10", "--quiet", "--json")
    assert listed.exit_code == 0, listed.output
    assert {"ndcg@5", "ndcg@10"} <= set(json.loads(listed.stdout)) and "ndcg@20" not in json.loads(listed.stdout)
    stray = invoke("evaluate", "--model", model, "--data", data, "7", "--quiet")
    assert stray.exit_code == 2 and "unexpected extra argument(s): 7" in stray.output


def test_json_output_is_json_alone(model_and_data: dict[str, Path]) -> None:
    model, data = model_and_data["model"], model_and_data["data"]
    for args in (["recommend", "--model", model, "--data", data, "--user", "u1", "--k", "3"],
                 ["data", "check", data], ["inspect", model]):  # fmt: skip
        result = invoke(*args, "--json")
        assert result.exit_code == 0, result.output
        json.loads(result.stdout)


# ---- answers before work -------------------------------------------------------------------------------------------


def test_top_level_help_imports_neither_torch_nor_pydantic() -> None:
    """`pmmrec --help` reads the command table only (the commands are built when one runs)."""
    code = (
        "import sys; from pmmrec.cli import main; sys.argv = ['pmmrec', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'pydantic', 'numpy', 'transformers', 'yaml') if m in sys.modules), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr
    assert "compare" in result.stdout and "Build, import and check datasets." in result.stdout


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: a path error must come first."""
    from pmmrec.model import PMMRec

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded before the paths were checked")

    monkeypatch.setattr(PMMRec, "from_pretrained", classmethod(refuse))


@pytest.mark.usefixtures("no_model_loading")
@pytest.mark.parametrize("command", ["evaluate", "recommend", "serve", "finetune"])
def test_a_file_as_data_is_refused_before_any_model_loads(command: str, model_and_data: dict[str, Path]) -> None:
    """Bug guarded: a file given as --data was reported after 58 s of model loading, as "dataset folder not found"."""
    file = model_and_data["data"] / "users.tsv"
    extra = {
        "evaluate": [],
        "recommend": ["--user", "u1"],
        "serve": [],
        "finetune": ["--out", model_and_data["root"] / "x"],
    }
    model = [] if command == "finetune" else ["--model", model_and_data["model"]]
    result = invoke(command, *model, "--data", file, *extra[command])
    assert result.exit_code == 1
    assert (
        result.output.strip() == f"error: --data {file}: is a file, not a dataset folder (a folder holding "
        "users.tsv, items.tsv, dataset.json)"
    )


@pytest.mark.usefixtures("no_model_loading")
def test_a_component_given_as_model_names_the_assemble_command(model_and_data: dict[str, Path]) -> None:
    user = model_and_data["user"]
    result = invoke("evaluate", "--model", user, "--data", model_and_data["data"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: --model {user}: is a single component (user), not an assembled model; assemble it first: "
        f"pmmrec assemble --user {user} --out MODEL"
    )


# ---- a training run: its first lines, its time, its test ranks; evaluation elsewhere; compare ----------------------


@pytest.fixture(scope="module")
def trained(model_and_data: dict[str, Path]) -> dict[str, Any]:
    run = model_and_data["root"] / "run"
    config = model_and_data["root"] / "run.yaml"
    config.write_text("batch_size: 4\nseed: 3\n")
    result = invoke(
        "finetune", "--data", model_and_data["data"], "--out", run, "--config", config, "--text",
        model_and_data["text"], "--user", model_and_data["user"], "--epochs", "2", "--max-length",
        str(tiny.MAX_LENGTH), "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"run": run, "output": result.output}


def test_a_run_first_prints_its_folder_and_what_differs_from_the_defaults(trained: dict[str, Any]) -> None:
    lines = trained["output"].splitlines()
    assert lines[0] == f"run folder: {trained['run']}"
    assert lines[1].startswith("configuration that differs from finetune's defaults, from ") and "run.yaml" in lines[1]
    changed = {line.split()[0]: line.split()[1] for line in lines[2:] if line.startswith("  ")}
    assert changed["batch_size"] == "4" and changed["seed"] == "3" and changed["epochs"] == "2"
    assert "max_epochs" not in changed and "model.text" in changed
    assert any(line.startswith("plan: 2 epochs; each epoch") for line in lines)
    assert any(line.startswith("time: ") and "s per step measured" in line for line in lines)
    assert re.search(r"epoch 1/2: valid ndcg@10 = [0-9.]+ .*of validation; run <=\S+ left", trained["output"])
    assert any(line.startswith("refit: ") for line in lines)  # the CPU recipe's: its time is in the bound above


def test_a_long_cpu_text_run_is_told_how_to_train_in_minutes(
    model_and_data: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert slow_text_hint(2, "cpu", SLOW_RUN_SECONDS) is not None
    assert slow_text_hint(2, "cpu", SLOW_RUN_SECONDS - 1) is None  # a short run is left alone
    assert slow_text_hint(0, "cpu", 1e6) is None  # already frozen
    assert slow_text_hint(None, "cpu", 1e6) is None  # no text encoder
    assert slow_text_hint(2, "cuda", 1e6) is None
    monkeypatch.setattr(progress, "SLOW_RUN_SECONDS", 0.0)  # what a run says once it measured its steps
    run = model_and_data["root"] / "hinted"
    result = invoke(
        "finetune", "--data", model_and_data["data"], "--out", run, "--text", model_and_data["text"], "--user",
        model_and_data["user"], "--epochs", "1", "--batch-size", "2", "--max-length", str(tiny.MAX_LENGTH),
        "--device", "cpu", "--recipe", "full", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    hints = [line for line in result.output.splitlines() if line.startswith("hint: ")]
    assert len(hints) == 1 and progress.CPU_TEXT_FLAGS in hints[0]
    table = slow_text_hint(2, "cpu", SLOW_RUN_SECONDS, from_table=True)
    assert table is not None and progress.CPU_TEXT_FLAGS in table and "even updated from a table" in table
    assert "even updated from a table" not in hints[0]  # a run stepping its layers is not told it uses a table
    clock = progress.RunClock(steps_per_epoch=10, total_steps=100, may_stop_early=False, test=False, step_seconds=1.0)
    clock.periodic(every=5, seconds=2.0, measured=True)  # a run whose layers train from the table
    assert "even updated from a table" in progress.time_lines(clock, 0, 2, "cpu")[-1]


def test_a_run_writes_its_test_ranks_as_evaluate_does(trained: dict[str, Any], model_and_data: dict[str, Path]) -> None:
    written = json.loads((trained["run"] / "test_ranks.json").read_text())
    again = invoke(
        "evaluate", "--model", trained["run"] / "model", "--data", model_and_data["data"], "--json", "--quiet"
    )
    assert again.exit_code == 0, again.output
    evaluated = json.loads(again.stdout)
    assert written["users"] == evaluated["users"] and written["ranks"] == evaluated["ranks"]
    assert written["dataset"] == evaluated["dataset"] and written["dataset"]["name"] == "tiny"


def test_evaluating_on_another_dataset_says_so_in_one_line(
    trained: dict[str, Any], model_and_data: dict[str, Path]
) -> None:
    """Bug guarded: a content model evaluated on another dataset than its own ran silently."""
    model = trained["run"] / "model"
    own = invoke("evaluate", "--model", model, "--data", model_and_data["data"], "--quiet")
    assert own.exit_code == 0 and "warning" not in own.output
    other = invoke("evaluate", "--model", model, "--data", model_and_data["other"], "--quiet")
    assert other.exit_code == 0, other.output
    assert other.stderr.strip() == (
        f"warning: --model {model}: the model was trained on another dataset named 'tiny' (its users.tsv differ "
        "from these)"
    )


def evaluation(path: Path, ranks: list[int], model: str) -> Path:
    document = {"model": model, "split": "test", "users": [f"u{n}" for n in range(len(ranks))], "ranks": ranks}
    path.write_text(json.dumps(document))
    return path


def test_compare_prints_the_models_and_a_verdict_per_pair(tmp_path: Path) -> None:
    good = evaluation(tmp_path / "good.json", [1] * 30 + [50] * 10, "good")
    bad = evaluation(tmp_path / "bad.json", [40] * 40, "bad")
    same = evaluation(tmp_path / "same.json", [1] * 30 + [50] * 10, "same")
    result = invoke("compare", good, bad, f"twin={same}")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "test split, 40 users" and lines[1].split()[:2] == ["model", "runs"]
    assert [line.split()[0] for line in lines[2:5]] == ["good", "bad", "twin"]
    verdicts = [line.rsplit(": ", 1)[1] for line in lines if line.startswith("  ")]
    assert verdicts == ["good > bad", "good ~ twin", "bad < twin"]
    report = json.loads(invoke("compare", good, bad, "--json").stdout)
    assert report["comparisons"][0]["significant"] and report["models"][0]["ndcg@10"] == pytest.approx(0.75)


def test_compare_pairs_users_by_id_and_takes_seeds_under_one_name(tmp_path: Path) -> None:
    a1 = evaluation(tmp_path / "a1.json", [1, 2, 3, 4], "a")
    shuffled = {"split": "test", "users": ["u3", "u2", "u1", "u0"], "ranks": [4, 3, 2, 1]}
    (tmp_path / "a2.json").write_text(json.dumps(shuffled))
    b = evaluation(tmp_path / "b.json", [1, 2, 3, 5], "b")
    report = json.loads(invoke("compare", f"a={a1}", f"a={tmp_path / 'a2.json'}", b, "--json").stdout)
    assert report["models"][0] == {**report["models"][0], "model": "a", "runs": 2}
    assert report["models"][0]["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_compare_refuses_runs_that_cannot_pair(tmp_path: Path) -> None:
    a = evaluation(tmp_path / "a.json", [1, 2, 3], "a")
    b = evaluation(tmp_path / "b.json", [1, 2], "b")
    result = invoke("compare", a, b)
    assert result.exit_code == 1 and "rank different users; cannot pair them" in result.output
    result = invoke("compare", a, tmp_path / "missing.json")
    assert result.exit_code == 1 and "missing.json: no such file or folder" in result.output


def test_compare_reads_training_runs(trained: dict[str, Any]) -> None:
    result = invoke("compare", f"first={trained['run']}", f"again={trained['run']}")
    assert result.exit_code == 0, result.output
    assert "first vs again: +0.0000" in result.output and result.output.rstrip().endswith("first ~ again")


# ---- env -------------------------------------------------------------------------------------------------------------


def test_env_reports_versions_devices_and_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = invoke("env")
    assert text.exit_code == 0, text.output
    assert re.search(rf"^torch\s+{re.escape(torch.__version__)}$", text.output, re.MULTILINE)
    assert re.search(r"^hub offline\s+yes", text.output, re.MULTILINE)
    recipe = load_train_config(finetune_defaults()).recipe  # what `--recipe auto` takes here
    assert re.search(rf"^text runs\s+{'CPU' if recipe == 'cpu' else 'full'} recipe \(--recipe auto", text.output, re.MULTILINE)
    report = json.loads(invoke("env", "--json").stdout)
    assert report["packages"]["torch"] == torch.__version__ and report["cuda_available"] == torch.cuda.is_available()
    assert report["torch_threads"] == torch.get_num_threads() and report["variables"]["HF_HUB_OFFLINE"] == "1"
    assert {
        "pmmrec",
        "transformers",
        "tokenizers",
        "huggingface-hub",
        "safetensors",
        "faiss",
        "pydantic",
        "typer",
    } <= set(report["packages"])


def test_the_time_left_counts_validations_and_the_test() -> None:
    """Bug guarded: "time left at most" multiplied epochs by an epoch's training seconds only; validation (about as
    long on a CPU) and the final test were left out, so it was short by half."""
    from pmmrec.training.progress import RunClock, duration

    clock = RunClock(steps_per_epoch=10, total_steps=30, may_stop_early=False, test=True)
    assert clock.describe(0) is None
    clock.step(9.0)  # the first step (set-up) is not counted
    assert clock.describe(1) is None
    for _ in range(9):
        clock.step(1.0)
    assert clock.seconds_left(10) == pytest.approx(20.0) and clock.describe(10) == "run ~20s + validation left"
    clock.validation(4.0)
    assert clock.seconds_left(10) == pytest.approx(20.0 + 3 * 4.0)  # two validations and the test
    assert RunClock(10, 30, may_stop_early=True, test=False, step_seconds=1.0, validation_seconds=4.0).describe(10) == (
        "run <=28s left"
    )
    assert (duration(30), duration(600), duration(3700)) == ("30s", "10m", "1h02m")


def test_another_dataset_is_named_in_one_line() -> None:
    from pmmrec.data import describe_other_dataset

    own = {"name": "ml-source", "items_sha256": "a" * 64, "users_sha256": "b" * 64}
    assert describe_other_dataset(own, own) is None and describe_other_dataset(None, own) is None
    target = {"name": "ml-target", "items_sha256": "c" * 64, "users_sha256": "d" * 64}
    assert describe_other_dataset(own, target) == (
        "the model was trained on dataset 'ml-source', not on 'ml-target' (items.tsv and users.tsv differ): a transfer "
        "evaluation"
    )
