"""One process or many: torchrun sets RANK/LOCAL_RANK/WORLD_SIZE; gloo on CPU, NCCL on CUDA."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pmmrec.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank, world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d{1,3}|mps)$")


def choose_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """The requested device (checked: it exists here), or cuda:LOCAL_RANK when CUDA is available, else the CPU.

    Under torchrun, plain `cuda` means this process's GPU (LOCAL_RANK, not the global rank).
    """
    if not requested:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if not _DEVICE.match(requested):
        raise ConfigError(f"--device {requested}: not a device; the choices are cpu, cuda, cuda:N and mps")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: CUDA is not available on this machine (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {requested}: MPS is not available on this machine (use --device cpu)")
    return device


def setup_distributed(requested_device: str | None = None) -> DistributedContext:
    """Initialise the process group when launched by torchrun; a no-op for a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        # Destroyed before the interpreter exits: a process group left to C++ static destructors aborts the
        # process now and then ("terminate called without an active exception", SIGABRT after a finished job).
        atexit.register(_destroy_process_group)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def wrap_for_processes(module: nn.Module, context: DistributedContext) -> nn.Module:
    """`module` in DistributedDataParallel under torchrun (unused parameters allowed: a step may skip an objective's
    head), else `module` itself."""
    if not context.enabled:
        return module
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def gather_objects(context: DistributedContext, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (a one-element list for a single process)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(context: DistributedContext, value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not context.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_reduce_flag(context: DistributedContext, flag: bool) -> bool:
    """True on every rank if it is True on any rank (e.g. a stop signal)."""
    if not context.enabled:
        return flag
    tensor = torch.tensor([1 if flag else 0], device=context.device if context.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def joined_a_process_group() -> bool:
    """True in a torchrun worker whose command set up the process group (`setup_distributed`)."""
    return dist.is_available() and dist.is_initialized()


def exit_worker(code: object) -> NoReturn:
    """End a torchrun worker whose command has finished, without tearing the process group down.

    Tearing gloo down at exit (in `destroy_process_group` or in C++ static destructors) now and then aborts a worker
    after its work is done ("terminate called without an active exception", SIGABRT), and torchrun then reports the
    whole run as failed. A worker that succeeded waits for the others (so no collective is in flight), flushes its
    logs and streams and leaves with `os._exit`, which runs no destructor; a failed one leaves at once. `code` is
    SystemExit's: None or a number, or a message (printed; status 1).
    """
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    code = code or 0
    if code == 0:
        dist.barrier()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream: nothing more to keep
            stream.flush()
    os._exit(code)
