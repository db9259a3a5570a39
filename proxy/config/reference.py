"""The configuration reference (``docs/configuration.md``), rendered from the settings models.

The models are the one home of every setting's documentation: its type and default come
from the model, its meaning from the field's attribute docstring (``Settings`` sets
``use_attribute_docstrings``). A section is a block of ``config.yaml`` — a core section
(:class:`CoreSettings`' fields) or ``plugins.<name>``, whose model a plugin declares as
its ``settings_model`` attribute — and becomes a table of key paths relative to it
(``timeouts.connect``, ``rules[].name``, ``<name>.base_url``), walking nested models,
lists of models and maps of models.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeGuard, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from .schema import CoreSettings

#: What stands for a map's key in a key path (``upstreams.<name>.base_url``).
ANY_NAME = "<name>"

HEADER = """\
# Configuration reference

<!-- Generated from the settings models: do not edit. Regenerate with
     floodgate config reference --no-entry-points --output docs/configuration.md -->

Every key `config.yaml` accepts, with its type, its default and what it means: the core
sections first, then each built-in plugin's `plugins.<name>` block. This page is generated
from the pydantic models that validate the file (a field's meaning is its docstring), so it
cannot drift from them: change a model, then regenerate it with
`floodgate config reference --no-entry-points --output docs/configuration.md`
(a test fails while it is out of date). How the pieces behave together, with examples, is
in the [README](../README.md#configuration); `floodgate config reference` on an installation
also documents the plugins installed there (and `--plugin REF` any other).

Key paths are relative to their section: `a.b` is a key of a mapping, `a[]` an item of a
list, `<name>` a name you choose. "—" as a default: the key is unset (see its meaning).
"""


@dataclass(frozen=True)
class Row:
    """One key of a section: its path (relative to the section), type, default and meaning."""

    key: str
    type: str
    default: str
    doc: str


@dataclass(frozen=True)
class Section:
    """One block of ``config.yaml``: its path, what it is, and the type it is validated as."""

    path: str
    doc: str
    annotation: Any
    default: str = "required"


def _parts(annotation: Any) -> tuple[Any, list[Any]]:
    """``annotation`` without ``Annotated``, and the constraints it carried."""
    constraints: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        for item in extra:
            constraints.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return annotation, constraints


def _arms(annotation: Any) -> list[Any]:
    return list(get_args(annotation)) if get_origin(annotation) in (Union, types.UnionType) else [annotation]


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


_BOUNDS = ((at.Gt, "gt", ">"), (at.Ge, "ge", "≥"), (at.Lt, "lt", "<"), (at.Le, "le", "≤"))


def _constraint(item: Any) -> str | None:
    for kind, attr, sign in _BOUNDS:
        if isinstance(item, kind):
            return f"{sign} {getattr(item, attr)}"
    if isinstance(item, at.MinLen):
        return "not empty" if item.min_length == 1 else f"at least {item.min_length} long"
    if isinstance(item, at.MaxLen):
        return f"at most {item.max_length} long"
    return None  # a pattern: the meaning says what is allowed


_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", SecretStr: "secret string"}


def _describe(annotation: Any) -> tuple[str, list[str]]:
    """A type without ``None``: its name, and its constraints (an item's prefixed ``each``)."""
    annotation, inner = _parts(annotation)
    bounds = [c for c in map(_constraint, inner) if c]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(arm) for arm in args), bounds
    if origin is Literal:
        return " | ".join(f"`{value}`" for value in args), bounds
    if origin in (list, tuple, dict):
        item, each = _describe(args[-1] if origin is dict else args[0])
        text = f"{'map' if origin is dict else 'list'} of {item}"
        return text, bounds + ([f"each {', '.join(each)}"] if each else [])
    if _is_model(annotation):
        return "object", bounds
    return _NAMES.get(annotation, "any"), bounds


def type_name(annotation: Any, constraints: Iterable[Any] = ()) -> str:
    """How the reference writes a type: ``number (> 0) or null``, ``list of string (each not empty)``;
    ``constraints`` (a field's own) bound what is not ``null``."""
    annotation, inner = _parts(annotation)
    own = [c for c in map(_constraint, [*inner, *constraints]) if c]
    names = []
    for arm in _arms(annotation):
        if arm is type(None):
            continue
        text, bounds = _describe(arm)
        bounds = own + bounds
        names.append(f"{text} ({', '.join(bounds)})" if bounds else text)
    return " or ".join(names) + (" or null" if type(None) in _arms(annotation) else "")


def _value(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(include=value.model_fields_set, by_alias=True)
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def default_text(field: FieldInfo) -> str:
    """A field's default as the reference shows it (``required``, ``—`` for unset)."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    return "—" if value is None else _value(value)


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def _children(annotation: Any, key: str) -> Iterator[Row]:
    """The rows inside a value of type ``annotation`` found at ``key``."""
    annotation, _ = _parts(annotation)
    for arm in _arms(annotation):
        arm, _ = _parts(arm)
        origin, args = get_origin(arm), get_args(arm)
        if _is_model(arm):
            yield from rows(arm, f"{key}." if key else "")
        elif origin in (list, tuple):
            yield from _children(args[0], f"{key}[]")
        elif origin is dict:
            yield from _children(args[1], f"{key}.{ANY_NAME}" if key else ANY_NAME)


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[Row]:
    """Every key of ``model`` and of the models inside it, depth first, in declaration order."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        yield Row(key, type_name(field.annotation, field.metadata), default_text(field), field.description or "")
        yield from _children(field.annotation, key)


def undocumented(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Key paths under ``model`` whose field has no docstring."""
    return [row.key for row in rows(model, prefix) if not row.doc.strip()]


def core_sections() -> list[Section]:
    """The core's sections: one per top-level key of ``config.yaml``."""
    return [Section(field.alias or name, field.description or "", field.annotation, default_text(field))
            for name, field in CoreSettings.model_fields.items()]


def plugin_section(name: str, model: type[BaseModel]) -> Section:
    """``plugins.<name>``, validated by ``model`` (its class docstring says what the block is)."""
    return Section(f"plugins.{name}", model.__doc__ or "", model, "`{}`")


def settings_models(plugins: Iterable[tuple[str, Any]]) -> list[tuple[str, type[BaseModel]]]:
    """The ``(name, settings_model)`` of each plugin object that declares one, in order."""
    found = []
    for name, plugin in plugins:
        model = getattr(plugin, "settings_model", None)
        if _is_model(model):
            found.append((name, model))
    return found


def render_section(section: Section) -> str:
    """A section as markdown: its heading, what it is, and its keys' table."""
    lines = [f"## `{section.path}`", "", _cell(section.doc), ""]
    table = list(_children(section.annotation, ""))
    if not table:
        return "\n".join([*lines, f"Type: {type_name(section.annotation)}. Default: {section.default}.", ""])
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{r.key}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.doc)} |" for r in table]
    return "\n".join([*lines, ""])


def render(sections: Sequence[Section], header: str = HEADER) -> str:
    """The whole reference: ``header``, then every section."""
    return "\n".join([header, *map(render_section, sections)])
