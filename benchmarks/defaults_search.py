"""Issue 28.1: the per-tower defaults of `pmmrec finetune`, chosen on validation with time as a criterion.

`search` trains every configuration of a tower's grid on the whole MovieLens-100K with the test split switched off
(`--no-evaluate-test`), each a `pmmrec finetune` child process with every searched option given explicitly and
`--recipe full` (so the grid means the same whatever the defaults are, on a CPU too: the CPU recipe would fill the
options a grid leaves out), on `--threads` threads (1 for the search: on a shared machine a
second thread mostly spins), `--workers` children at a time. Each run records validation HR/NDCG@10 at its best
epoch, the epochs run, steps, its CPU time (user + sys of the child) and wall time, and the machine's load average
before / during / after. Results go to `--json` after every run; a run already there is not trained again.

Patience 3 is not trained separately: a run's learning-rate schedule does not depend on its patience, so the
history of a patience-5 run up to its stop is that of the patience-3 run up to the earlier stop; each patience-5 run
also yields its patience-3 outcome (`derived`, its CPU time scaled by the epochs trained).

The selection rule, fixed before the search ran: among all configurations of a tower (derived ones included), the
one with the least CPU time whose validation NDCG@10 is at least the best one's minus `TOLERANCE`.

`test` trains the defaults themselves: `pmmrec finetune --data ML --out RUN [--item-tower id] --seed S` with no
other option (on a CPU, a text run takes the CPU recipe: `--recipe auto`), once per seed, on `--threads` threads, with the test split (once, at the best epoch), the test with
the history included (RecBole's protocol, `pmmrec evaluate --history include`), and the resolved config.yaml.

    python benchmarks/defaults_search.py search --tower id --data ML --workdir W --workers 3 --json J
    python benchmarks/defaults_search.py test --tower id --data ML --workdir W --seeds 42 0 1 --threads 2 --json J
    python benchmarks/defaults_search.py test --tower text --extra "--text-trainable-layers 0 --dim 128" --label fast ...
    python benchmarks/defaults_search.py steps --data ML --workdir W --threads 2 --json J
    python benchmarks/defaults_search.py report --json J
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from _defaults_grids import GRIDS
from peer_recbole import child_env, timed

TOLERANCE = 0.005  # validation NDCG@10 given up for time (about half a standard error over 943 users)


def tower_flags(tower: str) -> list[str]:
    return ["--item-tower", "id"] if tower == "id" else []


def option_flags(options: dict[str, Any]) -> list[str]:
    return [word for key, value in options.items() for word in (f"--{key}", str(value))]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    scratch = path.with_suffix(path.suffix + ".tmp")
    scratch.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(scratch, path)


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"search": {}, "test": {}}


def history_of(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "epoch": h["epoch"],
            "ndcg@10": round(h["ndcg@10"], 4),
            "hr@10": round(h["hr@10"], 4),
            "s": round(h["seconds"], 1),
        }
        for h in summary["history"]
        if h.get("split", "valid") == "valid"
    ]


def with_patience(history: list[dict[str, Any]], patience: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The epochs a run with this patience trains (same schedule), and its best epoch."""
    best, stale = None, 0
    for index, entry in enumerate(history):
        if best is None or entry["ndcg@10"] > best["ndcg@10"]:
            best, stale = entry, 0
        else:
            stale += 1
        if stale >= patience:
            return history[: index + 1], best
    assert best is not None
    return history, best


def train_one(
    data: Path, workdir: Path, tower: str, name: str, options: dict[str, Any], threads: int
) -> dict[str, Any]:
    run = workdir / tower / name
    command = [sys.executable, "-m", "pmmrec", "finetune", "--data", str(data), "--out", str(run), "--quiet",
               "--no-evaluate-test", "--recipe", "full", *tower_flags(tower), *option_flags(options)]  # fmt: skip
    if run.exists():
        subprocess.run(["rm", "-rf", str(run)], check=True)
    timing = timed(command, child_env(threads, TOKENIZERS_PARALLELISM="false"), workdir / f"{tower}-{name}.log")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    for folder in ("best", "checkpoints", "model"):
        subprocess.run(["rm", "-rf", str(run / folder)], check=True)
    history = history_of(summary)
    best = next(h for h in history if h["epoch"] == summary["best_epoch"])
    return timing | {
        "tower": tower,
        "options": options,
        "command": shlex.join(command[2:]),
        "threads": threads,
        "valid": {"ndcg@10": best["ndcg@10"], "hr@10": best["hr@10"]},
        "best_epoch": summary["best_epoch"],
        "epochs": len(history),
        "steps": summary["steps"],
        "train_s": round(sum(h["s"] for h in history), 1),
        "history": history,
    }


