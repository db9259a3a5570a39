"""Several workers opening one ledger at once: SQLite's WAL switch and the journals' files."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from plugins.cost.ledger.journal import Journal
from plugins.cost.ledger.sqlite import connect


def _open_at(path: str, start: float, results: multiprocessing.Queue) -> None:
    while time.time() < start:  # all of them at the same instant
        pass
    try:
        connect(path).close()
        results.put("ok")
    except Exception as exc:  # reported to the test
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.e2e
def test_workers_opening_a_new_sqlite_ledger_together_all_start(tmp_path):
    # Before: about one start in seven (of six workers) failed with "database is locked" on PRAGMA journal_mode=WAL.
    context = multiprocessing.get_context("fork")
    for trial in range(20):
        path = str(tmp_path / f"usage-{trial}.db")
        results = context.Queue()
        start = time.time() + 0.3
        workers = [context.Process(target=_open_at, args=(path, start, results)) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert [results.get(timeout=5) for _ in workers] == ["ok"] * 6
        with connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_journal_file_removed_before_it_was_locked_is_made_again(tmp_path, monkeypatch):
    # Another worker adopting orphans may delete a journal's temporary file in the instant between
    # its creation and its lock (it looks like one whose creator died): the journal makes a new one.
    journal = Journal(str(tmp_path))
    real_rename = os.rename
    calls = []

    def rename(src: str, dst: str) -> None:
        calls.append(src)
        if len(calls) == 1:
            os.unlink(src)  # what the adopter did
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    journal.open()
    assert len(calls) == 2 and journal.append(b'{"x": 1}\n')
    journal.close()
    assert [name for name in os.listdir(tmp_path) if not name.startswith(".")] != []
