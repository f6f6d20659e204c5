"""`pmmrec serve`: load the model, the catalogue and the live items, then run the application with uvicorn."""

from __future__ import annotations

from pathlib import Path

import torch

from pmmrec.errors import ConfigError
from pmmrec.serving.app import create_app
from pmmrec.serving.connections import ConnectionBoard
from pmmrec.serving.copies import SERVER_SETTINGS, listen, start_copies, stop_copies
from pmmrec.serving.options import ServeOptions
from pmmrec.serving.runner import load_service, read_api_key
from pmmrec.serving.service import RecommenderService


def serve(model_ref: str, data_dir: str | Path, options: ServeOptions | None = None) -> None:
    """Load the model, the catalogue (cached) and the live items, then serve the API and the page until SIGTERM.

    `options.state_dir` None means the default state folder (`default_state_dir`). On SIGTERM or Ctrl-C, uvicorn
    stops accepting connections and finishes the requests in flight; the store is then closed.
    """
    import uvicorn

    options = options or ServeOptions()
    api_key = read_api_key(options.api_key_file)
    try:  # before the (long) catalogue encoding: is the address free? (--processes: the group the copies join)
        listener = listen(options.host, options.port, options.processes)
    except OSError as exc:
        raise ConfigError(f"--host {options.host} --port {options.port}: cannot listen ({exc.strerror or exc})") from None
    if options.processes == 1:
        listener.close()
    else:
        options = options.model_copy(update={"port": listener.getsockname()[1]})
    service = load_service(model_ref, data_dir, options, default_state=True)
    torch.set_num_threads(options.threads)  # after the catalogue encoding, which uses every core
    board = ConnectionBoard.create(options.processes) if options.processes > 1 else None
    app = create_app(service=service, api_key=api_key, connection_board=board)
    print(startup_line(service), flush=True)
    for note in service.notes:
        print(f"pmmrec serve: {note}", flush=True)
    if options.processes == 1:
        uvicorn.run(app, host=options.host, port=options.port, **SERVER_SETTINGS)
        return
    assert board is not None
    copies = start_copies(model_ref, data_dir, service.options, board)  # the port and state folder as resolved here
    print(f"pmmrec serve: {options.processes} processes listening on http://{options.host}:{options.port}", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, **SERVER_SETTINGS)).run(sockets=[listener])
    finally:
        stop_copies(copies)


def startup_line(service: RecommenderService) -> str:
    """`pmmrec serve: 1682 items + 3 live items (in STATE/items.sqlite3), item encoders ready`."""
    encoders = "loading in the background (POST /items waits)" if service.served.state == "loading" else service.served.state
    live = service.live_loaded
    return (
        f"pmmrec serve: {service.num_items - live} items + {live} live items (in {service.store_location}), "
        f"item encoders {encoders}"
    )
