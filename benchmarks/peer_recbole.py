"""A peer beside pmmrec: RecBole 1.2.1's SASRec and pmmrec's default SASRec-ID run on the same MovieLens-100K.

RecBole goes into a throw-away venv of its own (`--venv`, built once: recbole==1.2.1, numpy<2, pandas<3 and this
interpreter's torch release; nothing of RecBole is patched; TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 lets its trainer
reload its own checkpoints under torch >= 2.6). Both read the atomic files of the same wheel: RecBole directly,
pmmrec through `pmmrec data movielens --domain all` (the whole dataset: 943 users, 1,682 items); the script checks
that the files are byte-identical and reports how the two per-user orders differ (RecBole stores min-max
normalised timestamps as float32, so events about a second apart tie and keep their file order).

The systems run one after the other with the same thread count (OMP/MKL threads and torch threads), alternating
which goes first from one repetition to the next; each run records the machine's load average before, during
(sampled every 5 s) and after, and its CPU time. pmmrec runs with no training option at all
(`pmmrec finetune --data ML --item-tower id --out RUN`, so it picks up whatever the defaults are), plus
`--pmmrec-option` when given; RecBole runs SASRec with its own defaults (d = 64, 2 layers, batch 2048, lr 1e-3,
full softmax over every prefix, stopping_step 10 on the validation metric) and what matching needs: leave-one-out
split in time order, full ranking, NDCG@10 as the validation metric, and the maximum sequence length of pmmrec's
run (`--recbole-max-length` overrides; RecBole's own default is 50).

Test HR/NDCG/MRR@10 under both protocols for both: history excluded (pmmrec's) and history included
(RecBole's). pmmrec's come from its run summary and `pmmrec evaluate --history include`; RecBole's are recomputed
from its best model with pmmrec's rank definition, next to RecBole's own test result (history included).

    python benchmarks/peer_recbole.py --threads 2 --json peer.json                  # the full measurement
    python benchmarks/peer_recbole.py --threads 2 --max-epochs 2 --json quick.json  # a pipeline check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_recbole_child.py"
RECBOLE = "recbole==1.2.1"
FILES = ("ml-100k.inter", "ml-100k.item")
K = 10


def default_venv() -> Path:
    cache = os.environ.get("PMMREC_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "pmmrec-bench" / "recbole-1.2.1-venv"


def requirements() -> list[str]:
    """What the venv holds: RecBole, the numpy it was built for, pandas before copy-on-write, our torch release."""
    return [RECBOLE, "numpy<2", "pandas<3", f"torch=={torch.__version__.split('+')[0]}"]


def ensure_venv(folder: Path) -> Path:
    """The venv's python, creating the venv (a few minutes, from PyPI) unless a finished one is there."""
    marker = folder / "pmmrec-bench.json"
    wanted = requirements()
    python = folder / "bin" / "python"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("requirements") == wanted:
        return python
    shutil.rmtree(folder, ignore_errors=True)
    print(f"creating {folder} with {' '.join(wanted)} ...", flush=True)
    # Without the caller's PYTHONPATH: pip would take what it finds there as installed and leave it out of the venv,
    # whose RecBole then runs without it (RecBole's run clears PYTHONPATH).
    alone = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, env=alone)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *wanted]
    subprocess.run(pip, check=True, env=alone)
    marker.write_text(json.dumps({"requirements": wanted}) + "\n", encoding="utf-8")
    return python


def recbole_files(python: Path) -> dict[str, str]:
    """sha256 of the ml-100k atomic files inside the venv's RecBole wheel (found without importing recbole)."""
    script = "import importlib.util, sys; print(importlib.util.find_spec('recbole').submodule_search_locations[0])"
    package = Path(
        subprocess.run([str(python), "-c", script], check=True, capture_output=True, text=True).stdout.strip()
    )
    return {
        name: hashlib.sha256((package / "dataset_example" / "ml-100k" / name).read_bytes()).hexdigest()
        for name in FILES
    }


