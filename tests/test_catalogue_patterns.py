"""Catalogue patterns: globs that send any matching model name to their entry, with precedence,
templates, prices (or none), bounded concrete targets, start-up checks and `floodgate check`."""

from __future__ import annotations

import textwrap

import openai
import pytest

from proxy import ConfigErrors, create_app, parse_config
from proxy.cli import main
from proxy.config import config_from_dict
from proxy.config.lookup import ModelLookup
from proxy.config.patterns import Pattern, covers
from proxy.testing import MOCK_MODELS, mock_config

BASE = """\
upstreams:
  main: {base_url: "http://127.0.0.1:9/v1", timeouts: {connect: 2, first_byte: 10, total: 60}}
  other: {base_url: "http://127.0.0.1:10/v1"}
models:
"""


def catalogue(entries: str, aliases: str = "") -> object:
    text = BASE + textwrap.indent(textwrap.dedent(entries), "  ") + (f"aliases:\n{aliases}" if aliases else "")
    return parse_config(text, source="config.yaml", env={})


def errors_of(entries: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        catalogue(entries)
    return [str(e) for e in info.value.errors]


def test_exact_names_win_then_longer_patterns_then_the_first_listed():
    config = catalogue("""\
        gpt-4.1: {upstream: main}
        "gpt-*": {upstream: main, price: {input: 1, output: 2}}
        "gpt-4*": {upstream: other, price: null, timeouts: {first_byte: 3}}
        "*": {upstream: other, price: null}
        "g?t-5": {upstream: other, price: {input: 9}}
    """)
    assert config.patterns == ("gpt-4*", "gpt-*", "g?t-5", "*")
    assert config.catalogue_name("gpt-4.1") == "gpt-4.1"
    assert config.catalogue_name("gpt-4o") == "gpt-4*"
    assert config.catalogue_name("gpt-5") == "gpt-*"  # as long as g?t-5, listed first
    assert config.catalogue_name("gxt-5") == "g?t-5"
    assert config.catalogue_name("claude-x") == "*"
    assert config.resolve("gpt-4o") == "gpt-4o"  # a name a pattern matches means itself
    target = config.target("gpt-4o")
    assert (target.model, target.upstream, target.upstream_model) == ("gpt-4o", "other", "gpt-4o")
    assert config.price("gpt-4.1").input == 0  # exact entries default to zero
    assert config.price("gpt-5").input == 1
    assert config.price("gpt-4o") is None  # unpriced
    assert config.timeouts(target).first_byte == 3  # the pattern's overrides apply to its names
    assert config.timeouts(config.target("claude-x")).first_byte == 60


def test_upstream_model_templates():
    config = catalogue("""\
        "openai/*": {upstream: main, upstream_model: "{1}", price: null}
        "*/*": {upstream: other, upstream_model: "{2}-via-{1} ({name})", price: null}
    """)
    assert config.target("openai/gpt-5").upstream_model == "gpt-5"
    assert config.target("x/y").upstream_model == "y-via-x (x/y)"
    assert config.listed_names("main", "gpt-5") == ["openai/gpt-5"]  # the reverse, for /v1/models
    assert config.listed_names("other", "gpt-5") == []  # "{2}-via-{1}" cannot be reversed
    assert config.resolve("nothing") is None


def test_aliases_and_fallbacks_may_name_what_a_pattern_serves():
    config = catalogue("""\
        deepseek-v3.2: {upstream: main, fallbacks: [gpt-5]}
        "gpt-*": {upstream: main, price: null, fallbacks: [deepseek-v3.2]}
    """, aliases="  newest: gpt-5\n")
    create_app(config, builtins=(), entry_points=False)  # aliases are checked when the app is built
    assert config.resolve("newest") == "gpt-5"
    assert [t.model for t in config.targets_with_fallbacks("gpt-5.1")] == ["gpt-5.1", "deepseek-v3.2"]
    assert [t.model for t in config.targets_with_fallbacks("deepseek-v3.2")] == ["deepseek-v3.2", "gpt-5"]
    # An alias is an exact name: it wins over a pattern that matches it; a route name is never a model.
    config = catalogue('"*": {upstream: main, price: null}\ndeepseek-v3.2: {upstream: main}\n',
                       aliases="  gpt-4o: deepseek-v3.2\n")
    config.check_aliases({"auto"})
    assert (config.resolve("gpt-4o"), config.resolve("auto"), config.resolve("x")) == ("deepseek-v3.2", None, "x")


def test_pattern_entries_are_checked_at_start_up():
    errors = errors_of("""\
        "gpt-*": {upstream: main}
        "x-*": {upstream: main, price: null, upstream_model: "{2}"}
        exact: {upstream: main, upstream_model: "{name}", fallbacks: ["gpt-*", nope]}
    """)
    assert errors == [
        "config.yaml:5 models.gpt-*: a pattern needs a price: dollars per million tokens for every model it "
        "matches, or `price: null` (unpriced: usage recorded, cost unknown)",
        "config.yaml:6 models.x-*.upstream_model: {2} has no '*' to take its text from (this pattern has 1; use "
        "{name} for the whole requested name)",
        "config.yaml:7 models.exact.upstream_model: placeholders ({name}, {1}, ...) are for pattern entries; an "
        "exact entry's upstream_model is the id itself",
        "config.yaml:7 models.exact.fallbacks.0: 'gpt-*' is a pattern; a fallback names one model",
        "config.yaml:7 models.exact.fallbacks.1: unknown model 'nope'",
    ]
    assert errors_of('"gpt-[z-a]": {upstream: main, price: null}\n')[0].startswith(
        "config.yaml:5 models.gpt-[z-a]: invalid pattern: bad character range z-a")


def test_an_alias_cannot_name_a_pattern():
    config = catalogue('"gpt-*": {upstream: main, price: null}\n', aliases='  any-gpt: "gpt-*"\n')
    with pytest.raises(ConfigErrors) as info:
        create_app(config, builtins=(), entry_points=False)
    assert "'gpt-*' is neither a catalogue model nor a route" in str(info.value.errors[0])


def test_check_warns_when_a_pattern_takes_everything_or_never_applies(tmp_path, caplog):
    path = tmp_path / "config.yaml"
    path.write_text(BASE + textwrap.indent(textwrap.dedent("""\
        "gpt-*": {upstream: main, price: null}
        "gpt-?": {upstream: main, price: null}
        "*": {upstream: other, price: null}
    """), "  "))
    with caplog.at_level("WARNING", logger="floodgate.config"):
        assert main(["check", "--config", str(path)]) == 0
    assert caplog.messages == [
        "config.yaml:6 models.gpt-?: shadows nothing: every name it matches is taken by 'gpt-*' (longer, or "
        "listed before it), so it never applies",
        "config.yaml:7 models.*: matches every model name: names no other entry serves, typos included, go to "
        "upstream 'other' instead of a 404 model_not_found",
    ]


@pytest.mark.parametrize(("wider", "narrower", "expected"), [
    ("gpt-*", "gpt-4*", True), ("gpt-4*", "gpt-*", False), ("*", "a?b[cd]*", True), ("a*", "*", False),
    ("?*", "*", False), ("*a*", "*a", True), ("[ab]x", "ax", True), ("[ab]x", "cx", False),
    ("a?", "a[xy]", True), ("a[xy]", "a?", False), ("x*y*z", "x*z", False),
])
def test_covers(wider: str, narrower: str, expected: bool):
    assert covers(wider, narrower) is expected


def test_names_only_patterns_serve_are_cached_with_a_bound():
    config = config_from_dict(mock_config("http://127.0.0.1:9/v1", models={
        "*": {"upstream": "main", "price": None}}))
    lookup = ModelLookup(config.models, max_concrete=3)
    targets = [lookup.target(f"m-{i}") for i in range(10)]
    assert lookup.cached == 3
    assert lookup.target("m-9") is targets[9]  # recently used: still cached
    assert lookup.target("m-0") == targets[0]  # rebuilt, equal


def test_pattern_matching_and_fnmatch_agree():
    import fnmatch

    for glob in ("gpt-*", "a?c", "[!x]yz*", "[]]*", "odd[", "deep*seek*"):
        pattern = Pattern.compile(glob, 0)
        for name in ("gpt-5", "abc", "ayz", "]q", "odd[", "deepXseekY", "x", ""):
            assert (pattern.match(name) is not None) == fnmatch.fnmatchcase(name, glob), (glob, name)


async def test_any_model_a_pattern_matches_reaches_its_upstream(floodgate, mock_upstream):
    mock_upstream.settings.models += ["gpt-5-mini", "r1"]
    gw = await floodgate(models={**MOCK_MODELS, "gpt-*": {"price": None}, "ds/*": {"upstream_model": "{1}",
                                                                                 "price": {"input": 1}}})
    client = gw.openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-5-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-floodgate-model"] == "gpt-5-mini"
    assert mock_upstream.stats.last.body["model"] == "gpt-5-mini"
    await client.chat.completions.create(model="ds/r1", messages=[{"role": "user", "content": "hi"}])
    assert mock_upstream.stats.last.body["model"] == "r1"
    # An exact name still wins; a name nothing serves is still 404.
    await client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    assert mock_upstream.stats.last.body["model"] == "gpt-4.1"
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="claude-9", messages=[{"role": "user", "content": "hi"}])
