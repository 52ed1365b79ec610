"""Sampling this process and its descendants from ``/proc`` (no psutil): peak RSS (``VmHWM``) and CPU seconds per
process, by kind (Ray actor, fit task, Ray worker, or the program's name)."""

from __future__ import annotations

import os
import posixpath
import threading
import time


def status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def process_kind(cmdline: str) -> str:
    """actor (PartEncoder), fit, worker (other ray:: processes), or the program's name (raylet, gcs_server, ...)."""
    if "PartEncoder" in cmdline or "MapWorker" in cmdline:
        return "actor"
    if "ExtractorActor" in cmdline or "fit_task" in cmdline:  # Ray names a task's worker after its function
        return "fit"
    if cmdline.startswith("ray::"):
        return "worker"
    args = cmdline.split()
    if not args:
        return "other"
    scripts = [a for a in args[1:3] if a.endswith(".py")]
    return posixpath.basename(scripts[0] if scripts else args[0])


def descendants(root: int) -> dict[int, str]:
    """pid -> command line of every live descendant of ``root`` (from /proc; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # fields after "(comm)": state, ppid, ...
        children.setdefault(ppid, []).append(int(entry))
    found: dict[int, str] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                found[pid] = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        stack.extend(children.get(pid, []))
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # state is field 3; utime, stime are fields 14, 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Every ``interval`` s: VmHWM (peak RSS, kB) and CPU seconds of this process and each of its descendants
    (the local Ray's raylet, GCS, workers and actors), kept per pid."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peaks: dict[int, int] = {}
        self.kinds: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.cpu: dict[int, list[tuple[float, float]]] = {}  # pid -> [(time.time(), CPU seconds)]

    def sample(self) -> None:
        now = time.time()
        for pid in [os.getpid(), *descendants(os.getpid())]:
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self.cpu.setdefault(pid, []).append((now, cpu))
        for pid, cmd in descendants(os.getpid()).items():
            hwm = status_kb(pid, "VmHWM")
            if hwm is None:
                continue
            self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)
            kind = process_kind(cmd)
            if kind != "worker" or pid not in self.kinds:  # keep the most specific name seen
                self.kinds[pid] = kind
                self.names[pid] = cmd[:60]

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        self.sample()

    def cpu_between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds used from ``t0`` to ``t1`` (``time.time()``) by kind of process ("driver" is this one; a
        process's value at a time is its last sample before it)."""
        used: dict[str, float] = {}
        def at(series: list[tuple[float, float]], t: float) -> float:
            before = [cpu for when, cpu in series if when <= t]
            return before[-1] if before else 0.0  # not started yet

        for pid, series in self.cpu.items():
            kind = "driver" if pid == os.getpid() else self.kinds.get(pid, "other")
            used[kind] = used.get(kind, 0.0) + max(at(series, t1) - at(series, t0), 0.0)
        return used
