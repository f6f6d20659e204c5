"""Reading JSON files from disk with bounds: size and nesting are checked before parsing.

Every JSON file pmmrec reads (config.json, checksums.json, pmmrec.json, item_ids.json, dataset.json,
progress.json, data_split.json, tokenizer files) goes through `read_json_file`, so a hostile file (100,000 nested
brackets, gigabytes, a FIFO) is one error line naming the file instead of a RecursionError, an exhausted memory
or a hang. Duplicate keys (which `json.loads` resolves silently, the last one winning) and the non-standard
constants NaN and Infinity are refused, naming the key.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from pmmrec.errors import PmmrecError, describe_validation_error
from pmmrec.fileio import open_regular_file

MAX_JSON_DEPTH = 64  # pmmrec's own files nest at most 6 levels; backbone configs a few more
DEFAULT_MAX_BYTES = 64 << 20
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """The deepest bracket nesting of a JSON text (strings ignored); stops counting once past `limit`."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
    return deepest


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice (its argument is the key)."""


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a JSON object whose keys are all different (json.loads would keep the last silently)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (only finite numbers are)")


def parse_json_text(
    text: str, label: str, *, error: type[PmmrecError] = PmmrecError, max_depth: int = MAX_JSON_DEPTH
) -> Any:
    """json.loads with the nesting bounded first; every failure is `error` naming `label` (and the line or key)."""
    if json_depth(text, max_depth) > max_depth:
        raise error(f"{label}: JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, object_pairs_hook=unique_object, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{label} line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except DuplicateKeyError as exc:
        raise error(f"{label}: key {exc.args[0]!r} appears twice in one object") from None
    except ValueError as exc:  # a NaN / Infinity constant, or an integer literal too long to convert
        raise error(f"{label}: invalid JSON ({exc})") from None
    except RecursionError:  # unreachable after the depth check; kept so no input can ever raise it
        raise error(f"{label}: JSON nested too deeply") from None


def read_json_file(
    path: str | os.PathLike[str],
    *,
    error: type[PmmrecError] = PmmrecError,
    label: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse a regular UTF-8 JSON file (a leading BOM is accepted) of at most `max_bytes`, nested at most `max_depth`."""
    label = label or str(path)
    with open_regular_file(path, error) as handle:
        try:
            raw = handle.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{label}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise error(f"{label}: larger than {max_bytes:,} bytes")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{label}: invalid UTF-8 (byte {exc.start})") from None
    return parse_json_text(text, label, error=error, max_depth=max_depth)


def validate_strictly(
    schema: type[BaseModel], payload: Any, label: str, *, error: type[PmmrecError] = PmmrecError
) -> Any:
    """Validate parsed JSON against `schema` in pydantic's strict JSON mode: "32" is not an int, 1 is not true."""
    try:
        return schema.model_validate_json(json.dumps(payload), strict=True)
    except ValidationError as exc:
        raise error(f"{label}: {describe_validation_error(exc)}") from None
