"""The commands that use a model: evaluate, recommend, serve, demo and compare (see `pmmrec.api`, which lists them).

Declared like every command (`@command`, parameters with their help); imported by `pmmrec.api` after its own
commands, so the command line lists them after the training commands. Nothing heavy is imported at the top.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pmmrec.commands import Arg, DataDir, Device, ModelRef, Opt, PathLike, command, lazy, renamed

# ---- using a model -------------------------------------------------------------------------------------------


def _show_evaluate(metrics: dict[str, float], a: dict[str, Any]) -> str:
    from pmmrec.evaluation import format_metrics_table

    title = f"{a['split']} split of {a['data']}" + (f" ({a['baseline']})" if a["baseline"] else "") + ":"
    written = [f"metrics and per-user ranks written to {a['out']}"] if a["out"] is not None else []
    return "\n".join([title, format_metrics_table(metrics, tuple(a["ks"])), *written])


def _evaluate_old_spellings(
    history: str | None, out: PathLike | None, exclude_seen: bool, json_path: PathLike | None
) -> tuple[bool, PathLike | None]:
    """`evaluate`'s protocol and JSON path from its old spellings (--history, --output), with a renamed notice."""
    from pmmrec.errors import ConfigError

    if history is not None:
        if history not in ("exclude", "include"):
            raise ConfigError(f"--history must be exclude or include, got {history!r}")
        new = "--exclude-seen (exclude_seen=True)" if history == "exclude" else "--keep-seen (exclude_seen=False)"
        renamed(f"--history {history} (history={history!r})", new)
        exclude_seen = history == "exclude"
    if out is not None:
        renamed("--output PATH (out=)", "--json (json_path=)")
        json_path = json_path or out
    return exclude_seen, json_path


@command(show=_show_evaluate, json="json_path")
def evaluate(
    model: Annotated[
        Any, Opt("Assembled model: folder or hub reference (default: none; then give --baseline).", cli=str | None)
    ],
    data: DataDir,
    *,
    baseline: Annotated[
        Literal["popularity", "content-knn"] | None,
        Opt("Evaluate a zero-training baseline instead of a model (default: none; then give --model)."),
    ] = None,
    split: Annotated[Literal["valid", "test"], Opt("Which leave-one-out target to rank.")] = "test",
    ks: Annotated[
        Sequence[int],
        Opt("Cut-offs: --k 10 20 50 or --k 10 --k 20.", flag="--k", cli=list[int], metavar="K", takes_following=True),
    ] = (10, 20, 50),
    min_length: Annotated[
        int | None, Opt("Users with fewer interactions are dropped (default: as the model's run, else 3).")
    ] = None,
    max_history: Annotated[
        int | None, Opt("Keep the last N interactions per user (default: as the model's run, else all).")
    ] = None,
    max_length: Annotated[
        int | None,
        Opt("History items the model reads (default: as the model's run, else its maximum; content-knn: 20)."),
    ] = None,
    exclude_seen: Annotated[
        bool,
        Opt(
            "Leave each user's history items out of the ranking (pmmrec's protocol); --keep-seen ranks them too "
            "(RecBole's).",
            flag="--exclude-seen/--keep-seen",
        ),
    ] = True,
    device: Device = None,
    progress: bool = True,
    resume_dir: Annotated[
        PathLike | None,
        Opt("Keep finished users' ranks here; a rerun resumes from them (default: none, nothing kept).", cli=Path),
    ] = None,
    cache_prefixes: Annotated[bool, Opt("Reuse frozen-prefix files (fp16) across evaluations.")] = False,
    json_path: PathLike | None = None,
    history: Annotated[
        Literal["exclude", "include"] | None, Opt("Old spelling of --exclude-seen/--keep-seen.", hidden=True)
    ] = None,
    out: Annotated[
        PathLike | None,
        Opt("Old spelling: writes the --json document to PATH.", flag="--output", cli=Path, hidden=True),
    ] = None,
) -> dict[str, float]:
    """Full-ranking HR, NDCG and MRR at each K of a model or a baseline (ties count in the user's favour).

    The data is split as the model's training run recorded (RUN/model/data_split.json: min_length, max_history,
    max_length); given arguments override it, and without a record the defaults are min_length 3, every
    interaction, and the model's own maximum length. exclude_seen: a user's history items are not ranked (pmmrec's
    protocol) or, False, they are (RecBole's sequential protocol). `json_path` receives the metrics and per-user
    ranks as JSON ("-": standard output). `resume_dir` keeps finished users' ranks as they are computed, so an
    interrupted evaluation resumes there; `cache_prefixes` reuses frozen-prefix files across evaluations of models
    with the same frozen bottom. A model object given without `device` is evaluated where it is. Old spellings:
    history="exclude"/"include" (exclude_seen), out (json_path).
    """
    from pmmrec.arguments import check_arguments, check_dataset_folder, check_model_folder
    from pmmrec.errors import UsageError

    check_arguments(ks=ks, min_length=min_length, max_history=max_history, max_length=max_length)
    exclude_seen, json_path = _evaluate_old_spellings(history, out, exclude_seen, json_path)
    if (model is None) == (baseline is None):
        raise UsageError("give exactly one of --model and --baseline")
    check_dataset_folder(data)
    if isinstance(model, str | os.PathLike):
        check_model_folder(model)
    from pmmrec.tasks import evaluate_model_or_baseline

    return evaluate_model_or_baseline(
        model, data, baseline=baseline, split=split, ks=tuple(ks), min_length=min_length, max_history=max_history,
        max_length=max_length, exclude_seen=exclude_seen, json_path=json_path, device=device, progress=progress,
        resume_dir=resume_dir, cache_prefixes=cache_prefixes,
    )  # fmt: skip


