"""A new HTTP endpoint is a route in serving/routes.py and the look-up it serves in serving/view.py (issue 23;
docs/architecture.md, *Where to add things*).

The test copies the package, adds `GET /added-items` (the items added live, newest first) in exactly those two files:
a response body and a route on the `reads` router in routes.py, a `CatalogueView.added_items` method in view.py, and
runs the copy in a subprocess: the route answers, takes its dependencies (the service, the API key of protected
reads) from its router, checks its query parameter, and the OpenAPI spec lists it. Nothing else registers it.
"""

from __future__ import annotations

from pathlib import Path

from package_copy import changed_files, copy_package, insert_before, run_in_copy

ROUTE = '''

class AddedItems(BaseModel):
    """The items added while a server ran."""

    items: list[ItemSummary] = Field(description="Newest first.")


@reads.get("/added-items", response_model=AddedItems, responses=error_responses(422), summary="Items added live")
def added_items(service: ServiceDep, limit: ResultLimit = 20) -> dict[str, Any]:
    return {"items": service.view.added_items(limit)}
'''

VIEW_METHOD = '''
    def added_items(self, limit: int = 20) -> list[dict[str, Any]]:
        """Summaries of the items added live, newest first."""
        added = [index for index in range(self.catalogue.snapshot().count, 0, -1) if self.catalogue.ids[index - 1] in self.catalogue.added]
        return [self.summary(index) for index in added[:limit]]

'''

SCRIPT = """
import json, sys
from pathlib import Path

from fastapi.testclient import TestClient

import pmmrec
import tiny
from pmmrec.data import load_dataset
from pmmrec.serving import ServeOptions, build_service, create_app

root = Path(sys.argv[1])
data = load_dataset(tiny.write_tiny_dataset(root / "data"))
service = build_service(tiny.text_only_model(), data, ServeOptions(protect_reads=True))
client = TestClient(create_app(service=service, api_key="secret"))
key = {"X-API-Key": "secret"}
facts = {"package": pmmrec.__file__}
facts["before"] = client.get("/added-items", headers=key).json()
for item in ("new-a", "new-b"):
    assert client.post("/items", json={"item_id": item, "text": "a new " + item}, headers=key).status_code == 201
facts["after"] = client.get("/added-items", params={"limit": 5}, headers=key).json()
facts["no_key"] = client.get("/added-items").status_code
facts["bad_limit"] = client.get("/added-items", params={"limit": 0}, headers=key).status_code
operation = client.get("/openapi.json").json()["paths"]["/added-items"]["get"]
facts["spec"] = {"summary": operation["summary"], "responses": sorted(operation["responses"])}
print("FACTS " + json.dumps(facts))
"""


def endpoint_tree(root: Path) -> Path:
    """A copy of the package with GET /added-items added; returns the folder to put on the path."""
    tree = copy_package(root)
    insert_before(tree / "pmmrec" / "serving" / "routes.py", "\n\n# ---- public, continued", ROUTE)
    insert_before(tree / "pmmrec" / "serving" / "view.py", "    def image_png(", VIEW_METHOD.lstrip("\n"))
    return tree


def test_a_new_endpoint_is_a_route_and_its_look_up(tmp_path: Path) -> None:
    tree = endpoint_tree(tmp_path)
    assert changed_files(tree) == ["pmmrec/serving/routes.py", "pmmrec/serving/view.py"]
    facts = run_in_copy(tree, SCRIPT, tmp_path, timeout=600)
    assert facts["before"] == {"items": []}
    assert [item["item_id"] for item in facts["after"]["items"]] == ["new-b", "new-a"]
    assert all(item["added"] for item in facts["after"]["items"])
    assert facts["no_key"] == 401 and facts["bad_limit"] == 422  # the router's key, the shared parameter type
    assert facts["spec"] == {"summary": "Items added live", "responses": ["200", "401", "422"]}