class LoadSampler:
    """The 1-minute load average every `interval` seconds while a child runs."""

    def __init__(self, interval: float = 5.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(command: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run `command` (output to `log`); wall and CPU seconds, load average before, during and after.

    The CPU time is this child's own (and its reaped descendants'), from `os.wait4`: the process-wide
    RUSAGE_CHILDREN would also count any other child that ends meanwhile (defaults_search runs several at once).
    """
    load_before = os.getloadavg()[0]
    begin = time.perf_counter()
    with LoadSampler() as sampler, log.open("w", encoding="utf-8") as handle:
        child = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - begin
    if child.returncode != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{shlex.join(command[:4])} ... failed ({child.returncode}); end of {log}:\n{tail}")
    during = sampler.samples or [load_before]
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "load": {
            "before": load_before,
            "mean": round(sum(during) / len(during), 2),
            "max": max(during),
            "after": os.getloadavg()[0],
        },
    }


def child_env(threads: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ) | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} | extra
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def pick(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: round(float(metrics[f"{name}@{K}"]), 4) for name in ("hr", "ndcg", "mrr")}


def run_pmmrec(work: Path, data: Path, threads: int, extra: list[str], tag: str) -> dict[str, Any]:
    """`pmmrec finetune` with no training option (plus `extra`), then its test with the history included."""
    run = work / f"pmmrec-{tag}"
    command = [
        sys.executable,
        "-m",
        "pmmrec",
        "finetune",
        "--data",
        str(data),
        "--item-tower",
        "id",
        "--out",
        str(run),
        "--quiet",
        *extra,
    ]
    print(f"[{tag}] pmmrec: {shlex.join(command[2:])}", flush=True)
    timing = timed(command, child_env(threads), work / f"pmmrec-{tag}.log")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    included_file = work / f"pmmrec-{tag}-included.json"
    evaluate = [
        sys.executable,
        "-m",
        "pmmrec",
        "evaluate",
        "--model",
        str(run / "model"),
        "--data",
        str(data),
        "--history",
        "include",
        "--k",
        str(K),
        "--quiet",
        "--output",
        str(included_file),
    ]
    subprocess.run(evaluate, env=child_env(threads), check=True, capture_output=True)
    included = json.loads(included_file.read_text(encoding="utf-8"))
    epochs = [entry["seconds"] for entry in summary["history"] if entry.get("split", "valid") == "valid"]
    return timing | {
        "system": "pmmrec SASRec-ID",
        "command": shlex.join(command[2:]),
        "max_length": summary["split"]["max_length"],
        "train_examples": summary.get("train_windows"),
        "epochs_run": len(epochs),
        "best_epoch": summary["best_epoch"],
        "train_s_per_epoch": round(sum(epochs) / max(len(epochs), 1), 1),
        "to_early_stop_s": timing["wall_s"],
        "test_history_excluded": pick(summary["test"]),
        "test_history_included": pick(included.get("metrics", included)),
    }


def run_recbole(
    work: Path, python: Path, data: Path, threads: int, max_length: int, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    """RecBole's SASRec in its venv (the child script), to its early stop, then its test under both protocols."""
    folder = work / f"recbole-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "out": str(folder / "result.json"),
        "threads": threads,
        "max_length": max_length,
        "epochs": args.max_epochs,
        "stopping_step": args.recbole_stopping_step,
        "seed": args.recbole_seed,
        "users_tsv": str(data / "users.tsv"),
        "workdir": str(folder),
    }
    print(f"[{tag}] RecBole SASRec: max length {max_length}, epochs {args.max_epochs or 'default (300)'}", flush=True)
    env = child_env(threads, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONPATH="")
    timing = timed([str(python), str(CHILD), json.dumps(settings)], env, work / f"recbole-{tag}.log")
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    epochs = result["train_seconds"]
    return timing | {
        "system": "RecBole 1.2.1 SASRec",
        "max_length": result["config"]["MAX_ITEM_LIST_LENGTH"],
        "train_examples": result["train_examples"],
        "epochs_run": result["epochs_run"],
        "best_epoch": result["best_epoch"],
        "train_s_per_epoch": round(sum(epochs) / max(len(epochs), 1), 1),
        "valid_s_per_epoch": round(sum(result["valid_seconds"]) / max(len(epochs), 1), 2),
        "to_early_stop_s": round(result["prepare_s"] + result["fit_s"] + result["test_s"], 1),
        "test_history_excluded": pick(result["test"]["history_excluded"]),
        "test_history_included": pick(result["test"]["history_included"]),
        "recbole_own_test": {key: round(value, 4) for key, value in result["recbole_test"].items()},
        "threads_seen": result["threads"],
        "versions": {key: result[key] for key in ("recbole_version", "torch", "numpy")},
        "config": result["config"],
        "order_vs_pmmrec": result["order_vs_pmmrec"],
    }


ROW = "{system:<22} {rep:>3} {threads:>3} {max_length:>4} {epochs:>9} {epoch_s:>9} {stop_s:>9} {cpu_s:>8} {load:>17} {excl:>22} {incl:>22}"


def print_row(row: dict[str, Any]) -> None:
    load = row["load"]
    excl, incl = row["test_history_excluded"], row["test_history_included"]
    print(
        ROW.format(
            system=row["system"],
            rep=row["rep"],
            threads=row["threads"],
            max_length=row["max_length"],
            epochs=f"{row['epochs_run']} (b{row['best_epoch']})",
            epoch_s=row["train_s_per_epoch"],
            stop_s=row["to_early_stop_s"],
            cpu_s=row["cpu_s"],
            load=f"{load['before']:.1f}/{load['mean']:.1f}/{load['after']:.1f}",
            excl=f"{excl['hr']:.4f} {excl['ndcg']:.4f} {excl['mrr']:.4f}",
            incl=f"{incl['hr']:.4f} {incl['ndcg']:.4f} {incl['mrr']:.4f}",
        ),
        flush=True,
    )


