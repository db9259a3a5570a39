"""A JSON value valid against a JSON schema, as a model following a structured-output or
tool schema would write it.

Covers the schema keywords OpenAI's structured outputs and tool parameters use: ``type``
(one or a list), ``properties``/``required``/``additionalProperties``, ``items``/
``prefixItems``/``minItems``/``maxItems``/``uniqueItems``, ``enum``, ``const``, ``anyOf``/
``oneOf``/``allOf``, ``$ref`` into ``$defs``/``definitions`` (recursion bounded), string
``minLength``/``maxLength``/``format``/``pattern``, number bounds and ``multipleOf``.
Every property is filled in (as strict mode requires). Choices come from ``rng``:
the same seed gives the same value; the first free-text string says ``hint``.
"""

from __future__ import annotations

import math
import random
import uuid
from typing import Any

from .regexgen import string_matching

_MAX_DEPTH = 8  # deeper (recursive schemas), optional parts are left out
_WORDS = ("floodgate", "mock", "order", "parcel", "coupon", "订单", "物流", "优惠", "answer", "value")
_FORMATS = {
    "date-time": "2026-11-11T10:00:00Z", "date": "2026-11-11", "time": "10:00:00", "duration": "P1D",
    "email": "customer@example.com", "idn-email": "customer@example.com", "hostname": "example.com",
    "idn-hostname": "example.com", "ipv4": "192.0.2.1", "ipv6": "2001:db8::1", "uri": "https://example.com/a",
    "uri-reference": "/a", "iri": "https://example.com/a", "json-pointer": "/a", "regex": "^a$",
}
_SCALARS = ("string", "integer", "number", "boolean")


class SchemaValues:
    """Values for one schema document (``root`` resolves its ``$ref``\\ s)."""

    def __init__(self, root: Any, rng: random.Random, hint: str = "") -> None:
        self.root = root
        self.rng = rng
        self.hint = hint  # the first free-text string says this (a tool's query: what the user asked)

    def value(self, schema: Any, depth: int = 0) -> Any:
        if schema is True or not isinstance(schema, dict):
            return self._text(0, None)
        if "$ref" in schema:
            return self.value(self._resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.value(self._pick(options, depth), depth + 1)
        if isinstance(schema.get("allOf"), list):
            return self.value(_merge(schema, [self._deref(s) for s in schema["allOf"]]), depth + 1)
        kind = self._type(schema, depth)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return self._number(schema, kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        return None

    # -- kinds -----------------------------------------------------------------
    def _type(self, schema: dict[str, Any], depth: int) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if isinstance(k, str)]
            real = [k for k in kinds if k != "null"]
            if not real or (depth >= _MAX_DEPTH and "null" in kinds):
                return "null"
            return self.rng.choice(real)
        if isinstance(kind, str):
            return kind
        if "properties" in schema or "additionalProperties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        required = set(required) if isinstance(required, list) else set()
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if depth < _MAX_DEPTH or name in required:
                out[name] = self.value(sub, depth + 1)
        extra = schema.get("additionalProperties")
        minimum = schema.get("minProperties")
        while isinstance(minimum, int) and len(out) < minimum and extra is not False:
            out[f"key_{len(out)}"] = self.value(extra if isinstance(extra, dict) else {}, depth + 1)
        return out

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        low = _int(schema, "minItems", 0)
        high = _int(schema, "maxItems", max(low, 2))
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        count = low if depth >= _MAX_DEPTH else self.rng.randint(max(low, min(1, high)), max(low, min(high, 3)))
        count = max(count, min(len(prefix), high))
        items = schema.get("items")
        out: list[Any] = []
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items if isinstance(items, (dict, bool)) else {}
            value = self.value(sub, depth + 1)
            if schema.get("uniqueItems") is True and value in out:
                for _ in range(8):
                    value = self.value(sub, depth + 1)
                    if value not in out:
                        break
                else:
                    if len(out) >= low:
                        break
            out.append(value)
        return out

    def _string(self, schema: dict[str, Any]) -> str:
        low = _int(schema, "minLength", 0)
        high = _int(schema, "maxLength", 0) if "maxLength" in schema else None
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            text = string_matching(pattern, self.rng)
            if text is not None and len(text) >= low and (high is None or len(text) <= high):
                return text
        fmt = schema.get("format")
        if fmt == "uuid":
            return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt]
        return self._text(low, high)

    def _text(self, low: int, high: int | None) -> str:
        text, self.hint = self.hint or f"{self.rng.choice(_WORDS)} {self.rng.choice(_WORDS)}", ""
        if len(text) < low:
            text += "x" * (low - len(text))
        return text if high is None else text[:high]

    def _number(self, schema: dict[str, Any], integer: bool) -> int | float:
        def bound(key: str) -> float | None:
            value = schema.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        low, high = bound("minimum"), bound("maximum")
        ex_low, ex_high = bound("exclusiveMinimum"), bound("exclusiveMaximum")
        step = 1.0 if integer else 0.5
        if ex_low is not None:
            low = max(low if low is not None else ex_low, ex_low + step / 2)
        if ex_high is not None:
            high = min(high if high is not None else ex_high, ex_high - step / 2)
        low = low if low is not None else (high - 100 if high is not None else 0.0)
        high = high if high is not None else low + 100
        multiple = bound("multipleOf")
        if multiple:
            first, last = math.ceil(low / multiple), math.floor(high / multiple)
            value: float = multiple * self.rng.randint(first, max(first, last))
        elif integer:
            value = self.rng.randint(math.ceil(low), max(math.ceil(low), math.floor(high)))
        else:
            value = round(self.rng.uniform(low, high), 2)
            value = min(max(value, low), high)
        return int(value) if integer else value

    # -- references and combinations --------------------------------------------
    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in filter(None, ref[1:].split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, (dict, bool)) else {}

    def _deref(self, schema: Any) -> Any:
        return self._resolve(schema["$ref"]) if isinstance(schema, dict) and "$ref" in schema else schema

    def _pick(self, options: list[Any], depth: int) -> Any:
        """One alternative: past the depth bound the null (or simplest scalar) one, if any."""
        if depth >= _MAX_DEPTH:
            for option in options:
                target = self._deref(option)
                if isinstance(target, dict) and target.get("type") in ("null", *_SCALARS):
                    return target
        return self.rng.choice(options)


def _int(schema: dict[str, Any], key: str, default: int) -> int:
    value = schema.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _merge(schema: dict[str, Any], parts: list[Any]) -> dict[str, Any]:
    """``allOf`` as one schema: properties and required lists united, other keys laid over."""
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in parts:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged
