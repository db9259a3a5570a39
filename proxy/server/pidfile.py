"""``server.pid_file``: how ``floodgate reload`` finds the running gateway.

``floodgate serve`` writes its process id there (the supervisor's with workers)
and removes it when it exits; ``floodgate reload`` reads it and sends SIGHUP.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


class PidFileError(Exception):
    """No running gateway behind the pid file, or another one owns it."""


def read_pid(path: str | Path) -> int:
    """The pid of the gateway that wrote ``path``; :class:`PidFileError` if none runs."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except OSError as exc:
        raise PidFileError(f"cannot read pid file {path}: {exc.strerror} (is the gateway running, with "
                           "server.pid_file set?)") from None
    if not text.isdigit():
        raise PidFileError(f"pid file {path} does not hold a process id")
    pid = int(text)
    if not _is_gateway(pid):
        raise PidFileError(f"no gateway runs as pid {pid} (stale pid file {path})")
    return pid


def _is_gateway(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; another user's (signalling it will say so)
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: a recycled pid that is not a gateway does not count
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes()
            return b"floodgate" in args or b"proxy" in args
    return True


@contextlib.contextmanager
def pid_file(path: str | None) -> Iterator[None]:
    """Write this process's pid to ``path`` for the duration (nothing when ``path`` is None).

    Refuses (:class:`PidFileError`) when another running gateway owns the file.
    """
    if path is None:
        yield
        return
    target = Path(path)
    try:
        other: int | None = read_pid(target)
    except PidFileError:
        other = None  # absent or stale: ours now
    if other is not None and other != os.getpid():
        raise PidFileError(f"pid file {path} belongs to a running gateway (pid {other})")
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    temporary.write_text(f"{os.getpid()}\n", encoding="ascii")
    temporary.replace(target)  # atomic: a reader never sees half a pid
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if target.read_text(encoding="ascii").strip() == str(os.getpid()):
                target.unlink()
