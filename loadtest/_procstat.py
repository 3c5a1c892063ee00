"""Process and machine readings from /proc for the load tools: CPU per process and per core, RSS.

Linux only. Percentages are of one core over the measured window. The server may be several
processes (`webchat --workers N`: find the workers with `children_of(parent)`); their CPU is
summed. A Redis pid, if given, is measured on its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (fields 14 and 15 of /proc/PID/stat), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def children_of(pid: int) -> list[int]:
    """Direct children of a process (/proc/PID/task/*/children), e.g. webchat's workers."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return sorted(set(out))


def proc_name(pid: int) -> str | None:
    """The command line of a process, shortened, for reports."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:120]


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def established_on_port(pids: Sequence[int], port: int) -> dict[int, int]:
    """Per pid, its ESTABLISHED TCP sockets whose local port is `port` (accepted clients).

    With SO_REUSEPORT workers this is how the kernel split the clients between them.
    """
    by_inode: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], int(fields[9])
                    if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                        by_inode.add(inode)
        except OSError:
            continue
    return {pid: len(_socket_inodes(pid) & by_inode) for pid in pids}


def proc_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def core_ticks() -> dict[str, tuple[int, int, int]]:
    """Per core (busy, softirq, total) jiffies from /proc/stat."""
    out: dict[str, tuple[int, int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                nums = [int(v) for v in values]
                idle = nums[3] + (nums[4] if len(nums) > 4 else 0)
                total = sum(nums)
                out[name] = (total - idle, nums[6] if len(nums) > 6 else 0, total)
    return out


class CpuMeter:
    """CPU of this process, of the server PIDs and of each core over a window, in % of a core."""

    def __init__(self, server_pids: Sequence[int], redis_pid: int | None = None) -> None:
        self.server_pids = list(server_pids)
        self.redis_pid = redis_pid
        self.t0 = time.monotonic()
        self.self0 = time.process_time()
        self.srv0 = [proc_cpu_ticks(p) for p in self.server_pids]
        self.redis0 = proc_cpu_ticks(redis_pid) if redis_pid else None
        self.cores0 = core_ticks()

    def stop(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.t0, 1e-9)
        gen = (time.process_time() - self.self0) / wall * 100
        srv: float | None = None
        srv_secs: float | None = None
        each: dict[str, float | None] = {}
        if self.server_pids:
            ticks = 0
            for pid, t0 in zip(self.server_pids, self.srv0, strict=True):
                t1 = proc_cpu_ticks(pid)
                if t0 is not None and t1 is not None:
                    ticks += t1 - t0
                    each[str(pid)] = round((t1 - t0) / CLK_TCK / wall * 100, 1)
                else:
                    each[str(pid)] = None
            srv_secs = ticks / CLK_TCK
            srv = round(srv_secs / wall * 100, 1)
        redis: float | None = None
        if self.redis_pid and self.redis0 is not None:
            r1 = proc_cpu_ticks(self.redis_pid)
            # None when Redis was restarted meanwhile (another pid): its CPU is unknown.
            redis = round((r1 - self.redis0) / CLK_TCK / wall * 100, 1) if r1 is not None else None
        cores: dict[str, float] = {}
        softirq: dict[str, float] = {}
        for name, (busy1, soft1, total1) in core_ticks().items():
            busy0, soft0, total0 = self.cores0.get(name, (busy1, soft1, total1))
            span = max(total1 - total0, 1)
            cores[name] = round((busy1 - busy0) / span * 100, 1)
            softirq[name] = round((soft1 - soft0) / span * 100, 1)
        return {
            "wall_s": round(wall, 2),
            "generator_cpu_pct": round(gen, 1),
            "server_cpu_pct": srv,
            # Summed over the server pids (workers); with deliveries, the efficiency measure.
            "server_cpu_s": round(srv_secs, 2) if srv_secs is not None else None,
            "server_cpu_pct_each": each if len(self.server_pids) > 1 else None,
            "redis_cpu_pct": redis,
            "redis_core_busy_pct": (
                pinned_core_busy(self.redis_pid, cores) if self.redis_pid else None
            ),
            "core_busy_pct": cores,
            # Share of each core spent in softirq: on loopback the receiving half of TCP for
            # what the server sends runs there, on the server's core, and is charged to the
            # server's own CPU time too (seen here: server 68.6 %, core 69.1 % of which 22.4
            # softirq), so it is part of server_cpu_pct, not on top of it.
            "core_softirq_pct": softirq,
            # Busy % of the core a pinned process runs on, all processes counted: with the
            # process's own % it tells how much other work competed with it.
            "generator_core_busy_pct": pinned_core_busy(0, cores),
            "server_core_busy_pct": (
                pinned_core_busy(self.server_pids[0], cores) if self.server_pids else None
            ),
            "server_core_softirq_pct": (
                pinned_core_busy(self.server_pids[0], softirq) if self.server_pids else None
            ),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }


def pinned_core_busy(pid: int, cores: dict[str, float]) -> float | None:
    """The value for the one core `pid` is pinned to (taskset -c N), or None if not pinned."""
    try:
        affinity = os.sched_getaffinity(pid)
    except OSError:
        return None
    return cores.get(f"cpu{next(iter(affinity))}") if len(affinity) == 1 else None