def derived_rows(name: str, row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The patience-3 outcome of a patience-5 run (see the module docstring)."""
    if row["options"].get("patience") != 5:
        return {}
    kept, best = with_patience(row["history"], 3)
    share = len(kept) / len(row["history"])
    return {
        f"{name}+p3": {
            "tower": row["tower"],
            "options": row["options"] | {"patience": 3},
            "derived_from": name,
            "valid": {"ndcg@10": best["ndcg@10"], "hr@10": best["hr@10"]},
            "best_epoch": best["epoch"],
            "epochs": len(kept),
            "cpu_s": round(row["cpu_s"] * share, 1),
            "wall_s": round(row["wall_s"] * share, 1),
        }
    }


def candidates(results: dict[str, Any], tower: str) -> dict[str, dict[str, Any]]:
    rows = {name: row for name, row in results["search"].items() if row["tower"] == tower}
    for name, row in list(rows.items()):
        rows.update(derived_rows(name, row))
    return rows


def seed_means(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows trained at several seeds (`seed` in their options, names ending `-sSEED`) as one row per configuration:
    the means of validation NDCG@10 / HR@10, CPU and wall time, and the largest epoch count. Other rows as they are."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, row in rows.items():
        if "seed" not in row["options"]:
            continue
        stem, _, tail = name.rpartition("-s")
        stem += tail[tail.index("+"):] if "+" in tail else ""  # a derived row: `NAME-sSEED+p3`
        groups.setdefault(stem, []).append(row)
    means = {name: row for name, row in rows.items() if "seed" not in row["options"]}
    for stem, members in groups.items():
        means[stem] = {
            "tower": members[0]["tower"],
            "options": {k: v for k, v in members[0]["options"].items() if k != "seed"},
            "seeds": sorted(row["options"]["seed"] for row in members),
            "valid": {m: round(statistics.fmean(row["valid"][m] for row in members), 4) for m in ("ndcg@10", "hr@10")},
            "best_epoch": max(row["best_epoch"] for row in members),
            "epochs": max(row["epochs"] for row in members),
            "cpu_s": round(statistics.fmean(row["cpu_s"] for row in members), 1),
            "wall_s": round(statistics.fmean(row["wall_s"] for row in members), 1),
        }
    return means


def select(results: dict[str, Any], tower: str) -> tuple[str, dict[str, Any]] | None:
    """The selection rule: least CPU time within TOLERANCE of the best validation NDCG@10 (seed means where a
    configuration ran at several seeds)."""
    rows = seed_means(candidates(results, tower))
    if not rows:
        return None
    top = max(row["valid"]["ndcg@10"] for row in rows.values())
    near = {name: row for name, row in rows.items() if row["valid"]["ndcg@10"] >= top - TOLERANCE}
    name = min(near, key=lambda n: (near[n]["cpu_s"], -near[n]["valid"]["ndcg@10"]))
    return name, near[name]


def search(args: argparse.Namespace) -> None:
    results = load(args.json)
    lock = threading.Lock()
    todo = [
        (f"{stage}/{name}", options)
        for stage in args.stages or GRIDS[args.tower]
        for name, options in GRIDS[args.tower][stage].items()
        if f"{stage}/{name}" not in results["search"]
    ]
    print(f"{len(todo)} configuration(s) to train", flush=True)

    def work(item: tuple[str, dict[str, Any]]) -> None:
        key, options = item
        row = train_one(args.data, args.workdir, args.tower, key.replace("/", "-"), options, args.threads)
        with lock:  # re-read first: another search process may share the file (one per free core)
            results["search"] = load(args.json)["search"] | results["search"] | {key: row}
            write_json(args.json, results)
        print(f"{key}: {row_text(row)}", flush=True)

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        list(pool.map(work, todo))
    report(args)


def test(args: argparse.Namespace) -> None:
    results = load(args.json)
    label = f"/{args.label}" if args.extra else ""
    for seed in args.seeds:
        key = f"{args.tower}/seed{seed}{label}"
        if key in results["test"]:
            continue
        run = args.workdir / "test" / f"{args.tower}-seed{seed}{label.replace('/', '-')}"
        run.parent.mkdir(parents=True, exist_ok=True)
        if run.exists():  # a run interrupted before its result was recorded: train it again from the start
            subprocess.run(["rm", "-rf", str(run)], check=True)
        command = [sys.executable, "-m", "pmmrec", "finetune", "--data", str(args.data), "--out", str(run), "--quiet",
                   *tower_flags(args.tower), "--seed", str(seed), *shlex.split(args.extra)]  # fmt: skip
        env = child_env(args.threads, TOKENIZERS_PARALLELISM="false")
        timing = timed(command, env, run.with_suffix(".log"))
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        included = run / "included.json"
        subprocess.run([sys.executable, "-m", "pmmrec", "evaluate", "--model", str(run / "model"), "--data",
                        str(args.data), "--history", "include", "--k", "10", "--quiet", "--output", str(included)],
                       env=env, check=True, capture_output=True)  # fmt: skip
        inc = json.loads(included.read_text(encoding="utf-8"))
        inc = inc.get("metrics", inc)
        history = history_of(summary)
        results["test"][key] = timing | {
            "command": shlex.join(command[2:]),
            "threads": args.threads,
            "config": yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")),
            "best_epoch": summary["best_epoch"],
            "epochs": len(history),
            "steps": summary["steps"],
            "train_s": round(sum(h["s"] for h in history), 1),
            "valid": {k: round(summary["valid"][k], 4) for k in ("ndcg@10", "hr@10")},
            "test": {k: round(summary["test"][k], 4) for k in ("ndcg@10", "hr@10")},
            "test_history_included": {k: round(inc[k], 4) for k in ("ndcg@10", "hr@10")},
            "history": history,
        }
        write_json(args.json, results)
        print(f"{key}: {row_text(results['test'][key])}", flush=True)
    report(args)


# `steps`: seconds per training step of content-tower settings (what a text configuration costs before training it).
STEP_CONFIGS: dict[str, dict[str, Any]] = {
    "default (2 MiniLM layers trained, d 384, batch 32)": {},
    "1 layer trained, d 128": {"text-trainable-layers": 1, "dim": 128},
    "1 layer trained, d 128, batch 128": {"text-trainable-layers": 1, "dim": 128, "batch-size": 128},
    "frozen, d 384": {"text-trainable-layers": 0},
    "frozen, d 128": {"text-trainable-layers": 0, "dim": 128},
    "frozen, d 128, full softmax": {"text-trainable-layers": 0, "dim": 128, "softmax": "full"},
    "frozen, d 128, batch 128": {"text-trainable-layers": 0, "dim": 128, "batch-size": 128},
    # A gated merge-attention layer over the frozen text tokens (--single-modality-fusion attention), d 128.
    "frozen, d 128, attention tower": {"text-trainable-layers": 0, "dim": 128, "single-modality-fusion": "attention"},
}


def steps(args: argparse.Namespace) -> None:
    """Median seconds per step (steps 4 to `--steps`) of each STEP_CONFIGS setting, one child at a time."""
    results = load(args.json)
    table = results.setdefault("steps", {})
    for name, options in STEP_CONFIGS.items():
        if args.only and name not in args.only:
            continue
        run = args.workdir / "steps" / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        if run.exists():
            subprocess.run(["rm", "-rf", str(run)], check=True)
        run.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pmmrec", "finetune", "--data", str(args.data), "--out", str(run), "--quiet",
                   "--no-evaluate-test", "--recipe", "full", "--max-steps", str(args.steps),
                   *option_flags(options)]  # fmt: skip
        timing = timed(command, child_env(args.threads, TOKENIZERS_PARALLELISM="false"), run.with_suffix(".log"))
        records = [json.loads(line) for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines()]
        seconds = [r["step_s"] for r in records if r.get("event") == "step"][3:]
        windows = json.loads((run / "summary.json").read_text(encoding="utf-8"))["train_windows"]
        batch = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["batch_size"]  # as resolved
        per_step = statistics.median(seconds)
        per_epoch = -(-windows // batch)
        table[name] = timing | {"options": options, "threads": args.threads, "s_per_step": round(per_step, 3),
                                "steps_per_epoch": per_epoch}  # fmt: skip
        write_json(args.json, results)
        print(f"{name}: {per_step:.3f} s per step, {per_step * per_epoch:.0f} s per epoch of training "
              f"({args.threads} threads, {row_load(table[name])})", flush=True)  # fmt: skip


def row_load(row: dict[str, Any]) -> str:
    return f"load {row['load']['before']:.1f}/{row['load']['mean']:.1f}/{row['load']['after']:.1f}"


def row_text(row: dict[str, Any]) -> str:
    load_text = row_load(row) if "load" in row else "mean" if "seeds" in row else "derived"
    text = (
        f"valid NDCG@10 {row['valid']['ndcg@10']:.4f} HR@10 {row['valid']['hr@10']:.4f}, best epoch "
        f"{row['best_epoch']}/{row['epochs']}, CPU {row['cpu_s']:.0f} s, wall {row['wall_s']:.0f} s, {load_text}"
    )
    if "test" in row:
        text += f"; test HR@10 {row['test']['hr@10']:.4f} NDCG@10 {row['test']['ndcg@10']:.4f}"
    return text


def spread(values: list[float]) -> str:
    """Mean, sample standard deviation, min and max of one figure over the seeds."""
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"mean {mean:.4g} (sd {sd:.2g}, min {min(values):.4g}, max {max(values):.4g})"


def report(args: argparse.Namespace) -> None:
    results = load(args.json)
    for tower in ("id", "text"):
        rows = candidates(results, tower)
        if not rows:
            continue
        print(f"\n{tower}: {len(results['search'])} trained, {len(rows)} candidates (derived included)")
        for name in sorted(rows, key=lambda n: -rows[n]["valid"]["ndcg@10"]):
            print(f"  {name:<28} {row_text(rows[name])}")
        means = {name: row for name, row in seed_means(rows).items() if "seeds" in row}
        if means:
            print("  seed means (epochs: the most of any seed):")
        for name in sorted(means, key=lambda n: -means[n]["valid"]["ndcg@10"]):
            print(f"  {name:<28} {row_text(means[name])}, seeds {means[name]['seeds']}")
        chosen = select(results, tower)
        if chosen:
            print(f"  selected (least CPU within {TOLERANCE} of the best NDCG@10): {chosen[0]} {chosen[1]['options']}")
    tests = results["test"]
    groups: dict[tuple[str, str], list[str]] = {}  # (tower, recipe label or ""): keys TOWER/seedS[/LABEL]
    for key in tests:
        tower, _seed, *recipe = key.split("/")
        groups.setdefault((tower, "/".join(recipe)), []).append(key)
    for (tower, recipe_label), keys in sorted(groups.items()):
        rows = [tests[key] for key in keys]
        what = f"recipe {recipe_label} ({rows[0]['command']})" if recipe_label else "defaults"
        print(f"\n{tower} {what}, {len(rows)} seed(s), to the early stop:")
        for label, values in (
            ("test HR@10", [row["test"]["hr@10"] for row in rows]),
            ("test NDCG@10", [row["test"]["ndcg@10"] for row in rows]),
            ("wall s", [row["wall_s"] for row in rows]),
            ("CPU s", [row["cpu_s"] for row in rows]),
            ("epochs", [row["epochs"] for row in rows]),
        ):
            print(f"  {label:<13} {spread(values)}")
        for key in keys:
            print(f"  {key}: {row_text(tests[key])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("search", "test", "steps", "report"))
    parser.add_argument("--tower", choices=("id", "text"), default="id")
    parser.add_argument("--data", type=Path, help="`pmmrec data movielens --out ML` (the whole MovieLens-100K)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/defaults"))
    parser.add_argument("--stages", nargs="*", help="Stages of the grid to train (default: all).")
    parser.add_argument("--workers", type=int, default=1, help="Children at a time.")
    parser.add_argument("--threads", type=int, default=1, help="Threads per child (OMP/MKL, hence torch).")
    parser.add_argument("--seeds", type=int, nargs="*", default=[42, 0, 1])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/defaults-search.json"))
    parser.add_argument("--extra", default="", help="test: flags added to the default command (a recipe).")
    parser.add_argument("--label", default="recipe", help="test: the name its rows take with --extra.")
    parser.add_argument("--steps", type=int, default=15, help="steps: steps per setting.")
    parser.add_argument("--only", action="append", help="steps: only this setting (repeatable; default: all).")
    args = parser.parse_args()
    if args.action != "report" and args.data is None:
        parser.error("--data is required")
    args.workdir.mkdir(parents=True, exist_ok=True)
    {"search": search, "test": test, "steps": steps, "report": report}[args.action](args)


if __name__ == "__main__":
    main()
