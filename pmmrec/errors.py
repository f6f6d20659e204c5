"""Exceptions raised by pmmrec; every message names the file, key or argument at fault."""

from __future__ import annotations

from typing import Any


class PmmrecError(Exception):
    """Base class of every error pmmrec raises on bad input."""


class ArtefactError(PmmrecError):
    """A component or model folder is missing, malformed or does not match its code."""


class ReferenceResolutionError(PmmrecError):
    """A component reference (hub:, hf:// or a path) cannot be parsed or resolved."""


class AssemblyError(PmmrecError):
    """Components cannot be combined into one model."""


class DatasetError(PmmrecError):
    """A dataset file is malformed; the message names the file and line."""


class ConfigError(PmmrecError):
    """A configuration value or file is invalid."""


class UsageError(ConfigError):
    """Arguments that contradict each other (e.g. both --model and --baseline); the command line exits with 2."""


class Interrupted(PmmrecError):
    """A run stopped by a signal after saving what it needs to continue; the command line exits with 130."""


class PmmrecWarning(UserWarning):
    """Something the user should know that does not stop the work; the command line prints it as one line."""


def describe_validation_error(exc: Any) -> str:
    """A pydantic ValidationError on one line: `field: problem; field: problem` (the CLI prints one line)."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ())) or "config"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(problems) or str(exc)
