"""CPU time and memory of a running process tree, read from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MAX_TREE = 256


def tree(pid: int) -> list[int]:
    """`pid` and its live descendants (a gateway with worker processes, a simulator's workers)."""
    found = [pid]
    i = 0
    while i < len(found) and len(found) < MAX_TREE:
        for task in _listdir(Path(f"/proc/{found[i]}/task")):
            try:
                text = Path(f"/proc/{found[i]}/task/{task}/children").read_text()
            except OSError:
                continue
            found.extend(int(child) for child in text.split())
        i += 1
    return found


def cpu_seconds(pid: int) -> float:
    """user + system time of `pid`, plus that of children it has already reaped."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name, which is in parentheses and may contain spaces.
    fields = text.rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def status_bytes(pid: int, field: str) -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM) in bytes; 0 when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int:
    return status_bytes(pid, "VmRSS")


def tree_rss_bytes(pid: int) -> int:
    return sum(rss_bytes(p) for p in tree(pid))


def tree_peak_rss_bytes(pid: int) -> int:
    """Sum of each process's own peak (VmHWM): an upper bound of the tree's peak."""
    return sum(status_bytes(p, "VmHWM") for p in tree(pid))


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in _listdir(Path(f"/proc/{pid}/fd")):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _tcp_sockets(pid: int, state: str) -> list[tuple[int, int]]:
    """(local port, remote port) of `pid`'s IPv4 TCP sockets in `state` (/proc/net/tcp: 01 is
    ESTABLISHED, 0A is LISTEN), matched by inode."""
    inodes = _socket_inodes(pid)
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        # local_address and rem_address are HEX_IP:HEX_PORT; field 9 is the inode.
        if fields[3] == state and fields[9] in inodes:
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            found.append((local, remote))
    return found


def listening_ports(pid: int) -> list[int]:
    """TCP ports `pid` listens on (IPv4)."""
    return sorted(local for local, _ in _tcp_sockets(pid, "0A"))


def connected_to(pid: int, port: int) -> bool:
    """Whether `pid` has an established IPv4 TCP connection to `port`."""
    return any(remote == port for _, remote in _tcp_sockets(pid, "01"))
