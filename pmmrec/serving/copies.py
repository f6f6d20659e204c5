"""`pmmrec serve --processes N`: N-1 copies of the server accepting on the parent's listening socket.

Why: on a small model most of a request's CPU is Python (routing, batching, the ranking's glue) held under one
GIL; processes each have their own (docs/benchmarks.md, "The served width decides the cost"). Each copy is a fresh
interpreter (`python -m pmmrec.serving.copies`, never a fork of a process whose thread pools have run) that loads
the model and reads the table from the state folder's cache the parent wrote, then serves the inherited socket; the
kernel hands each connection to one process. Live items are shared through the store (each process polls it).
A copy gets SIGTERM when its parent dies (Linux: PR_SET_PDEATHSIG; uvicorn ends the parent by re-raising the
SIGTERM it was stopped with) and then finishes its requests in flight; `stop_copies` is for parents that return.
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

from pmmrec.serving.options import ServeOptions

STOP_SECONDS = 30  # graceful shutdown: requests in flight get this long
# uvicorn's settings for every serving process (`pmmrec serve` and its copies alike).
SERVER_SETTINGS: dict[str, Any] = {"access_log": True, "log_level": "info", "timeout_graceful_shutdown": STOP_SECONDS}


def start_copies(
    model_ref: str, data_dir: str | Path, options: ServeOptions, listener: socket.socket
) -> list[subprocess.Popen[bytes]]:
    """`options.processes - 1` copies serving `listener` with `options` (its state folder resolved)."""
    command = [sys.executable, "-m", "pmmrec.serving.copies", "--fd", str(listener.fileno()), "--model", str(model_ref),
               "--data", str(data_dir), "--options", options.model_dump_json()]  # fmt: skip
    return [subprocess.Popen(command, pass_fds=(listener.fileno(),)) for _ in range(options.processes - 1)]


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
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--options", required=True)
    args = parser.parse_args(argv)
    _die_with_parent()
    options = ServeOptions.model_validate_json(args.options)
    listener = socket.socket(fileno=args.fd)
    service = load_service(args.model, args.data, options)
    torch.set_num_threads(options.threads)
    app = create_app(service=service, api_key=read_api_key(options.api_key_file))
    uvicorn.Server(uvicorn.Config(app, **SERVER_SETTINGS)).run(sockets=[listener])


if __name__ == "__main__":
    main()
