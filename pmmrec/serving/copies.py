"""`pmmrec serve --processes N`: N-1 copies of the server on the parent's port.

Why: on a small model most of a request's CPU is Python (routing, batching, the ranking's glue) held under one
GIL; processes each have their own (docs/benchmarks.md, "The served width decides the cost"). Each copy is a fresh
interpreter (`python -m pmmrec.serving.copies`, never a fork of a process whose thread pools have run) that loads
the model and reads the table from the state folder's cache the parent wrote, then listens on the parent's port.
Every process has its own listening socket in one SO_REUSEPORT group, so the kernel spreads new connections over
them by a hash of the client's address and port. (One shared listening socket, as uvicorn's and gunicorn's workers
use, hands a burst of connections to whichever process accepts first: on a busy machine the busiest one, whose event
loop is already running; 14 of 16 keep-alive connections then sit on one of two processes: docs/benchmarks.md.) The
hash is blind to load, so the processes also keep their busy connections even (pmmrec/serving/connections.py).
Live items are shared through the store (each process polls it). A copy gets SIGTERM when its parent dies (Linux:
PR_SET_PDEATHSIG; uvicorn ends the parent by re-raising the SIGTERM it was stopped with) and then finishes its
requests in flight; `stop_copies` is for parents that return.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from pmmrec.errors import ConfigError
from pmmrec.serving.connections import ConnectionBoard
from pmmrec.serving.options import ServeOptions

STOP_SECONDS = 30  # graceful shutdown: requests in flight get this long
# uvicorn's settings for every serving process (`pmmrec serve` and its copies alike).
SERVER_SETTINGS: dict[str, Any] = {"access_log": True, "log_level": "info", "timeout_graceful_shutdown": STOP_SECONDS}


def listen(host: str, port: int, processes: int) -> socket.socket:
    """The parent's listening socket: plain for one process; for several, first checked free with a plain bind (a
    port in an SO_REUSEPORT group of another server would otherwise be joined silently), then in a new group."""
    if processes == 1:
        return socket.create_server((host, port))
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--processes above 1 needs SO_REUSEPORT sockets (Linux); run one process per port instead")
    with socket.create_server((host, port)) as probe:
        port = probe.getsockname()[1]  # port 0: the free port the kernel chose
    return socket.create_server((host, port), reuse_port=True)


def start_copies(
    model_ref: str, data_dir: str | Path, options: ServeOptions, board: ConnectionBoard
) -> list[subprocess.Popen[bytes]]:
    """`options.processes - 1` copies serving `options.port` (the parent's, in its SO_REUSEPORT group) with
    `options` (its state folder resolved), each with its slot on `board` (the parent's is 0)."""
    command = [sys.executable, "-m", "pmmrec.serving.copies", "--model", str(model_ref), "--data", str(data_dir),
               "--options", options.model_dump_json(), "--board-fd", str(board.fd)]  # fmt: skip
    return [
        subprocess.Popen([*command, "--index", str(index)], pass_fds=(board.fd,))
        for index in range(1, options.processes)
    ]


def stop_copies(copies: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (each finishes its requests in flight), then SIGKILL after STOP_SECONDS."""
    for copy in copies:
        if copy.poll() is None:
            copy.send_signal(signal.SIGTERM)
    for copy in copies:
        try:
            copy.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            copy.kill()
            copy.wait()


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the parent exits (no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> None:
    import torch
    import uvicorn

    from pmmrec.serving.app import create_app
    from pmmrec.serving.runner import load_service, read_api_key

    parser = argparse.ArgumentParser(description="A copy of `pmmrec serve` (started by --processes).")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--options", required=True)
    parser.add_argument("--board-fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent()
    options = ServeOptions.model_validate_json(args.options)
    service = load_service(args.model, args.data, options)
    torch.set_num_threads(options.threads)
    board = ConnectionBoard(args.board_fd, options.processes, args.index)
    app = create_app(service=service, api_key=read_api_key(options.api_key_file), connection_board=board)
    listener = socket.create_server((options.host, options.port), reuse_port=True)  # once ready: the parent's group
    uvicorn.Server(uvicorn.Config(app, **SERVER_SETTINGS)).run(sockets=[listener])


if __name__ == "__main__":
    main()
