"""The public HTTP API is the released one: the OpenAPI document the app serves equals the
one committed in tests/data/openapi.json (taken from the release before the issue-16 layout
change). A deliberate API change updates that file in the same commit (regenerate it with
`python -m tests.unit.test_openapi_stable > tests/data/openapi.json`)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from serve_app.api import create_api
from tests.helpers import local_services

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "openapi.json"


def served_openapi(tmp_path: Path) -> dict[str, Any]:
    """The document, with each operation's parameters in a fixed order (FastAPI lists a
    dependency's parameters before the handler's: the order carries no meaning)."""
    spec = create_api(local_services(tmp_path)).openapi()
    for path in spec["paths"].values():
        for operation in path.values():
            if isinstance(operation, dict) and "parameters" in operation:
                operation["parameters"].sort(key=lambda p: (p["in"], p["name"]))
    return json.loads(json.dumps(spec))  # tuples → lists, as in the file


def test_the_served_openapi_document_is_the_released_one(tmp_path: Path) -> None:
    served = served_openapi(tmp_path)
    golden = json.loads(GOLDEN.read_text())
    assert sorted(served["paths"]) == sorted(golden["paths"])
    for path, operations in golden["paths"].items():
        assert served["paths"][path] == operations, path
    assert served["components"] == golden["components"]
    assert served == golden


if __name__ == "__main__":
    json.dump(served_openapi(Path(tempfile.mkdtemp())), sys.stdout, indent=1, sort_keys=True)
