"""How a server runs: every option of `pmmrec serve` in one pydantic model, `ServeOptions`.

The command line generates the `serve` flags from it (`SERVE_FLAGS`: flag -> field, help texts from the field
descriptions), `pmmrec.api.serve` validates them with it, and the server's parts read it (`serve`,
`load_service`, `build_service`, `RecommenderService`). This module imports neither torch nor FastAPI, so
`pmmrec serve --help` never loads the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pmmrec.commands import DEVICE_HELP, QUIET_HELP
from pmmrec.errors import ConfigError
from pmmrec.serving.limits import Limits

Backend = Literal["faiss", "usearch", "hnswlib", "ivf"]
Scan = Literal["int8", "fp32"]
DESCRIPTIONS = {
    "faiss": "faiss HNSW",
    "usearch": "usearch HNSW",
    "hnswlib": "hnswlib HNSW",
    "ivf": "faiss IVF-PQ 4-bit scan, exact re-scoring",
}


class AnnConfig(BaseModel):
    """How the approximate index is built and searched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = Field(
        default="faiss",
        description="Library that builds and searches the HNSW graph, or ivf: a quantised scan re-scored exactly.",
    )
    connectivity: int = Field(default=32, ge=4, le=128, description="HNSW links per node (M).")
    ef_construction: int = Field(default=80, ge=8, le=2048, description="Search depth while building (efConstruction).")
    ef_search: int = Field(default=256, ge=8, le=4096, description="Search depth per query (ef); raises recall and cost.")
    ivf_lists: int | None = Field(
        default=None, ge=1, le=65_536, description="ivf: inverted lists (default: a power of two near 2 sqrt(N))."
    )
    ivf_probe_share: float = Field(
        default=0.25, gt=0, le=1, description="ivf: share of the lists scanned per query; raises recall and cost."
    )
    ivf_code_dims: int = Field(
        default=2, ge=1, le=64, description="ivf: dimensions per 4-bit code (2: 96 bytes per item at d = 384)."
    )
    rescore: int = Field(
        default=300, ge=1, le=100_000, description="ivf: best approximate candidates re-scored exactly per query."
    )
    min_items: int = Field(
        default=200_000,
        ge=0,
        description="Below this catalogue size the exact search is used even when an index is configured.",
    )

    @property
    def cache_name(self) -> str:
        """The part of an index file's name that names how it was built (searching options may change freely)."""
        if self.backend == "ivf":
            return f"ivf-L{self.ivf_lists or 'auto'}-c{self.ivf_code_dims}"
        return f"{self.backend}-M{self.connectivity}-efc{self.ef_construction}"


