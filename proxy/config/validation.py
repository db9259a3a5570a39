"""pydantic validation errors as located :class:`ConfigError`\\ s.

``config.yaml:14 upstreams.main.timeouts.total: must be greater than 0``, with a
"did you mean" for unknown keys.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, ConfigErrors
from .source import LocatedYaml, Path

T = TypeVar("T", bound=BaseModel)


def validate(model: type[T], data: Any, located: LocatedYaml, prefix: Path) -> T:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors([_located_error(model, err, located, prefix) for err in exc.errors()]) from None


#: Keys whose values are secrets (or may hold them): config errors name the path, never the value.
SECRET_KEYS = frozenset({"api_key", "key", "admin_key", "headers", "password", "secret", "token", "url",
                         "base_url", "dsn"})


def is_secret(path: Path) -> bool:
    """Whether a config value at ``path`` may be a secret (URLs may carry credentials)."""
    return any(isinstance(part, str) and (part in SECRET_KEYS or part.endswith(("_key", "_token", "_secret")))
               for part in path)


def _located_error(model: type[BaseModel], err: Any, located: LocatedYaml, prefix: Path) -> ConfigError:
    loc: Path = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = (*prefix, *loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
        known = _known_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1) if known else []
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif known:
            message += f" (expected one of: {', '.join(known)})"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = err["msg"].replace("Input should be", "must be").replace("Value error, ", "")
        if kind in ("string_type", "int_type", "float_type", "bool_type", "dict_type", "list_type",
                    "int_parsing", "float_parsing", "bool_parsing", "model_type"):
            given = err.get("input")
            # Never echo a value at a secret path (a key written as a list still holds the key).
            message += f", got {type(given).__name__}" if is_secret(path) else f", got {given!r}"[:80]
    return ConfigError(".".join(map(str, path)), message, line=located.line_of(path), source=located.source)


def _known_keys(model: type[BaseModel], loc: Path) -> list[str]:
    """The field names of the model found at ``loc`` inside ``model``."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) in (dict, Mapping):
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation
