"""Request bodies are UTF-8 JSON objects with distinct keys, checked before the framework parses them.

FastAPI hands a body to `json.loads`, which guesses UTF-16 and UTF-32 from the bytes and keeps the last of two equal
keys; the API promises UTF-8 JSON (docs/serving.md), so anything else is refused here with 400 and one line saying
why, and the body the routes see is exactly the one that was checked.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from pmmrec.jsonfile import MAX_JSON_DEPTH, DuplicateKeyError, json_depth, unique_object


class JsonBodyCheck:
    """ASGI middleware: 400 for a request body that is not UTF-8, or (declared JSON) nested too deeply or holding a key
    twice; malformed JSON is left to the route, which answers 422 naming the position."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = body_problem(body, _content_type(scope))
        if problem is not None:
            await JSONResponse({"detail": problem}, status_code=400)(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _content_type(scope: dict[str, Any]) -> str:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return ""


def body_problem(body: bytes, content_type: str) -> str | None:
    """Why a request body is refused (one line), or None when it is fine or not declared JSON."""
    if not body:
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"request body is not UTF-8 (byte {exc.start}); send UTF-8 JSON"
    if content_type and not (content_type == "application/json" or content_type.endswith("+json")):
        return None  # not JSON: the route refuses it (422) as it does any body of the wrong kind
    if json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        return f"request body: JSON nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        json.loads(text.removeprefix("\ufeff"), object_pairs_hook=unique_object)
    except DuplicateKeyError as exc:
        return f"request body: key {exc.args[0]!r} appears twice in one object"
    except (ValueError, RecursionError):  # not JSON: the route answers 422 naming the position, as for any bad JSON
        return None
    return None