class ServeOptions(BaseModel):
    """Everything a server is told besides its model and data: where it listens, where it keeps its state, how it
    ranks, and its request limits.

    `state_dir` None: `pmmrec serve` (and `pmmrec.serving.serve`) keep the state in `default_state_dir`;
    `build_service` and `load_service` keep nothing. `device` None: `pmmrec serve` picks CUDA when available;
    `build_service` keeps a model object where it is.
    """

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Interface to listen on (see --api-key-file before leaving loopback).",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port.")
    threads: int = Field(default=1, ge=1, description="torch threads for ranking (1: the other core serves HTTP).")
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes accepting on the one port, each with its own model and table (the copies "
        "read the table from the state folder's cache); an item added live reaches the others through the store "
        "within a second. Small models gain most (docs/serving.md).",
    )
    balance_connections: bool = Field(
        default=True,
        description="With --processes above 1: a process with two or more busy connections above the least busy "
        "one closes them after their response, so their clients reconnect (the kernel picks a process again).",
    )
    device: str | None = Field(default=None, description=DEVICE_HELP)
    quiet: bool = Field(default=False, description=QUIET_HELP)
    state_dir: Path | None = Field(
        default=None,
        description="State folder: live items (SQLite) and the table and index caches (default: $PMMREC_STATE "
        "or ~/.local/state/pmmrec, then serve/DATASET-HASH/model-KEY: this model's own live items).",
    )
    share_live_items: bool = Field(
        default=False,
        description="Without --state: keep live items in serve/DATASET-HASH, shared by every model served with this "
        "flag on the same data, instead of in this model's own folder.",
    )
    store_url: str | None = Field(
        default=None,
        description="postgresql:// URL of a live-item store shared by replicas (default: none, the state folder's "
        "SQLite).",
    )
    api_key_file: Path | None = Field(
        default=None,
        description="File holding the API key POST /items needs (default: $PMMREC_API_KEY; neither: no auth).",
    )
    protect_reads: bool = Field(
        default=False, description="Require the API key on every route but /health and /metrics."
    )
    batching: bool = Field(default=True, description="Rank concurrent /recommend requests together.")
    batch_wait_ms: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Longest wait for requests already in flight to join a batch (default: 2 for one process, 5 with "
        "--processes above 1, where larger batches measured faster: docs/benchmarks.md).",
    )
    batch_workers: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Threads ranking batches side by side, each taking the requests queued (default: 2 for one "
        "process, 1 per process with --processes above 1: the processes use the cores).",
    )
    scan: Scan = Field(
        default="int8",
        description="Exact scoring on CPU: int8 (an int8 pass over every item, then the items that may be in the top "
        "k re-scored in float32: the float32 ranking, faster) or fp32 (one float32 product over every item).",
    )
    ann: Backend | None = Field(
        default=None,
        description="Approximate search for large catalogues: faiss, usearch or hnswlib (HNSW graphs), or ivf (a "
        "quantised scan whose best candidates are re-scored exactly: recall@10 >= 0.95 at 10^6 items); default: "
        "none, exact search.",
    )
    ann_min_items: int = Field(
        default=AnnConfig().min_items, ge=0, description="Catalogue size from which --ann is used (exact search below)."
    )
    ann_ef_search: int = Field(default=AnnConfig().ef_search, ge=8, description="HNSW search depth (recall vs cost).")
    ann_probe_share: float = Field(
        default=AnnConfig().ivf_probe_share, gt=0, le=1, description="ivf: share of the lists scanned per query."
    )
    ann_rescore: int = Field(
        default=AnnConfig().rescore, ge=1, le=100_000, description="ivf: best candidates re-scored exactly per query."
    )
    # Not command-line flags: for benchmarks, tests and Python callers.
    poll_interval: float = Field(
        default=1.0, ge=0, description="Seconds between looks for items other replicas added (0: never look)."
    )
    max_batch: int = Field(default=64, ge=1, le=4096, description="Most requests ranked in one batch.")
    max_parallel: int | None = Field(
        default=None, ge=1, description="Without batching: most rankings computed at once (default: one per core)."
    )
    int8_min_items: int = Field(
        default=20_000,
        ge=0,
        description="Catalogue size at start-up from which --scan int8 is used (float32 below, as fast there).",
    )
    spare_items: int = Field(
        default=1024, ge=0, description="Free columns of the item table for items added live (it doubles when full)."
    )
    encode_batch_size: int = Field(
        default=256, ge=1, description="Items encoded at once when the catalogue table is built (part of its cache key)."
    )
    limits: Limits = Field(default_factory=Limits, description="Request limits (reported by GET /health).")

    @property
    def ranking_threads(self) -> int:
        """`batch_workers`, or its default for this number of processes."""
        return self.batch_workers or (2 if self.processes == 1 else 1)

    @property
    def batch_wait_s(self) -> float:
        """`batch_wait_ms` in seconds, or its default for this number of processes."""
        wait_ms = self.batch_wait_ms if self.batch_wait_ms is not None else (2.0 if self.processes == 1 else 5.0)
        return wait_ms / 1000

    @model_validator(mode="after")
    def _share_only_the_default_folder(self) -> ServeOptions:
        """--share-live-items picks the default folder: with --state or --store it would silently do nothing."""
        if self.share_live_items and (self.state_dir is not None or self.store_url):
            given = "--state" if self.state_dir is not None else "--store"
            raise ValueError(f"--share-live-items applies without --state and --store; {given} already names the store")
        return self

    @model_validator(mode="after")
    def _copies_need_the_store(self) -> ServeOptions:
        """Several processes learn each other's live items only by polling the store."""
        if self.processes > 1 and self.poll_interval <= 0:
            raise ValueError("--processes above 1 needs the store polled (poll_interval above 0)")
        return self

    @property
    def ann_config(self) -> AnnConfig | None:
        """The approximate index's options, or None for exact search only."""
        if self.ann is None:
            return None
        return AnnConfig(
            backend=self.ann,
            ef_search=self.ann_ef_search,
            ivf_probe_share=self.ann_probe_share,
            rescore=self.ann_rescore,
            min_items=self.ann_min_items,
        )


# `pmmrec serve`'s flags in --help order: option name (--state) -> ServeOptions field (state_dir). Their help texts
# are the fields' descriptions; booleans are --x/--no-x switches, except --quiet, the flag every command has.
SERVE_FLAGS: dict[str, str] = {
    "host": "host",
    "port": "port",
    "threads": "threads",
    "processes": "processes",
    "balance_connections": "balance_connections",
    "device": "device",
    "quiet": "quiet",
    "state": "state_dir",
    "share_live_items": "share_live_items",
    "store": "store_url",
    "api_key_file": "api_key_file",
    "protect_reads": "protect_reads",
    "batching": "batching",
    "batch_wait_ms": "batch_wait_ms",
    "batch_workers": "batch_workers",
    "scan": "scan",
    "ann": "ann",
    "ann_min_items": "ann_min_items",
    "ann_ef_search": "ann_ef_search",
    "ann_probe_share": "ann_probe_share",
    "ann_rescore": "ann_rescore",
}


def options_from_flags(flags: dict[str, Any]) -> ServeOptions:
    """`ServeOptions` from `pmmrec serve`'s flags by option name (None = not given); a bad value is one ConfigError
    line naming the flag, the value and the rule (`--port 0: Input should be greater than or equal to 1`)."""
    unknown = sorted(set(flags) - set(SERVE_FLAGS))
    if unknown:
        raise ConfigError(f"unknown serve option(s) {unknown}; known: {', '.join(SERVE_FLAGS)}")
    values = {SERVE_FLAGS[name]: value for name, value in flags.items() if value is not None}
    try:
        return ServeOptions(**values)
    except ValidationError as exc:
        flag_of = {field: "--" + name.replace("_", "-") for name, field in SERVE_FLAGS.items()}
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error.get("loc") else ""
            if not field:  # a rule between options (the message names the flags)
                problems.append(str(error.get("msg", "invalid")).removeprefix("Value error, "))
                continue
            given = values.get(field)
            where = flag_of.get(field, field or "serve") + ("" if given is None else f" {given}")
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        raise ConfigError("; ".join(problems)) from None
