"""How fast the command line answers: wall time of `pmmrec --help` (and of a few commands' help) in fresh child
processes, beside a bare interpreter start in the same run; which heavy modules `pmmrec --help` imports, and the
slowest imports (`python -X importtime`). Issue 26's target: `pmmrec --help` under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "pydantic", "transformers", "yaml", "fastapi")
CASES: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "pmmrec --help": ["-m", "pmmrec", "--help"],
    "pmmrec evaluate --help": ["-m", "pmmrec", "evaluate", "--help"],
    "pmmrec finetune --help": ["-m", "pmmrec", "finetune", "--help"],
    "pmmrec serve --help": ["-m", "pmmrec", "serve", "--help"],
}


def child_env() -> dict[str, str]:
    """This checkout first on the path, so that the measured pmmrec is the one beside this script."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def wall_seconds(arguments: list[str], repeats: int) -> list[float]:
    """Wall seconds of `python ARGUMENTS` in a fresh process, `repeats` times (one unmeasured warm-up first)."""
    times = []
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        subprocess.run([sys.executable, *arguments], env=child_env(), cwd=ROOT, check=True, capture_output=True)
        if attempt:
            times.append(time.perf_counter() - started)
    return times


def heavy_modules_of_help() -> list[str]:
    """The heavy modules loaded once `pmmrec --help` has printed (none expected: the commands are built lazily)."""
    code = (
        "import sys; from pmmrec.cli import main; sys.argv = ['pmmrec', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=ROOT, capture_output=True, text=True)
    return json.loads(result.stderr.strip().splitlines()[-1].replace("'", '"'))


def slowest_imports(limit: int) -> list[dict[str, Any]]:
    """The top-level imports of `pmmrec --help` by cumulative time (`-X importtime`, microseconds)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pmmrec", "--help"], env=child_env(), cwd=ROOT,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not name.startswith("  "):  # top level only (nested imports are indented further)
            rows.append({"module": name.strip(), "cumulative_ms": int(cumulative) / 1000})
    return sorted(rows, key=lambda row: row["cumulative_ms"], reverse=True)[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7, help="Measured runs per case (after one warm-up).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this file.")
    args = parser.parse_args()
    figures: dict[str, Any] = {
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "cases": {},
    }
    print(f"load average {' '.join(f'{v:.2f}' for v in figures['load_average'])}, {figures['cpus']} CPUs")
    print(f"{'case':<26} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, arguments in CASES.items():
        times = wall_seconds(arguments, args.repeats)
        figures["cases"][name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
        print(f"{name:<26} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}")
    figures["heavy_modules_of_help"] = heavy_modules_of_help()
    figures["slowest_imports"] = slowest_imports(8)
    print(f"heavy modules imported by `pmmrec --help`: {figures['heavy_modules_of_help'] or 'none'}")
    print("slowest top-level imports of `pmmrec --help`:")
    for row in figures["slowest_imports"]:
        print(f"  {row['module']:<30} {row['cumulative_ms']:8.1f} ms")
    figures["load_average_after"] = os.getloadavg()
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
