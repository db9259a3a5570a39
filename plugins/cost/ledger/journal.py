"""Per-process journal files: every ledger row is on disk before the database has it.

A row is appended to this process's journal (one ``os.write`` on an ``O_APPEND``
descriptor: a few microseconds, no ``fsync``) in the same event-loop step that
completes its response. The data then lives in the kernel's page cache, which a
``SIGKILL`` of the process does not touch. The background writer *rotates* the
journal (new rows go to a fresh file), stores the sealed file's rows in the
database, and only then deletes the file.

Each file is locked (``flock``) by the process that owns it for as long as it is
open; the kernel drops the lock when the process dies, however it dies. A file
whose lock can be taken is therefore an orphan — its owner is gone — and any
gateway sharing the directory (at start-up, and periodically) adopts it: stores
its rows (idempotently, by ``row_id``) and deletes it. New files are created under
a temporary name and renamed once locked, so an adopter never takes a file its
owner is about to lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from ..rows import Row, decode

__all__ = ["Journal", "JournalFile"]

log = logging.getLogger("floodgate.cost")

_PREFIX = "journal-"
_SUFFIX = ".jsonl"
_TEMP = ".tmp-"
_CREATE_TRIES = 5


@dataclass(slots=True)
class JournalFile:
    """An open, locked journal file (ours, or an orphan being adopted)."""

    path: str
    fd: int

    def sync(self) -> None:
        """``fsync``: make the file survive a machine crash (used when its rows cannot be stored yet)."""
        os.fsync(self.fd)

    def release(self) -> None:
        """Close without deleting: the file becomes an orphan, adopted later (its rows are not stored)."""
        os.close(self.fd)

    def remove(self) -> None:
        """Its rows are stored: delete it (the lock goes with the descriptor)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)


class Journal:
    """This process's journal in ``directory`` (created, mode 0700, if missing)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._stem = f"{_PREFIX}{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        self._seq = itertools.count()
        self._current: JournalFile | None = None
        self._written = 0  # bytes in the current file
        self._failed = False

    def open(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._current = self._create()

    def _create(self) -> JournalFile:
        # Another worker adopting orphans may delete our temp file between its creation and our lock
        # (it looks like one whose creator died): then the rename fails, and a new file is made.
        for attempt in range(_CREATE_TRIES):
            name = f"{self._stem}-{next(self._seq):06d}{_SUFFIX}"
            temp = os.path.join(self.directory, _TEMP + name)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            path = os.path.join(self.directory, name)
            try:
                os.rename(temp, path)
            except FileNotFoundError:
                os.close(fd)
                if attempt + 1 == _CREATE_TRIES:
                    raise
                continue
            return JournalFile(path, fd)
        raise AssertionError("unreachable")

    def append(self, data: bytes) -> bool:
        """Append one encoded row (hot path). ``False`` if it could not be written (logged once
        per failure streak; the row is still kept in memory for the database)."""
        current = self._current
        if current is None:
            return False
        try:
            view = memoryview(data)
            while view:  # a regular file takes it in one write; a short write is finished here
                view = view[os.write(current.fd, view):]
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.error("usage ledger journal %s: cannot append (%s); rows are kept in memory only until "
                          "stored", current.path, exc.strerror or exc)
            return False
        if self._failed:
            self._failed = False
            log.warning("usage ledger journal %s: appending works again", current.path)
        self._written += len(data)
        return True

    def rotate(self) -> JournalFile | None:
        """Seal the current file (returned, still locked) and continue in a new one.

        ``None`` when nothing was written since the last rotation.
        """
        if self._current is None or not self._written:
            return None
        sealed = self._current
        try:
            self._current = self._create()
        except OSError as exc:  # keep appending to the old file; its rows are stored next time
            log.error("usage ledger journal: cannot start a new file in %s (%s)", self.directory, exc.strerror)
            return None
        self._written = 0
        return sealed

    def close(self) -> None:
        """Close the current file; deleted if empty (else left for adoption: its rows were not stored)."""
        current, self._current = self._current, None
        if current is None:
            return
        if self._written:
            os.close(current.fd)
        else:
            current.remove()

    def orphans(self) -> Iterator[tuple[JournalFile, list[Row]]]:
        """Journal files whose owner is gone, locked for us, with their rows (blocking I/O)."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return
        own = self._current.path if self._current is not None else None
        for name in names:
            if name.startswith(_TEMP + _PREFIX):
                _remove_stale_temp(os.path.join(self.directory, name))
                continue
            if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
                continue
            path = os.path.join(self.directory, name)
            if path == own:
                continue
            adopted = _adopt(path)
            if adopted is not None:
                yield adopted


def _remove_stale_temp(path: str) -> None:
    """A file its creator died before renaming (so before any row was written to it): delete it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    except (BlockingIOError, FileNotFoundError):
        pass  # being created right now, or gone
    finally:
        os.close(fd)


def _adopt(path: str) -> tuple[JournalFile, list[Row]] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # adopted and removed by someone else meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 0:  # removed between our open and our lock
            os.close(fd)
            return None
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read()
    except BlockingIOError:
        os.close(fd)
        return None  # its owner is alive
    except OSError:
        os.close(fd)
        raise
    rows: list[Row] = []
    torn = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(decode(line))
        except ValueError:
            torn += 1
    if torn:
        log.warning("usage ledger journal %s: %d unreadable line(s) skipped (a write cut short by a machine "
                    "crash?)", path, torn)
    return JournalFile(path, fd), rows


def write_orphan(directory: str, data: bytes) -> None:
    """Leave rows in a new, unlocked journal file for the next gateway to adopt
    (a request that finished after this ledger closed)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    name = f"{_PREFIX}{socket.gethostname()}-{os.getpid()}-late-{os.urandom(6).hex()}{_SUFFIX}"
    temp = os.path.join(directory, _TEMP + name)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, os.path.join(directory, name))
