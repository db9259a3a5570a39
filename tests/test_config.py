"""Config: strict validation, located errors, env substitution, `floodgate check`."""

from __future__ import annotations

import textwrap

import pytest

from proxy import ConfigErrors, create_app, parse_config
from proxy.cli import main

GOOD = """\
server:
  port: 8080
upstreams:
  main:
    base_url: http://127.0.0.1:9/v1
    api_key: ${TEST_UPSTREAM_KEY:-sk-default}
    timeouts: {connect: 2, first_byte: 10, total: 60}
models:
  deepseek-v3.2:
    upstream: main
    price: {input: 0.28, output: 0.42, cached_input: 0.028}
  gpt-4.1:
    upstream: main
    fallbacks: [deepseek-v3.2]
aliases:
  gpt-4o-mini: deepseek-v3.2
"""


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        config = parse_config(textwrap.dedent(text), source="config.yaml", env=env or {})
        create_app(config, builtins=(), entry_points=False)
    return [str(e) for e in info.value.errors]


def test_good_config_and_env_defaults():
    config = parse_config(GOOD, source="config.yaml", env={})
    assert config.upstreams["main"].api_key.get_secret_value() == "sk-default"
    assert config.resolve("gpt-4o-mini") == "deepseek-v3.2"
    assert [t.model for t in config.targets_with_fallbacks("gpt-4.1")] == ["gpt-4.1", "deepseek-v3.2"]
    config = parse_config(GOOD, env={"TEST_UPSTREAM_KEY": "sk-from-env"})
    assert config.upstreams["main"].api_key.get_secret_value() == "sk-from-env"
    assert "sk-from-env" not in repr(config.upstreams["main"])  # secrets never printed


def test_misspelled_key_names_path_line_and_suggestion():
    text = GOOD.replace("    timeouts: {connect: 2, first_byte: 10, total: 60}", "    timeout: 5")
    [error] = errors_of(text)
    assert error == "config.yaml:7 upstreams.main.timeout: unknown key (did you mean 'timeouts'?)"


def test_bad_values_are_all_reported_with_lines():
    text = GOOD.replace("port: 8080", "port: eighty").replace("total: 60", "total: -1")
    errors = errors_of(text)
    assert any(e.startswith("config.yaml:2 server.port: must be a valid integer") for e in errors)
    assert "config.yaml:7 upstreams.main.timeouts.total: must be greater than 0" in errors


def test_missing_env_var_is_an_error():
    errors = errors_of(GOOD.replace("${TEST_UPSTREAM_KEY:-sk-default}", "${TEST_UPSTREAM_KEY}"))
    assert errors == ["config.yaml:6 upstreams.main.api_key: environment variable TEST_UPSTREAM_KEY is not set"]


def test_cross_references_are_checked():
    text = GOOD.replace("fallbacks: [deepseek-v3.2]", "fallbacks: [deepseek-v4]").replace(
        "gpt-4o-mini: deepseek-v3.2", "gpt-4o-mini: nowhere")
    text = text.replace("  gpt-4.1:\n    upstream: main", "  gpt-4.1:\n    upstream: backup")
    errors = errors_of(text)
    assert any("models.gpt-4.1.upstream: unknown upstream 'backup'" in e for e in errors)
    assert any("models.gpt-4.1.fallbacks.0: unknown model 'deepseek-v4'" in e for e in errors)


def test_alias_to_unknown_target():
    errors = errors_of(GOOD.replace("gpt-4o-mini: deepseek-v3.2", "gpt-4o-mini: nowhere"))
    assert errors == ["config.yaml:16 aliases.gpt-4o-mini: 'nowhere' is neither a catalogue model nor a route "
                      "(known routes: none)"]


def test_duplicate_keys_and_yaml_syntax():
    errors = errors_of(GOOD + "aliases:\n  x: gpt-4.1\n")
    assert errors == ["config.yaml:17 aliases: duplicate key"]
    errors = errors_of("upstreams: [unclosed\n")
    assert errors[0].startswith("config.yaml:2 invalid YAML")


def test_unknown_plugin_block_and_disabled_name():
    errors = errors_of(GOOD + "plugins:\n  disabled: [nosuch]\n  fqa: {rules: []}\n")
    assert "config.yaml:18 plugins.disabled.0: no plugin is named 'nosuch'" in errors
    assert any(e.startswith("config.yaml:19 plugins.fqa: no loaded plugin reads this block") for e in errors)


def test_bad_plugin_module_reference():
    errors = errors_of(GOOD + "plugins:\n  modules: [no_such_module_xyz]\n")
    assert len(errors) == 1 and errors[0].startswith("config.yaml:18 plugins.modules.0: cannot load plugin")


def test_base_url_and_mock_section(caplog):
    errors = errors_of(GOOD.replace("http://127.0.0.1:9/v1", "ftp://x"))
    assert errors == ["config.yaml:5 upstreams.main.base_url: must be an http(s):// URL or 'builtin:mock'"]
    # The shipped config keeps its mock block when pointed at a real provider: a notice, not an error.
    with_mock = GOOD.replace("    timeouts: {connect", "    mock: {seed: 1}\n    timeouts: {connect")
    with caplog.at_level("INFO", logger="floodgate.config"):
        create_app(parse_config(with_mock, source="config.yaml", env={}), builtins=(), entry_points=False)
    assert "config.yaml:7 upstreams.main.mock: not used (base_url is not builtin:mock)" in caplog.text
    # builtin:mock needs the mock plugin (an entry point), which validates the block itself.
    mocked = with_mock.replace("http://127.0.0.1:9/v1", "builtin:mock")
    assert errors_of(mocked) == ["config.yaml:5 upstreams.main.base_url: no loaded plugin serves 'builtin:mock' "
                                 "(the mock upstream is the 'mock' plugin, installed with floodgate)"]
    create_app(parse_config(mocked, source="config.yaml", env={}), builtins=())
    with pytest.raises(ConfigErrors) as info:
        create_app(parse_config(mocked.replace("seed: 1", "sead: 1"), source="config.yaml", env={}), builtins=())
    assert [str(e) for e in info.value.errors] == [
        "config.yaml:7 upstreams.main.mock.sead: unknown key (did you mean 'seed'?)"]


def test_floodgate_check_cli(tmp_path, capsys):
    good = tmp_path / "config.yaml"
    good.write_text(GOOD)
    assert main(["check", "--config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out

    bad = tmp_path / "config.yaml"
    bad.write_text(GOOD.replace("  port: 8080", "  prot: 8080"))
    assert main(["check", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "config.yaml:2 server.prot: unknown key (did you mean 'port'?)" in err
    assert "1 error" in err

    assert main(["check", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read config" in capsys.readouterr().err


def test_shipped_config_is_valid(capsys):
    from pathlib import Path
    shipped = Path(__file__).resolve().parents[1] / "config.yaml"
    assert main(["check", "--config", str(shipped)]) == 0, capsys.readouterr().err
