"""Regenerate ``schemas.json``: the OpenAI schemas the tests validate Floodgate's own bodies against.

The tests need nothing outside the repository, so they read this trimmed copy of
OpenAI's published OpenAPI description, not the whole spec. It holds the root
schemas listed in :data:`ROOTS` and every component they reference, with OpenAPI
3.0's ``nullable: true`` turned into JSON Schema's ``null`` type.

Source: ``openapi.yml`` as shipped in openai-python v3.3.1
(``api_reference/openapi.transformed.yml``, commit 753ab5c1, Apache-2.0).

Usage: ``python tests/openai_schemas/make.py PATH/TO/openapi.yml``
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

#: The schemas the tests validate against (add one here, then rerun).
ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ErrorResponse",
    "ListModelsResponse",
    "Model",
)
SOURCE = "openai-python v3.3.1, api_reference/openapi.transformed.yml (commit 753ab5c1), Apache-2.0"
HERE = Path(__file__).resolve().parent


def nullable_to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` (still used in the spec) as JSON Schema ``null``."""
    if isinstance(node, list):
        return [nullable_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: nullable_to_json_schema(v) for k, v in node.items()}
    if out.pop("nullable", False):
        if "type" in out:
            kinds = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*kinds, "null"]
        elif "$ref" in out or "allOf" in out or "anyOf" in out or "oneOf" in out:
            out = {"anyOf": [out, {"type": "null"}]}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def referenced(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            referenced(value, found)
    elif isinstance(node, list):
        for value in node:
            referenced(value, found)


def trim(schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """The roots and the transitive closure of their references."""
    keep: dict[str, Any] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep[name] = schemas[name]
        found: set[str] = set()
        referenced(schemas[name], found)
        todo.extend(found - keep.keys())
    return dict(sorted(keep.items()))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    raw = Path(argv[1]).read_bytes()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load(raw, Loader=loader)
    schemas = trim(spec["components"]["schemas"], ROOTS)
    document = {
        "source": SOURCE,
        "openapi_version": spec.get("info", {}).get("version"),
        "md5": hashlib.md5(raw).hexdigest(),
        "roots": list(ROOTS),
        "components": {"schemas": nullable_to_json_schema(schemas)},
    }
    (HERE / "schemas.json").write_text(json.dumps(document, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {len(schemas)} schemas to {HERE / 'schemas.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
