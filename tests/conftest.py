"""Shared test helpers. The gateway fixtures (``floodgate``, ``mock_upstream``) come
from ``proxy.testing``, the pytest plugin Floodgate ships for plugin authors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

SPEC = Path(os.environ.get("OPENAI_SPEC", Path(__file__).resolve().parents[2] / "shared/openai-spec/openapi.yml"))


@pytest.fixture(scope="session")
def openai_schema() -> Any:
    """``validate(schema_name, obj)`` against OpenAI's own OpenAPI description."""
    import jsonschema

    if not SPEC.exists():  # CI checks out shared/ beside the repository: a missing spec is an error
        pytest.fail(f"OpenAI's OpenAPI description not found at {SPEC} (set OPENAI_SPEC)", pytrace=False)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC.open("rb") as fh:
        components = yaml.load(fh, Loader=loader)["components"]

    components = _nullable_to_json_schema(components)

    def validate(name: str, obj: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": components}
        jsonschema.Draft202012Validator(schema).validate(obj)

    return validate


def _nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` (still used in the spec) as JSON Schema ``null``."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_json_schema(v) for k, v in node.items()}
    if out.pop("nullable", False):
        if "type" in out:
            kinds = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*kinds, "null"]
        elif "$ref" in out or "allOf" in out or "anyOf" in out or "oneOf" in out:
            out = {"anyOf": [out, {"type": "null"}]}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out
