"""YAML loading that remembers where every key came from.

PyYAML's ``safe_load`` forgets line numbers and silently keeps the last of two
duplicate keys. This loader walks the composed node tree instead, so that every
configuration error can name its line, duplicates are errors, and
``${ENV_VAR}`` / ``${ENV_VAR:-default}`` are substituted per scalar (a secret
containing YAML syntax cannot change the document's structure).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from ..errors import ConfigError, ConfigErrors

Path = tuple[str | int, ...]

_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(text: str, env: Mapping[str, str], path: str, line: int | None,
                   source: str) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}``; ``$$`` is a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(path, f"environment variable {name} is not set",
                                  line=line, source=source)
            return default
        return value

    return _ENV_RE.sub(replace, text) if "$" in text else text


class LocatedYaml:
    """A parsed YAML document plus the line of every key path."""

    def __init__(self, data: Any, lines: dict[Path, int], source: str) -> None:
        self.data = data
        self.lines = lines
        self.source = source

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, or of its closest ancestor that has one."""
        while path:
            line = self.lines.get(path)
            if line is not None:
                return line
            path = path[:-1]
        return self.lines.get(())


def load_yaml(text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None) -> LocatedYaml:
    env = os.environ if env is None else env
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            raise ConfigErrors([ConfigError("", f"invalid YAML: {exc.problem}",
                                            line=mark.line + 1 if mark else None, source=source)]) from None
        lines: dict[Path, int] = {}
        errors: list[ConfigError] = []
        if node is None:
            return LocatedYaml({}, lines, source)
        lines[()] = node.start_mark.line + 1

        def dotted(path: Path) -> str:
            return ".".join(str(p) for p in path)

        def walk(node: yaml.Node, path: Path) -> Any:
            if isinstance(node, yaml.MappingNode):
                loader.flatten_mapping(node)  # YAML merge keys (<<)
                result: dict[Any, Any] = {}
                for key_node, value_node in node.value:
                    key = loader.construct_object(key_node, deep=True)
                    key_path = (*path, key)
                    line = key_node.start_mark.line + 1
                    if key in result:
                        errors.append(ConfigError(dotted(key_path), "duplicate key", line=line, source=source))
                        continue
                    lines[key_path] = line
                    result[key] = walk(value_node, key_path)
                return result
            if isinstance(node, yaml.SequenceNode):
                items = []
                for index, item in enumerate(node.value):
                    lines[(*path, index)] = item.start_mark.line + 1
                    items.append(walk(item, (*path, index)))
                return items
            value = loader.construct_object(node, deep=True)
            if isinstance(value, str):
                try:
                    value = substitute_env(value, env, dotted(path), node.start_mark.line + 1, source)
                except ConfigError as exc:
                    errors.append(exc)
            return value

        data = walk(node, ())
        if errors:
            raise ConfigErrors(errors)
        return LocatedYaml(data, lines, source)
    finally:
        loader.dispose()
