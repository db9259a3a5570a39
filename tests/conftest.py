"""Shared test helpers. The gateway fixtures (``floodgate``, ``mock_upstream``) come
from ``proxy.testing``, the pytest plugin Floodgate ships for plugin authors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

#: OpenAI's schemas the tests use, trimmed from its OpenAPI description by
#: ``tests/openai_schemas/make.py`` (source and version are recorded in the file).
SCHEMAS = Path(__file__).resolve().parent / "openai_schemas" / "schemas.json"


@pytest.fixture(scope="session")
def openai_schema() -> Any:
    """``validate(schema_name, obj)`` against OpenAI's own OpenAPI description."""
    import jsonschema

    components = json.loads(SCHEMAS.read_text(encoding="utf-8"))["components"]

    def validate(name: str, obj: Any) -> None:
        if name not in components["schemas"]:
            pytest.fail(f"{name} is not in {SCHEMAS.name}: add it to ROOTS in make.py and rerun", pytrace=False)
        schema = {"$ref": f"#/components/schemas/{name}", "components": components}
        jsonschema.Draft202012Validator(schema).validate(obj)

    return validate