def _show_recommend(ranked: list[Any], _: dict[str, Any]) -> str:
    width = max([len("item id"), *(len(entry.item_id) for entry in ranked)])
    lines = [f"{'rank':>4}  {'score':>8}  {'item id':<{width}}  text"]
    lines += [f"{e.rank:>4}  {e.score:8.3f}  {e.item_id:<{width}}  {e.text}" for e in ranked]
    return "\n".join(lines)


@command(show=_show_recommend, json=True)
def recommend(
    model: ModelRef,
    data: DataDir,
    *,
    user: Annotated[str | None, Opt("A user id of users.tsv (default: none; then give --history).")] = None,
    history: Annotated[
        Sequence[str] | None,
        Opt('Item ids, oldest first: "ID ID ..." (default: none; then give --user).', cli=str, convert=str.split),
    ] = None,
    k: Annotated[int, Opt("How many items to return.")] = 10,
    exclude_seen: Annotated[
        bool,
        Opt(
            "Leave the history's items out of the ranking (--keep-seen: rank them too).",
            flag="--exclude-seen/--keep-seen",
        ),
    ] = True,
    extra_items: Annotated[
        PathLike | None,
        Opt(
            "Extra candidate items (item_id<TAB>text), never seen in training (default: none).",
            flag="--items",
            cli=Path,
        ),
    ] = None,
    device: Device = None,
    progress: bool = True,
) -> list[Any]:
    """Top-k items for a user or a history; new items are recommendable from their content alone.

    `extra_items` adds candidates by content alone. A model object given without `device` stays where it is; with
    `device` it is moved there (in place).
    """
    from pmmrec.arguments import check_arguments, check_dataset_folder, check_model_folder
    from pmmrec.errors import UsageError

    check_arguments(k=k)
    if (user is None) == (history is None):
        raise UsageError("give exactly one of --user and --history")
    check_dataset_folder(data)
    if isinstance(model, str | os.PathLike):
        check_model_folder(model)
    from pmmrec.tasks import recommend_for

    return recommend_for(
        model, data, user=user, history=history, k=k, exclude_seen=exclude_seen, extra_items=extra_items,
        device=device, progress=progress,
    )  # fmt: skip


@command(options="serve")
def serve(model: ModelRef, data: DataDir, **options: Any) -> None:
    """Serve recommendations over HTTP (OpenAPI at /docs, a page at /); items added live are stored and rankable at once.

    `options` are `pmmrec serve`'s flags by name (`pmmrec.serving.options.SERVE_FLAGS`: host, port, state, store,
    batching, ...), validated by `ServeOptions`; a bad value is one error naming its flag. Runs until SIGTERM (needs
    the `serve` extra).
    """
    from pmmrec.arguments import check_dataset_folder, check_model_folder
    from pmmrec.errors import ConfigError
    from pmmrec.serving.options import options_from_flags

    serve_options = options_from_flags(options)
    check_dataset_folder(data)
    check_model_folder(model)
    try:
        from pmmrec.serving import serve as run_server
    except ImportError as exc:
        raise ConfigError(str(exc)) from None
    run_server(str(model), data, serve_options)


@command()
def demo(
    out: Annotated[PathLike, Opt("Folder for data, runs, the local Hub cache and results.", cli=Path)] = "demo_out",
    *,
    quick: Annotated[bool, Opt("Smaller settings: a few minutes on a laptop CPU.")] = False,
    seed: Annotated[int, Opt("Random seed.")] = 42,
    device: Device = None,
    progress: bool = True,
    curve: Annotated[
        bool,
        Opt(
            "The whole learning curve: 5 shares of the target's users (5% to 100%), 3 seeds, every trained row "
            "searched on validation at every share (many times longer than the default small curve)."
        ),
    ] = False,
) -> dict[str, Any]:
    """Pre-train on MovieLens source, publish, assemble, transfer to the target domain, print the comparison and a
    small learning curve (test NDCG@10 when 10%, 25% and 100% of the target's users train).

    Returns what results.json holds.
    """
    from pmmrec.demo import demo as run_demo

    return run_demo(out, quick=quick, seed=seed, device=device, progress=progress, curve=curve)


@command(show=lambda report, _: lazy("pmmrec.comparison", "format_comparison")(report), json=True)
def compare(
    runs: Annotated[
        Sequence[str],
        Arg(
            "Evaluations to compare: `evaluate --json` files, training run folders (RUN/test_ranks.json), demo "
            "folders or results.json; NAME=PATH names one, and a name given twice is one model's seeds.",
            metavar="RUN_OR_JSON",
            cli=list[str],
            variadic=True,
        ),
    ],
    *,
    metric: Annotated[Literal["ndcg", "hr", "mrr"], Opt("Metric of the paired tests.")] = "ndcg",
    k: Annotated[int, Opt("Cut-off of the metrics.")] = 10,
    alpha: Annotated[float, Opt("Significance level of the Holm-adjusted paired tests.")] = 0.05,
) -> dict[str, Any]:
    """Metrics of several runs side by side, with a paired test for every pair (users as clusters, Holm).

    Every run must rank the same users on the same split. Each pair gets the sign-flip test with users as clusters
    and the seed x user bootstrap (`pmmrec.stats`), Holm-adjusted over the pairs, and a verdict.
    """
    from pmmrec.arguments import check_arguments
    from pmmrec.comparison import compare_runs

    check_arguments(k=k)
    return compare_runs(runs, metric=metric, k=k, alpha=alpha)
