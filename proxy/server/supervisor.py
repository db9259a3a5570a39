"""``floodgate serve --workers N``: a supervisor and N worker processes on one socket.

The supervisor binds the listening socket once and passes it to every worker
(rather than each worker binding its own with ``SO_REUSEPORT``): the address is
checked once, ``port: 0`` means one port for all, and connections wait in the
one accept queue while a worker restarts or drains — with ``SO_REUSEPORT`` the
connections queued on a dying worker's socket would be reset.

It restarts a worker that dies (exponential backoff from 0.5 s to 30 s, reset
after a minute of good health; the exit status or signal is logged), drains all
on SIGTERM/SIGINT (each worker stops accepting and finishes its in-flight
requests within ``server.shutdown_timeout``; the supervisor waits, then kills
what is left), and on SIGHUP validates the configuration once and sends the
validated text to every worker, which switches to it. Worker metrics go to a
fresh directory per run (prometheus-client's multiprocess mode), removed at exit;
a dead worker's gauges are dropped (``mark_process_dead``), its counters kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import multiprocess

from ..config import Config, parse_config
from ..errors import ConfigErrors
from ..metrics import MULTIPROC_ENV
from . import loops
from .control import EXIT_CONFIG, Channel
from .logs import configure_logging
from .pidfile import pid_file
from .reload import Coalesced, log_refused, restart_only_changes, validate
from .run import listen_socket, raise_open_file_limit

log = logging.getLogger("floodgate.supervisor")

_BACKOFF_FIRST, _BACKOFF_MAX, _HEALTHY_AFTER = 0.5, 30.0, 60.0
_KILL_GRACE = 5.0  # seconds past shutdown_timeout before a draining worker is killed


class Supervisor:
    """Runs ``workers`` worker processes serving ``config`` (read from ``path``) on ``sock``."""

    def __init__(self, config: Config, path: str, text: str, workers: int, sock: socket.socket) -> None:
        self.started_config = config
        self.path = path
        self.source = Path(path).name
        self.text = text
        self.version = 1
        self.workers = workers
        self.sock = sock
        self.shutdown_timeout = config.server.shutdown_timeout
        self.stopping = asyncio.Event()
        self.failed = False
        self.metrics_dir = ""
        self.slots = [WorkerSlot(self, index) for index in range(1, workers + 1)]
        self._reloading = Coalesced(self.reload)

    async def run(self) -> int:
        self.metrics_dir = tempfile.mkdtemp(prefix="floodgate-metrics-")
        loop = asyncio.get_running_loop()
        signals = {signal.SIGTERM: self.stop, signal.SIGINT: self.stop, signal.SIGHUP: self._reloading.trigger}
        for sig, handler in signals.items():
            loop.add_signal_handler(sig, handler)
        try:
            tasks = [asyncio.create_task(slot.run()) for slot in self.slots]
            started = asyncio.ensure_future(self._all_ready())
            stopped = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait([started, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not self.stopping.is_set():
                host, port = self.sock.getsockname()[:2]
                print(f"floodgate: listening on http://{host}:{port}/v1 with {self.workers} workers "
                      f"(pid {os.getpid()}; SIGHUP reloads, Ctrl-C or SIGTERM stops)", flush=True)
            else:
                started.cancel()
            await stopped
            await self._reloading.wait()
            self.sock.close()  # the workers' copies close as they drain: then new connections are refused
            await self._drain(tasks)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return 1 if self.failed else 0

    async def _all_ready(self) -> bool:
        for slot in self.slots:
            await slot.ready.wait()
        return True

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping: %d workers finish their in-flight requests (up to %gs)", self.workers,
                     self.shutdown_timeout)
            self.stopping.set()

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
        for slot in self.slots:
            slot.signal(signal.SIGTERM)
        done, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout + _KILL_GRACE)
        if pending:
            for slot in self.slots:
                if slot.signal(signal.SIGKILL):
                    log.error("worker %d did not finish within %gs: killed", slot.index, self.shutdown_timeout)
            await asyncio.wait(pending)

    # -- reloads --------------------------------------------------------------------
    async def reload(self) -> bool:
        """Validate the file once; on success every worker switches to it."""
        try:
            config, text = _read_valid(self.path, self.source, self.workers)
        except ConfigErrors as exc:
            log_refused(exc.errors, f"configuration version {self.version}")
            return False
        except OSError as exc:
            log.error("reload refused: cannot read %s: %s", self.path, exc.strerror)
            return False
        for change in restart_only_changes(self.started_config, config):
            log.warning(str(change))
        self.text, self.version = text, self.version + 1
        log.info("configuration version %d is valid: %d workers switch to it", self.version, self.workers)
        for slot in self.slots:
            await slot.send_config()
        return True

    def config_message(self) -> dict[str, object]:
        return {"op": "config", "version": self.version, "text": self.text, "source": self.source}


def _read_valid(path: str, source: str, workers: int) -> tuple[Config, str]:
    """The config at ``path`` and its text, checked as `floodgate check` does (once for all workers)."""
    text = Path(path).read_text(encoding="utf-8")
    config = parse_config(text, source=source)
    validate(config, workers)
    return config, text


class WorkerSlot:
    """Worker number ``index``: its current process, restarted while the supervisor runs."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ready = asyncio.Event()  # set once the first process serves
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None

    def signal(self, sig: int) -> bool:
        process = self.process
        if process is None or process.returncode is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        return True

    async def send_config(self) -> None:
        if self.channel is not None:
            await self.channel.send(self.supervisor.config_message())

    async def run(self) -> None:
        sup = self.supervisor
        backoff = _BACKOFF_FIRST
        while not sup.stopping.is_set():
            began = time.monotonic()
            try:
                process, channel = await self._spawn()
            except OSError as exc:
                log.error("cannot start worker %d: %s; stopping", self.index, exc)
                sup.failed = True
                sup.stop()
                return
            if sup.stopping.is_set():
                self.signal(signal.SIGTERM)  # it started while the others were told to drain
            listening = asyncio.create_task(self._listen(channel))
            code = await process.wait()
            await asyncio.gather(listening, return_exceptions=True)
            channel.close()
            self.channel = None
            _forget_gauges(process.pid, sup.metrics_dir)
            if sup.stopping.is_set():
                if code != 0:
                    log.warning("worker %d (pid %d) %s while stopping", self.index, process.pid, _exit(code))
                return
            if not self.ready.is_set():  # it never served: a restart would fail the same way
                why = "its configuration does not build" if code == EXIT_CONFIG else _exit(code)
                log.error("worker %d (pid %d) could not start: %s; stopping", self.index, process.pid, why)
                sup.failed = True
                sup.stop()
                return
            if time.monotonic() - began > _HEALTHY_AFTER:
                backoff = _BACKOFF_FIRST
            log.error("worker %d (pid %d) %s; starting a new one in %.1fs", self.index, process.pid, _exit(code),
                      backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sup.stopping.wait(), backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _spawn(self) -> tuple[asyncio.subprocess.Process, Channel]:
        sup = self.supervisor
        ours, theirs = socket.socketpair()
        listen_fd = sup.sock.fileno()
        env = {**os.environ, MULTIPROC_ENV: sup.metrics_dir}
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "proxy.server.worker", f"--index={self.index}", f"--workers={sup.workers}",
                f"--event-loop={sup.started_config.server.event_loop}", f"--listen-fd={listen_fd}",
                f"--control-fd={theirs.fileno()}", pass_fds=(listen_fd, theirs.fileno()),
                env=env)
        finally:
            theirs.close()
        self.channel = await Channel.open(ours)
        await self.channel.send(sup.config_message())
        log.info("worker %d started (pid %d)", self.index, self.process.pid)
        return self.process, self.channel

    async def _listen(self, channel: Channel) -> None:
        while (message := await channel.receive()) is not None:
            op = message.get("op")
            if op == "ready":
                self.ready.set()
                log.info("worker %d (pid %s) serves", self.index, self.process.pid if self.process else "?")
            elif op == "reloaded":
                if message.get("ok"):
                    log.info("worker %d serves configuration version %s", self.index, message.get("version"))
                else:
                    log.error("worker %d kept its previous configuration (version %s did not start; see its "
                              "log above)", self.index, message.get("version"))


def _forget_gauges(pid: int, directory: str) -> None:
    """A dead worker's gauges: its live ones (``livesum``...) and the per-process ones of gauges
    left in the default mode (``all``) would report a process that is gone. Its counters and
    histograms stay: the host's totals include what it served."""
    multiprocess.mark_process_dead(pid, directory)
    for path in Path(directory).glob(f"gauge_all_{pid}.db"):
        path.unlink(missing_ok=True)


def _exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"was killed by signal {-code} ({name})"
    return f"exited with status {code}"


def supervise(config: Config, *, path: str, text: str, workers: int, host: str | None = None,
              port: int | None = None) -> int:
    """Serve ``config`` (``text``, read from ``path``) with ``workers`` worker processes until
    SIGTERM/SIGINT; SIGHUP reloads from ``path``. Returns the exit status."""
    configure_logging(config.server.log_level)
    raise_open_file_limit()
    sock = listen_socket(host or config.server.host, config.server.port if port is None else port)
    with pid_file(config.server.pid_file):
        return loops.run(Supervisor(config, path, text, workers, sock).run(), config.server.event_loop)
