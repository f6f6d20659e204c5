"""Property-based API tests: schemathesis generates requests from the server's own OpenAPI spec, valid and invalid
ones, for every operation; no response may be a 5xx, and every response must match the spec (status code, content
type, body schema).

Examples per operation and mode are bounded (SCHEMATHESIS_EXAMPLES, default 30) to keep the suite fast. The cases
are drawn with Hypothesis from `APIOperation.as_strategy` (schemathesis' own pytest loader does not run on pytest 9).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tiny import text_only_model as text_model
from tiny import write_tiny_dataset

from pmmrec.data import load_dataset
from pmmrec.serving import create_app

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "30"))
OPERATIONS = [  # every operation of the spec (the test below checks the list is complete)
    "GET /health",
    "POST /recommend",
    "POST /items",
    "GET /items",
    "GET /items/{item_id}",
    "GET /images/{item_id}",
    "GET /users",
    "GET /users/{user_id}",
    "GET /metrics",
]
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PMMREC_CACHE", str(tmp_path_factory.mktemp("pmmrec-cache")))
        data = write_tiny_dataset(tmp_path_factory.mktemp("schemathesis") / "data", preset="serving")
        return create_app(text_model(), load_dataset(data))


def test_every_operation_of_the_spec_is_fuzzed(app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    assert {result.ok().label for result in schema.get_all_operations()} == set(OPERATIONS)


CASES = [(label, GenerationMode.POSITIVE) for label in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE)
    for label in OPERATIONS
    if label not in ("GET /health", "GET /metrics")  # no input to make invalid
]


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{label} {mode.value}" for label, mode in CASES])
def test_no_generated_request_breaks_the_server(app: Any, label: str, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    strategy = schema.find_operation_by_label(label).as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call()
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:500]}"
        )
        case.validate_response(response, checks=CHECKS)

    run()
