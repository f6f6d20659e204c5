"""The memory budget: what pmmrec may allocate, checked before a configuration is built.

A config whose every field is within its own limit can still describe something absurd (a user encoder 8192 wide
and 48 layers deep, an ID table of 50 million x 8192): its parameters alone would take hundreds of gigabytes. Every
component estimates its memory from its config (`ComponentConfig.memory_estimate`) and `require` refuses it before
any tensor is allocated when the estimate exceeds what is available: the memory the system has available
(MemAvailable, or the cgroup's limit less its usage; replaced by the user's own budget, `PMMREC_MAX_MEMORY` or
`pmmrec --max-memory`, when one is set), and never more than the room left under this process's address-space
limit (RLIMIT_AS), past which an allocation fails whatever the user says.
"""

from __future__ import annotations

import os
import re

try:
    import resource
except ImportError:  # pragma: no cover (Windows: no address-space limit to read)
    resource = None  # type: ignore[assignment]

from pmmrec.errors import ConfigError, PmmrecError

MAX_MEMORY_ENV = "PMMREC_MAX_MEMORY"
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class BudgetError(ConfigError):
    """A configuration would need more memory than the budget allows."""


def parse_size(text: str, what: str = MAX_MEMORY_ENV) -> int:
    """Bytes of a size such as `512M`, `4GiB`, `1.5G` or `1000000` (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"{what}: {text!r} is not a size (examples: 512M, 4GiB, 1.5G)")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not 1 <= value < 1 << 62:
        raise ConfigError(f"{what}: {text!r} is out of range")
    return int(value)


def format_size(size: float) -> str:
    """A byte count for people: 1.5 GiB, 300 MiB, 12 KiB."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{int(size)} bytes"


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as handle:
            limit = handle.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as handle:
            current = int(handle.read().strip())
        return max(int(limit) - current, 0)
    except (OSError, ValueError):
        return None


def _address_space_left() -> int | None:
    """Room under RLIMIT_AS: the limit less the address space this process already maps."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmSize:"):
                    return max(soft - int(line.split()[1]) * 1024, 0)
    except (OSError, ValueError, IndexError):
        return soft
    return soft


def user_budget() -> int | None:
    """The user's own cap (PMMREC_MAX_MEMORY), if set."""
    text = os.environ.get(MAX_MEMORY_ENV)
    return parse_size(text) if text else None


def available() -> tuple[int | None, str]:
    """(bytes pmmrec may allocate now, what limits it), or (None, ...) when nothing can be measured."""
    chosen = user_budget()
    limits = [(_address_space_left(), "this process's address-space limit (RLIMIT_AS)")]
    if chosen is not None:
        limits.append((chosen, f"{MAX_MEMORY_ENV} / --max-memory"))
    else:
        limits += [
            (_cgroup_available(), "the cgroup's memory limit"),
            (_meminfo_available(), "the memory this machine has available"),
        ]
    known = [(value, name) for value, name in limits if value is not None]
    if not known:
        return None, "nothing measured"
    return min(known, key=lambda pair: pair[0])


def require(needed: int, what: str, error: type[PmmrecError] = BudgetError) -> None:
    """Refuse `what` (a label naming the file and configuration) when it needs more than the budget allows."""
    budget, source = available()
    if budget is not None and needed > budget:
        raise error(
            f"{what} needs about {format_size(needed)} of memory, more than the {format_size(budget)} allowed by "
            f"{source}; nothing was allocated (set {MAX_MEMORY_ENV} or pmmrec --max-memory to change the budget)"
        )
