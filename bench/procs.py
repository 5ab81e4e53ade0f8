"""Processes of the benchmark: spawn in their own process group, stop by PID, sample RSS/CPU."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from tests.fixtures.procs import free_port, stop_process, wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")

__all__ = ["Procs", "Sampler", "cpu_sec", "free_port", "rss_kb", "wait_for"]


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_sec(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


class Procs:
    """Every process the benchmark started, stopped in reverse order by PID (process group)."""

    def __init__(self, home: Path, env: dict[str, str], cwd: Path) -> None:
        self.home, self.env, self.cwd = home, env, cwd
        self.started: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(self.home / f"{name}.out", "ab") as log_file:
            proc = subprocess.Popen(
                args,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: we stop it (and its children) by PID
            )
        self.started[name] = proc
        return proc

    def output(self, name: str) -> str:
        path = self.home / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.started.items():
            if proc.poll() is not None:
                tail = self.output(name)[-3000:]
                raise RuntimeError(
                    f"{name} (pid {proc.pid}) exited with {proc.returncode}:\n{tail}"
                )

    def stop_all(self, timeout: float = 15.0) -> None:
        for name in reversed(list(self.started)):
            stop_process(self.started[name], timeout=timeout)
        self.started.clear()


class Sampler:
    """Peak RSS of some PIDs, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.peak_kb = {name: rss_kb(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def reset(self) -> None:
        self.peak_kb = {name: rss_kb(pid) for name, pid in self.pids.items()}

    def cpu(self) -> dict[str, float]:
        return {name: cpu_sec(pid) for name, pid in self.pids.items()}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in self.pids.items():
                self.peak_kb[name] = max(self.peak_kb[name], rss_kb(pid))
