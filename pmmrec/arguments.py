"""The numeric arguments of pmmrec's commands and API functions: their types and ranges, checked at the edge.

`pmmrec.api` checks what it is given here before any work starts, so the command line and Python callers get the same
one-line refusal ("--k: must be at least 1, got 0"), a boolean is never taken for a number, and no nonsense value
(an image side of 0, a window of a billion items) reaches the code below. One table, one rule per argument.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from pmmrec.errors import ConfigError

MAX_IMAGE_SIDE = 2048  # the largest image side an encoder reads (components' MAX_IMAGE_SIZE)
MAX_SEQUENCE = 4096  # the longest history a user encoder reads (its max_length bound)

RULES: dict[str, tuple[str, Any]] = {
    "k": ("--k", Annotated[int, Field(ge=1, le=100_000)]),
    "ks": ("--k", Annotated[list[Annotated[int, Field(ge=1, le=100_000)]], Field(min_length=1, max_length=100)]),
    "size": ("--size", Annotated[int, Field(ge=8, le=MAX_IMAGE_SIDE)]),
    "max_length": ("--max-length", Annotated[int, Field(ge=1, le=MAX_SEQUENCE)]),
    "min_length": ("--min-length", Annotated[int, Field(ge=3, le=1_000_000)]),
    "max_history": ("--max-history", Annotated[int, Field(ge=3, le=1_000_000_000)]),
    "new_items": ("--new-items", Annotated[float, Field(ge=0.0, lt=1.0)]),
    "port": ("--port", Annotated[int, Field(ge=1, le=65_535)]),
    "threads": ("--threads", Annotated[int, Field(ge=1, le=1024)]),
}
_ADAPTERS = {name: TypeAdapter(rule) for name, (_, rule) in RULES.items()}


def check_arguments(**values: Any) -> None:
    """Refuse (ConfigError, one line naming the option) any given value outside its rule; None means "not given"."""
    for name, value in values.items():
        if value is None:
            continue
        flag = RULES[name][0]
        try:
            _ADAPTERS[name].validate_python(list(value) if name == "ks" else value, strict=True)
        except ValidationError as exc:
            error = exc.errors()[0]
            message = str(error.get("msg", "invalid")).replace("Input should be", "must be")
            raise ConfigError(f"{flag}: {message}, got {error.get('input', value)!r}") from None
        except TypeError:
            raise ConfigError(f"{flag}: expected a number, got {value!r}") from None