def verdict(rows: list[dict[str, Any]], short: bool) -> dict[str, Any]:
    """Per repetition: RecBole's time over pmmrec's (to the early stop, per epoch, CPU), and the quality targets."""
    pairs = []
    for rep in sorted({row["rep"] for row in rows}):
        ours = next(row for row in rows if row["rep"] == rep and row["system"].startswith("pmmrec"))
        peer = next(row for row in rows if row["rep"] == rep and row["system"].startswith("RecBole"))
        pairs.append(
            {
                "rep": rep,
                "speedup_to_early_stop": round(peer["to_early_stop_s"] / ours["to_early_stop_s"], 2),
                "speedup_per_epoch": round(peer["train_s_per_epoch"] / ours["train_s_per_epoch"], 2),
                "cpu_ratio": round(peer["cpu_s"] / ours["cpu_s"], 2),
                "hr_at_least_recbole_excluded": ours["test_history_excluded"]["hr"]
                >= peer["test_history_excluded"]["hr"],
                "hr_at_least_recbole_included": ours["test_history_included"]["hr"]
                >= peer["test_history_included"]["hr"],
            }
        )
    met = all(
        p["speedup_to_early_stop"] >= 20 and p["hr_at_least_recbole_excluded"] and p["hr_at_least_recbole_included"]
        for p in pairs
    )
    return {
        "pairs": pairs,
        "target": "not measured (--max-epochs: short run)" if short else ("met" if met else "not met"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="Threads of both systems (OMP, MKL, torch).")
    parser.add_argument("--repeats", type=int, default=1, help="Repetitions; the first system alternates.")
    parser.add_argument("--max-epochs", type=int, help="Cap both systems' epochs (a short check; default: their own).")
    parser.add_argument(
        "--pmmrec-option", action="append", default=[], help="Extra `pmmrec finetune` options (shell words)."
    )
    parser.add_argument("--recbole-max-length", type=int, help="RecBole's MAX_ITEM_LIST_LENGTH (default: pmmrec's).")
    parser.add_argument("--recbole-stopping-step", type=int, help="RecBole's patience (default: its own, 10).")
    parser.add_argument("--recbole-seed", type=int, help="RecBole's seed (default: its own, 2020).")
    parser.add_argument("--venv", type=Path, default=default_venv(), help="RecBole's venv (created when missing).")
    parser.add_argument("--workdir", type=Path, help="Where runs go (default: a temporary folder, removed).")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    python = ensure_venv(args.venv)
    with tempfile.TemporaryDirectory(prefix="peer-recbole-") as scratch:
        work = args.workdir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        data = work / "ml-100k"
        if not (data / "dataset.json").is_file():
            subprocess.run(
                [sys.executable, "-m", "pmmrec", "data", "movielens", "--out", str(data), "--domain", "all"],
                check=True,
                env=child_env(args.threads),
                capture_output=True,
            )
        ours = json.loads((data / "dataset.json").read_text(encoding="utf-8"))["provenance"]["source_files"]
        if ours != recbole_files(python):
            raise SystemExit(
                f"pmmrec's MovieLens-100K ({ours}) is not built from the files RecBole reads ({recbole_files(python)})"
            )
        extra = [word for option in args.pmmrec_option for word in shlex.split(option)]
        if args.max_epochs is not None:
            extra += ["--max-epochs", str(args.max_epochs)]
        rows: list[dict[str, Any]] = []
        max_length = args.recbole_max_length
        print(
            ROW.format(
                system="system",
                rep="rep",
                threads="thr",
                max_length="L",
                epochs="epochs",
                epoch_s="s/epoch",
                stop_s="to stop s",
                cpu_s="CPU s",
                load="load b/mean/a",
                excl="excluded HR NDCG MRR",
                incl="included HR NDCG MRR",
            )
        )
        for rep in range(args.repeats):
            for system in ("pmmrec", "recbole") if rep % 2 == 0 else ("recbole", "pmmrec"):
                if system == "pmmrec":
                    row = run_pmmrec(work, data, args.threads, extra, f"r{rep}")
                    max_length = max_length or row["max_length"]
                else:
                    row = run_recbole(work, python, data, args.threads, max_length or 50, args, f"r{rep}")
                rows.append(row | {"rep": rep, "threads": args.threads})
                print_row(rows[-1])
        outcome = verdict(rows, args.max_epochs is not None)
    for pair in outcome["pairs"]:
        print(
            f"rep {pair['rep']}: RecBole / pmmrec: {pair['speedup_to_early_stop']}x to the early stop, {pair['speedup_per_epoch']}x per epoch, {pair['cpu_ratio']}x CPU time; pmmrec HR@10 >= RecBole's: excluded {pair['hr_at_least_recbole_excluded']}, included {pair['hr_at_least_recbole_included']}"
        )
    print(f"target (>= 20x to the early stop, HR@10 at least RecBole's under both protocols): {outcome['target']}")
    peer = next(row for row in rows if row["system"].startswith("RecBole"))
    print(f"sequence order, RecBole against pmmrec: {peer['order_vs_pmmrec']}")
    if args.json:
        report = {
            "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
            "rows": rows,
            **outcome,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
