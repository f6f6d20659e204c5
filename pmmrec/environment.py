"""What `pmmrec env` reports for a bug report: versions, devices, threads, platform, the Hub's settings and the
variables pmmrec reads. Versions come from package metadata (nothing is imported for them); torch is imported only to
ask it about devices and threads."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

# Distribution names, in report order (faiss ships as faiss-cpu or faiss-gpu).
PACKAGES = (
    "pmmrec", "torch", "transformers", "tokenizers", "huggingface-hub", "safetensors", "faiss-cpu", "faiss-gpu",
    "pydantic", "typer", "numpy", "lmdb", "fastapi", "uvicorn",
)  # fmt: skip
VARIABLES = (
    "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "PMMREC_CACHE", "PMMREC_STATE", "PMMREC_MAX_MEMORY", "PMMREC_DEBUG",
    "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TOKENIZERS_PARALLELISM",
)  # fmt: skip


def package_versions() -> dict[str, str | None]:
    """Installed version of each package of PACKAGES (None: not installed); faiss under one name."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cpu, gpu = versions.pop("faiss-cpu"), versions.pop("faiss-gpu")
    versions["faiss"] = cpu or gpu
    return versions


def _devices() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"cuda_available": False, "cuda_devices": [], "torch_threads": None}
    available = torch.cuda.is_available()
    devices = []
    if available:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(f"cuda:{index} {props.name}, {props.total_memory / 2**30:.1f} GiB")
    return {
        "cuda_available": available,
        "cuda_version": torch.version.cuda,
        "cuda_devices": devices,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "torch_threads": torch.get_num_threads(),
    }


def _hub() -> dict[str, Any]:
    from huggingface_hub import constants

    from pmmrec.references import hub_is_offline

    return {"hub_cache": str(constants.HF_HUB_CACHE), "hub_offline": hub_is_offline()}


def environment_report() -> dict[str, Any]:
    """Everything `pmmrec env` prints, as JSON-ready data."""
    from pmmrec.budget import available
    from pmmrec.paths import cache_root

    memory, memory_source = available()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": cores,
        "memory_available_bytes": memory,
        "memory_source": memory_source,
        **_devices(),
        **_hub(),
        "pmmrec_cache": str(cache_root()),
        "variables": {name: os.environ[name] for name in VARIABLES if name in os.environ},
    }


def format_environment(report: dict[str, Any]) -> str:
    """The report as aligned `name: value` lines."""
    from pmmrec.budget import format_size

    rows: list[tuple[str, str]] = [(name, version or "-") for name, version in report["packages"].items()]
    memory = report["memory_available_bytes"]
    rows += [
        ("python", report["python"]),
        ("platform", f"{report['platform']} ({report['machine']})"),
        ("cpu cores", f"{report['cpu_cores']} ({report['cpu_cores_usable']} usable)"),
        ("torch threads", str(report["torch_threads"])),
        ("memory available", f"{format_size(memory)} ({report['memory_source']})" if memory else "unknown"),
        ("cuda", f"yes, CUDA {report.get('cuda_version')}" if report["cuda_available"] else "no"),
        *((f"  device {n}", device) for n, device in enumerate(report["cuda_devices"])),
        ("text runs", "full recipe (--recipe auto, CUDA)" if report["cuda_available"] else "CPU recipe (--recipe auto, no CUDA)"),
        ("hub cache", report["hub_cache"]),
        ("hub offline", "yes (HF_HUB_OFFLINE)" if report["hub_offline"] else "no"),
        ("pmmrec cache", report["pmmrec_cache"]),
        *((name, value) for name, value in report["variables"].items()),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
