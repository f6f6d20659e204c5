"""Load test of `pmmrec serve`: requests/s and p50/p90/p99 latency of POST /recommend (k = 10) on loopback, with
concurrent requests ranked together (batched, `pmmrec serve`'s default) and one by one (unbatched,
`--no-batching`), in the same run; and, with --startup-runs, the time from starting `pmmrec serve` to its first
/health answer, cold (empty state folder: the catalogue is encoded) and warm (the table cache is read).

The catalogues, each served by a separate server process per mode (uvicorn, one worker, as `pmmrec serve` runs it):

- movielens: the given model over the given dataset folder; the item table is encoded at start-up exactly as
  `pmmrec serve` does. Requests alternate between a random user id (their whole sequence, exclude_seen) and a
  random history of 1-50 catalogue items.
- synthetic: the same model's user encoder over a SYNTHETIC catalogue of --items items (default 100,000). The
  service is built directly with a random item table of shape (items + 1) x d instead of encoding 100,000 texts
  (the encoding cost is start-up only; the request cost, one user-encoder pass and one matrix-vector product,
  depends on the table's shape, not on its values). Rows are random unit directions times 10. Requests are random
  histories of 1-50 items with exclude_seen.

- command: the real `pmmrec serve` (`--processes` included) over files of the synthetic catalogue: an ID model's
  copy with the synthetic rows as its table, or a content model with them as its table cache
  (`_serve_command.py`); measured once its processes are idle (their background start-up work done).
- noop: the HTTP floor. The synthetic scenario's application, with one more route, POST /noop, that parses the
  request as /recommend does and answers a fixed 10-item body the way this tree's /recommend answers (no ranking).

With --rounds N the modes run N times, their order reversed every other round (old new, new old, old new, ...),
each time on a fresh server, so that a change in the machine's load during the run weighs on every mode alike; each
row names its round.

Modes (each its own server process): batched (`pmmrec serve`'s default), unbatched (`--no-batching`), fp32
(batched, `--scan fp32`: no int8 scan), and old: the batched server of another source tree (--baseline-tree, e.g.
an export of main) under uvicorn's h11 parser and asyncio loop, i.e. `pmmrec serve` as it ran before httptools and
uvloop were in the serve extra. --http picks the parser of the other modes (default: uvicorn's choice, httptools
when installed).

Clients are threads in this process, each with its own keep-alive HTTP/1.1 connection (http.client), sending
requests back to back for --duration seconds after a warm-up; each request is timed from send to the last byte of
the response. With --adds-per-second R, one more client adds R new items per second (POST /items, text encoded by
the model) during the measurement, to show that appends do not stall readers. Clients and server share this
machine's cores: the figures include the client's cost. Each row also reports the server's CPU time per request
(from /proc, all its threads), its thread count, and the load average when the row ended.

    python benchmarks/serve_load.py --model RUN/model --data DATA [--quick] [--json PATH]
        [--duration S] [--concurrency 1 --concurrency 4] [--items N] [--threads T] [--adds-per-second R]
        [--mode batched --mode unbatched --mode fp32 --mode old] [--rounds N] [--baseline-tree DIR] [--http h11]
        [--startup-runs N]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _load_clients import measure, process_tree
from _serve_command import seed_state, start_command, write_catalogue
from serve_startup import startup_parts, startup_times, stop_server

K = 10
MAX_HISTORY = 50


# ---- server side (a child process) ----------------------------------------------------------------------


def build_service(
    scenario: str, model_ref: str, data_dir: str, items: int, seed: int, parallel: int, mode: str, workers: int
) -> Any:
    import numpy as np
    import torch

    from pmmrec.model import PMMRec, read_manifest
    from pmmrec.serving import RecommenderService, ServeOptions, load_service

    settings: dict[str, Any] = {"batching": mode != "unbatched", "batch_workers": workers}
    if mode == "fp32":
        settings["scan"] = "fp32"
    options = ServeOptions(device="cpu", quiet=True, max_parallel=parallel or None, **settings)
    if scenario == "movielens":
        return load_service(model_ref, data_dir, options)
    model = PMMRec.from_pretrained(model_ref)
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(items + 1, model.dim, generator=generator)
    table *= 10.0 / table.norm(dim=1, keepdim=True)  # unit directions, a fixed norm: values do not change the cost
    table[0] = 0.0
    users = {f"s{u}": np.random.default_rng(u).integers(1, items + 1, 50) for u in range(100)}
    return RecommenderService(
        model,
        [f"syn-{i}" for i in range(1, items + 1)],
        [f"Synthetic item {i}" for i in range(1, items + 1)],
        table,
        users=users,
        dataset_name=f"synthetic-{items}",
        manifest=read_manifest(Path(model_ref)),
        reference=model_ref,
        options=options,
    )


def add_noop_route(app: Any, service: Any) -> None:
    """POST /noop: parse the body as /recommend does, answer a fixed 10-item body as this tree's /recommend answers
    (bytes of the service's own answer where the tree has `recommend_async`, else a dict FastAPI validates)."""
    try:
        from pmmrec.serving.routes import RecommendRequest, RecommendResponse
    except ImportError:  # a tree from before the bodies moved beside their routes (e.g. main at 238deab)
        from pmmrec.serving.schemas import RecommendRequest, RecommendResponse  # type: ignore[no-redef]

    items = [
        {"rank": r, "item_id": f"syn-{r}", "score": 1.25 * r, "text": f"Synthetic item {r}", "has_image": False,
         "added": False, "image_url": None}
        for r in range(1, K + 1)
    ]  # fmt: skip
    canned = {"items": items, "k": K, "user_id": None, "history_length": 25, "catalogue_size": 100_000, "excluded": 25}
    if hasattr(service, "recommend_async"):
        from pmmrec.serving.routes import CompactJSON

        async def noop(request: Any) -> Any:
            return CompactJSON(canned)

    else:

        def noop(request: Any) -> Any:  # type: ignore[misc]
            return canned

    noop.__annotations__["request"] = RecommendRequest  # this module's annotations are strings (__future__)
    app.add_api_route("/noop", noop, methods=["POST"], response_model=RecommendResponse)


def run_server(args: argparse.Namespace) -> None:
    import torch
    import uvicorn

    from pmmrec.serving import create_app

    started = time.perf_counter()
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP; without it a
    # keep-alive response (headers and body written separately) waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    # --server-processes N: N-1 forked copies (before any torch work, so no thread pool is forked) each build the
    # same service and accept on the same listening socket (the kernel hands each connection to one of them).
    children, ready_read, ready_write = [], *os.pipe()
    for _ in range(args.server_processes - 1):
        pid = os.fork()
        if pid == 0:
            children = []
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent
            break
        children.append(pid)
    is_parent = bool(children) or args.server_processes == 1
    scenario = "synthetic" if args.serve == "noop" else args.serve
    service = build_service(
        scenario, args.model, args.data, args.items, args.seed, args.max_parallel, args.serve_mode, args.batch_workers
    )
    ready = getattr(service.catalogue, "int8_ready", None)
    if ready is not None:  # the int8 copy is built in the background: measure the server as it runs afterwards
        ready.wait()
    if is_parent:
        for _ in children:
            os.read(ready_read, 1)
    else:
        os.write(ready_write, b"1")
    startup = time.perf_counter() - started
    torch.set_num_threads(args.threads)  # as `pmmrec serve --threads` does after encoding the catalogue
    info = {
        "port": sock.getsockname()[1],
        "items": service.num_items,
        "dim": service.model.dim,
        "max_length": service.model.max_length,
        "startup_s": round(startup, 2),
        "torch_threads": torch.get_num_threads(),
        "scan": "int8" if getattr(service.snapshot(), "int8", None) is not None else "fp32",
        "pmmrec": str(Path(sys.modules["pmmrec"].__file__ or "").parent),
        "http": args.http,
        "item_ids_sample": service.item_ids[:: max(1, service.num_items // 5000)],
        "user_ids_sample": list(service.view.users)[:2000],
    }
    info["server_processes"] = args.server_processes
    if is_parent:
        sock.listen(128)  # connections queue until uvicorn accepts them
        print("READY " + json.dumps(info), flush=True)
    app = create_app(service=service)
    if args.serve == "noop":
        add_noop_route(app, service)
    loop = {"h11": "asyncio", "httptools": "auto", "auto": "auto"}[args.http]
    config = uvicorn.Config(app, log_level="warning", access_log=False, http=args.http, loop=loop)
    uvicorn.Server(config).run(sockets=[sock])
    for pid in children:  # the parent was told to stop: so are its copies
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# ---- client side ------------------------------------------------------------------------------------------


def request_bodies(scenario: str, info: dict[str, Any], count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    items = info["item_ids_sample"]
    bodies = []
    for n in range(count):
        if scenario == "movielens" and n % 2 == 0:
            body = {"user_id": rng.choice(info["user_ids_sample"]), "k": K, "exclude_seen": True}
        else:
            history = [rng.choice(items) for _ in range(rng.randint(1, MAX_HISTORY))]
            body = {"history": history, "k": K, "exclude_seen": True}
        bodies.append(json.dumps(body).encode("utf-8"))
    return bodies


def start_server(scenario: str, mode: str, args: argparse.Namespace) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    old = mode == "old"
    command = [
        sys.executable, __file__, "--serve", scenario, "--serve-mode", "batched" if old else mode, "--model", args.model,
        "--data", args.data, "--items", str(args.items), "--seed", str(args.seed),
    ]  # fmt: skip
    command += ["--threads", str(args.threads), "--max-parallel", str(args.max_parallel)]
    command += ["--batch-workers", str(args.batch_workers or 2), "--http", "h11" if old else args.http]
    command += ["--server-processes", str(args.server_processes)]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    if old:
        if args.baseline_tree is None:
            raise SystemExit("--mode old needs --baseline-tree DIR (a source tree of pmmrec, e.g. an export of main)")
        env["PYTHONPATH"] = os.pathsep.join([str(args.baseline_tree), env.get("PYTHONPATH", "")])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("READY "):
            return process, json.loads(line[len("READY ") :])
    process.wait()
    raise SystemExit(f"the {scenario} server exited with status {process.returncode} before it was ready")


def mode_order(modes: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, mode) in the order they run: the modes as given, reversed every other round (A B, B A, A B, ...)."""
    return [(n, mode) for n in range(1, rounds + 1) for mode in (modes if n % 2 else modes[::-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Assembled model folder (e.g. RUN/model of pmmrec finetune).")
    parser.add_argument("--data", required=True, help="The dataset folder it serves (MovieLens).")
    parser.add_argument("--quick", action="store_true", help="5 s per measurement, 1 s warm-up, concurrency 1 only.")
    parser.add_argument("--json", type=Path, help="Write the figures here.")
    parser.add_argument("--duration", type=float, default=20.0, help="Measured seconds per row.")
    parser.add_argument("--warmup", type=float, default=3.0, help="Unmeasured seconds before each row.")
    parser.add_argument("--concurrency", type=int, action="append", help="Client connections (repeatable).")
    parser.add_argument("--items", type=int, default=100_000, help="Size of the synthetic catalogue.")
    parser.add_argument(
        "--scenario", action="append", choices=["movielens", "synthetic", "noop", "command"],
        help="Default: movielens, synthetic. command: the real `pmmrec serve` over a synthetic catalogue (an ID model's table, or a content model's table cache).",
    )
    parser.add_argument("--adds-per-second", type=float, default=0.0, help="Also add items live at this rate.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per request (pmmrec serve's default).")
    parser.add_argument(
        "--max-parallel", type=int, default=0, help="Rankings computed at once in the server (default: CPU count)."
    )
    parser.add_argument(
        "--mode", action="append", choices=["batched", "unbatched", "fp32", "old"], help="Default: unbatched, batched."
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="Run the modes this many times, alternating their order (fresh servers)."
    )
    parser.add_argument("--baseline-tree", type=Path, help="Source tree whose server --mode old runs (h11, asyncio).")
    parser.add_argument(
        "--http", choices=["auto", "h11", "httptools"], default="auto", help="uvicorn's HTTP parser (not --mode old)."
    )
    parser.add_argument(
        "--batch-workers", type=int, help="Batched mode: ranking threads in the server (default: pmmrec serve's)."
    )
    parser.add_argument(
        "--serve-arg", action="append", default=[],
        help="--scenario command: one more argument of `pmmrec serve` (repeatable; e.g. --serve-arg=--batch-wait-ms=4).",
    )  # fmt: skip
    parser.add_argument(
        "--server-processes", type=int, default=1,
        help="Server processes sharing the listening socket (pre-forked; each builds its own service).",
    )  # fmt: skip
    parser.add_argument("--startup-runs", type=int, default=0, help="Also time start-up: 1 cold and N warm runs.")
    parser.add_argument("--startup-only", action="store_true", help="Only the start-up times (no load test).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", choices=["movielens", "synthetic", "noop"], help=argparse.SUPPRESS)
    parser.add_argument("--startup-parts", help=argparse.SUPPRESS)
    parser.add_argument("--serve-mode", choices=["batched", "unbatched", "fp32"], default="batched", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_server(args)
        return
    if args.startup_parts:
        startup_parts(args.model, args.data, args.startup_parts)
        return
    if args.quick:
        args.duration, args.warmup = 5.0, 1.0
        args.concurrency = args.concurrency or [1]
    concurrencies = args.concurrency or [1, 4, 16]
    modes = args.mode or ["unbatched", "batched"]
    scenarios = args.scenario or ["movielens", "synthetic"]
    load_before = os.getloadavg()
    rows = []
    runs = [(scenario, n, mode) for scenario in scenarios for n, mode in mode_order(modes, max(1, args.rounds))]
    command_files, command_dim = Path(tempfile.mkdtemp(prefix="pmmrec-serve-load-")), None
    if "command" in scenarios and not args.startup_only:
        command_dim = write_catalogue(args.model, args.items, args.seed, command_files)
    for scenario, round_number, mode in [] if args.startup_only else runs:
        if scenario == "command":
            command_options = {"processes": args.server_processes, "threads": args.threads, "items": args.items,
                               "batch_workers": args.batch_workers, "dim": command_dim, "extra": args.serve_arg}  # fmt: skip
            state = Path(tempfile.mkdtemp(prefix="state-", dir=command_files))
            seed_state(command_files, state)
            process, info = start_command(command_files / "model", command_files / "data", state, mode, command_options)
        else:
            process, info = start_server(scenario, mode, args)
        try:
            bodies = request_bodies(scenario, info, 2000, args.seed)
            for concurrency in concurrencies:
                path = "/noop" if scenario == "noop" else "/recommend"
                result = measure(
                    info["port"], bodies, concurrency, args.warmup, args.duration, args.adds_per_second, scenario,
                    process.pid, path,
                )  # fmt: skip
                row = {
                    "scenario": scenario,
                    "mode": mode,
                    "round": round_number,
                    "items": info["items"],
                    "dim": info["dim"],
                    "startup_s": info["startup_s"],
                    "settled_s": info.get("settled_s"),
                    "torch_threads": info["torch_threads"],
                    "batch_workers": args.batch_workers,
                    "server_processes": info.get("server_processes", 1),
                    "scan": info.get("scan", "fp32"),
                    "http": info.get("http", "h11"),
                    "pmmrec": info.get("pmmrec"),
                    "k": K,
                    **result,
                }
                rows.append(row)
                adds = f"  adds: {row['adds']}" if "adds" in row else ""
                print(
                    f"{scenario:<9} r{round_number} {mode:<9} {row['items']:>7,} items c={concurrency:<2} {row['requests_per_s']:>6.1f} req/s "
                    f"p50 {row['p50_ms']:>6.2f} p90 {row['p90_ms']:>6.2f} p99 {row['p99_ms']:>6.2f} max {row['max_ms']} ms "
                    f"err {row['errors']} | server {row['server_cpu_ms_per_request']:.2f} ms CPU/req, "
                    f"{row['server_threads']} threads, connections {row['connections_per_process']} | load {row['load_average_after'][0]:.2f}{adds}",
                    flush=True,
                )
        finally:
            copies = process_tree(process.pid)[1:]
            stop_server(process)
            deadline = time.monotonic() + 40  # `pmmrec serve --processes`: its copies stop after their parent
            while any(Path(f"/proc/{pid}").exists() for pid in copies) and time.monotonic() < deadline:
                time.sleep(0.1)
    shutil.rmtree(command_files, ignore_errors=True)
    startup = startup_times(args, args.startup_runs) if args.startup_runs > 0 else []
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "k": K,
            "adds_per_second": args.adds_per_second,
            "synthetic_items": args.items,
            "model": args.model,
            "data": args.data,
        },
        "rows": rows,
        "startup": startup,
    }
    print(
        f"load average (1, 5, 15 min) before / after the run: {load_before} / {report['machine']['load_average_after']}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
