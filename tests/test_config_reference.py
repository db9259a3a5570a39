"""The configuration reference: one home per setting (the models), docs/configuration.md generated from it."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field

from proxy import Settings
from proxy.cli import main
from proxy.cli.reference import reference
from proxy.config import CoreSettings
from proxy.config.reference import Section, render, render_section, rows, undocumented
from proxy.loader import BUILTIN_PLUGINS, build_plugin_manager, load_object

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "configuration.md"
REGENERATE = "floodgate config reference --no-entry-points --output docs/configuration.md"


def builtin_settings_models() -> dict[str, type[Settings]]:
    return {ref: load_object(ref).settings_model for ref in BUILTIN_PLUGINS}


def test_configuration_md_is_what_the_generator_makes():
    text, errors = reference()
    assert errors == []
    assert REFERENCE.read_text(encoding="utf-8") == text, f"docs/configuration.md is out of date: run {REGENERATE}"


def test_every_setting_has_a_docstring():
    missing = [f"{path}" for path in undocumented(CoreSettings)]
    for ref, model in builtin_settings_models().items():
        missing += [f"{ref}: {path}" for path in undocumented(model)]
        assert model.__doc__ and model.__doc__.strip(), f"{ref}: its settings model says what the block is for"
    assert missing == []
    assert all(field.description for field in CoreSettings.model_fields.values())


class _Inner(Settings):
    """Inner."""

    size: Annotated[int, Field(gt=0, le=9)] = 3
    """How big."""
    tags: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=2)
    """Tags."""


class _Sample(Settings):
    """A sample block."""

    name: str
    """Its | name."""
    mode: Literal["a", "b"] = "a"
    """Which."""
    inner: _Inner = _Inner()
    """One inner."""
    items: list[_Inner] = []
    """Many."""
    by_name: dict[str, _Inner] | None = None
    """Some by name."""
    global_: float | None = Field(None, alias="global")
    undocumented: bool = True


def test_rows_walk_nested_models_lists_and_maps():
    found = {row.key: row for row in rows(_Sample)}
    assert list(found) == ["name", "mode", "inner", "inner.size", "inner.tags", "items", "items[].size",
                           "items[].tags", "by_name", "by_name.<name>.size", "by_name.<name>.tags", "global",
                           "undocumented"]
    assert (found["name"].type, found["name"].default) == ("string", "required")
    assert (found["mode"].type, found["mode"].default) == ("`a` | `b`", "`a`")
    assert (found["inner.size"].type, found["inner.size"].default, found["inner.size"].doc) == (
        "integer (> 0, ≤ 9)", "`3`", "How big.")
    assert (found["items"].type, found["items"].default) == ("list of object", "`[]`")
    assert (found["by_name"].type, found["by_name"].default) == ("map of object or null", "—")
    assert found["global"].type == "number or null"
    assert found["inner.tags"].type == "list of string (at least 2 long, each not empty) or null"


def test_the_docstring_check_names_each_undocumented_key():
    assert undocumented(_Sample) == ["global", "undocumented"]
    assert undocumented(_Sample, "plugins.sample.") == ["plugins.sample.global", "plugins.sample.undocumented"]


def test_a_section_is_a_table_with_escaped_cells():
    text = render_section(Section("plugins.sample", "A sample block.", _Sample))
    assert text.startswith("## `plugins.sample`\n\nA sample block.\n\n| key | type | default | meaning |")
    assert "| `name` | string | required | Its \\| name. |" in text
    assert "| `undocumented` | boolean | `true` |  |" in text
    assert "| `mode` | `a` \\| `b` | `a` | Which. |" in text
    plain = render_section(Section("aliases", "Names.", dict[str, str], "`{}`"))
    assert plain.endswith("Type: map of string. Default: `{}`.\n")


def test_the_generated_page_fails_the_check_when_a_model_changes():
    """What the first test would see after a docstring edit without regenerating."""
    sections = [Section("plugins.sample", "A sample block.", _Sample)]
    before = render(sections)

    class _Changed(_Sample):
        extra: int = 1
        """New."""

    assert render([Section("plugins.sample", "A sample block.", _Changed)]) != before


def test_cli_documents_a_users_plugin(tmp_path, capsys):
    out = tmp_path / "reference.md"
    assert main(["config", "reference", "--no-entry-points", "--plugin", "examples.coupon", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.index("## `server`") < text.index("## `plugins.auth`") < text.index("## `plugins.coupon`")
    assert "| `min_total` | number | `1.0` | Totals below this are left to the model. |" in text
    assert main(["config", "reference", "--no-entry-points"]) == 0
    assert capsys.readouterr().out == REFERENCE.read_text(encoding="utf-8")


def test_cli_refuses_a_plugin_it_cannot_load(capsys):
    assert main(["config", "reference", "--no-entry-points", "--plugin", "no_such_module_here"]) == 1
    assert "cannot load plugin 'no_such_module_here'" in capsys.readouterr().err


def test_a_settings_model_that_is_no_model_is_a_load_error():
    class Bad:
        name = "bad"
        settings_model = {"x": 1}

    _, _, errors = build_plugin_manager(core=[], builtins=(), entry_points=False, extra=[Bad()])
    assert [str(e) for e in errors] == ["plugins.bad: plugin 'bad': settings_model must be a pydantic model "
                                        "class (a proxy.Settings), not {'x': 1}"]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.M):
        text = heading.strip().lower()
        text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
        found.add(text.replace(" ", "-"))
    return found


@pytest.mark.parametrize(("source", "target"), [("README.md", "docs/configuration.md"),
                                                ("docs/configuration.md", "README.md")])
def test_links_between_readme_and_reference_land_on_headings(source, target):
    text = (ROOT / source).read_text(encoding="utf-8")
    name = Path(target).name
    links = re.findall(rf"\]\((?:\.\./|docs/)?{re.escape(name)}#([^)]+)\)", text)
    assert links, f"{source} links to {target}"
    anchors = _anchors((ROOT / target).read_text(encoding="utf-8"))
    assert sorted(set(links) - anchors) == []
