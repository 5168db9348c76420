"""What Linux's /proc tells about a server's processes: its workers, their CPU time, peak memory and sockets."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# /proc/net/tcp state codes of sockets that still carry (or owe) a request.
_BUSY_STATES = {"01", "03", "08"}  # ESTABLISHED, SYN_RECV, CLOSE_WAIT
_LISTEN = "0A"


def _stat_fields(pid: int) -> list[str]:
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The PIDs whose parent is `pid` (gunicorn's workers, for its master)."""
    result = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat_fields(int(entry))[1]) == pid:
                    result.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(result)


def alive(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (vanished ones count as 0)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used by a server process and its children (a PostgreSQL postmaster and its backends), the
    children it already reaped included."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    return cpu_seconds([pid, *children(pid)]) + reaped


def peak_memory_kib(pid: int) -> int | None:
    """VmHWM: the most resident memory the process has held (since start or the last reset)."""
    return _status_kib(pid, "VmHWM:")


def rss_kib(pid: int) -> int | None:
    """VmRSS: the resident memory the process holds now."""
    return _status_kib(pid, "VmRSS:")


def _status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_memory(pid: int) -> bool:
    """Restarts VmHWM from the current size (Linux >= 4.0), so the next peak belongs to the next row."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _tcp_sockets() -> list[tuple[int, str, str]]:
    """(local port, state, inode) of every TCP socket in this network namespace."""
    sockets = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            sockets.append((int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]))
    return sockets


def busy_connections(port: int) -> int:
    """Connections to `port` that are open or closed by the client but not yet answered by the server."""
    return sum(1 for local, state, _ in _tcp_sockets() if local == port and state in _BUSY_STATES)


def listening_pids(port: int) -> list[int]:
    """Every process holding the socket that listens on `port` (a gunicorn master and its workers)."""
    inodes = {inode for local, state, inode in _tcp_sockets() if local == port and state == _LISTEN}
    targets = {f"socket:[{inode}]" for inode in inodes}
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") in targets for fd in fds):
                pids.append(int(entry))
        except OSError:
            continue
    return sorted(pids)


def workers_of_listener(port: int) -> list[int]:
    """The worker processes behind `port`: holders of its socket whose parent holds it too."""
    pids = listening_pids(port)
    holders = set(pids)
    workers = []
    for pid in pids:
        try:
            if int(_stat_fields(pid)[1]) in holders:
                workers.append(pid)
        except (OSError, ValueError):
            continue
    return workers or pids
