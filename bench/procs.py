"""Child processes and what the benchmark reads about them (ports, readiness, CPU, memory)."""

from __future__ import annotations

import importlib.util
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# -- processes -------------------------------------------------------------------------------

class Processes:
    """Every child process of the run; all stopped by pid in :meth:`stop_all`."""

    def __init__(self, logdir: Path, pin: bool) -> None:
        self.logdir = logdir
        self.pin = pin
        self.children: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                             os.environ.get("PYTHONPATH")]))}
        # Taken before the driver pins itself to the load generator's CPU: a child started without
        # a CPU of its own gets all of these back (else it would inherit the driver's one CPU).
        self.all_cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()

    def preexec(self, cpu: int | None) -> Callable[[], None] | None:
        if not self.pin:
            return None
        cpus = {cpu} if cpu is not None else self.all_cpus
        return lambda: os.sched_setaffinity(0, cpus)

    def start(self, name: str, argv: Sequence[str], cpu: int | None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=REPO, env=env or self.env, start_new_session=True,
                                    preexec_fn=self.preexec(cpu))
        finally:
            log.close()
        self.children.append(proc)
        return proc

    def run(self, argv: Sequence[str], cpu: int | None, timeout: float,
            env: dict[str, str] | None = None) -> str:
        """Run a load generator to completion; its stdout (bounded by ``timeout``)."""
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, cwd=REPO, env={**self.env, **(env or {})},
                                start_new_session=True, preexec_fn=self.preexec(cpu))
        self.children.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            self.stop(proc)
            raise
        finally:
            if proc.poll() is not None:
                self.children.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed ({proc.returncode}): {err.decode()[-800:]}")
        return out.decode()

    @staticmethod
    def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
        if proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for proc in reversed(self.children):
            self.stop(proc)
        self.children.clear()


def event_loop(choice: str) -> str:
    """``auto`` resolved as ``floodgate serve`` resolves ``server.event_loop`` in this interpreter."""
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise SystemExit("--loop uvloop: uvloop is not installed (pip install -e '.[fast]')")
    return ("uvloop" if installed else "asyncio") if choice == "auto" else choice


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def wait_ready(proc: subprocess.Popen[bytes], url: str, name: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if http("GET", url, timeout=2.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready within {timeout:.0f}s ({url})")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used."""
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: Sequence[int]) -> tuple[float, float, float]:
    """(wall clock, machine busy CPU-seconds, CPU-seconds of this run's processes)."""
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait (guest is in user)
    ours = 0.0
    for pid in pids:
        try:
            ours += process_cpu(pid)
        except (OSError, IndexError, ValueError):
            continue
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):  # finished load generators count here
        usage = resource.getrusage(who)
        ours += usage.ru_utime + usage.ru_stime
    return time.monotonic(), busy, ours


def foreign_cpu(before: tuple[float, float, float], after: tuple[float, float, float]) -> float | None:
    """Share of the machine (0..1) other processes used between two snapshots: the noise."""
    wall = after[0] - before[0]
    if wall <= 0 or not os.path.exists("/proc/stat"):
        return None
    other = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, other / (wall * (os.cpu_count() or 1)))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def guarded(work: Callable[[], None], cleanup: Callable[[], None], progress: Callable[[str], None]) -> int:
    """Run a benchmark's phases; whatever happens (Ctrl-C, SIGTERM raised as KeyboardInterrupt, an
    error) ``cleanup`` stops what was started. The exit status: 0, 130 interrupted, 1 failed."""
    status = 0
    try:
        work()
    except KeyboardInterrupt:
        progress("interrupted: stopping every process started")
        status = 130
    except Exception as exc:
        progress(f"error: {exc}")
        status = 1
    finally:
        cleanup()
    return status
