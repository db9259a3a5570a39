"""``server.pid_file`` and ``floodgate reload``'s ways of failing clearly."""

from __future__ import annotations

import os
import subprocess

import pytest

from proxy.cli import main
from proxy.server.pidfile import PidFileError, pid_file, read_pid
from proxy.testing import mock_config


def test_the_pid_file_lives_as_long_as_the_gateway(tmp_path):
    path = tmp_path / "fg.pid"
    with pid_file(str(path)):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()
    with pid_file(None):  # not configured: nothing written
        assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e  # spawns a `sleep` to stand for a recycled pid
def test_a_stale_or_foreign_pid_is_no_gateway(tmp_path):
    path = tmp_path / "fg.pid"
    with pytest.raises(PidFileError, match="cannot read pid file"):
        read_pid(path)
    path.write_text("garbage")
    with pytest.raises(PidFileError, match="does not hold a process id"):
        read_pid(path)
    sleeper = subprocess.Popen(["sleep", "30"])  # alive, but not a gateway (a recycled pid)
    try:
        path.write_text(f"{sleeper.pid}\n")
        with pytest.raises(PidFileError, match="no gateway runs as pid"):
            read_pid(path)
        with pid_file(str(path)):  # a stale file is taken over
            assert path.read_text() == f"{os.getpid()}\n"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_reload_without_a_pid_file_says_how_to_find_the_gateway(tmp_path, capsys):
    import yaml

    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(mock_config("http://127.0.0.1:9/v1")), encoding="utf-8")
    assert main(["reload", "--config", str(config)]) == 1
    assert "server.pid_file is not set" in capsys.readouterr().err
    assert main(["reload", "--config", str(config), "--pid-file", str(tmp_path / "none.pid")]) == 1
    assert "cannot read pid file" in capsys.readouterr().err
