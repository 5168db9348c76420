"""Who holds a /v5 lease: a process named by its host's boot, its pid and its start time, and whether that
process still lives.

A lease's unserved counters belong to the process that leased them, for as long as it lives: nobody else
ever serves them. Whether the holder still lives decides only what the others answer when the rest of the
space is used up: "retry, numbers are held elsewhere" while it may still serve them, "exhausted" once it
cannot. A process killed with `kill -9` is gone for good; a paused one (SIGSTOP, a debugger) lives, and its
numbers wait for it. The start time tells a pid reused by another process from the holder itself, and the
boot id tells a holder of an earlier boot (every such process is gone). Both come from Linux's /proc; without
it a holder is its pid alone. Processes that share an instance folder must see each other's pids: one host,
one PID namespace (containers sharing a folder share their PID namespace too).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@lru_cache(maxsize=1)
def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "no-boot-id"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None if it is
    gone (a zombie is gone: it serves nothing); "?" where there is no /proc to ask."""
    if not _has_proc():
        return "?"
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


@lru_cache(maxsize=1)
def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


@lru_cache(maxsize=4)
def _holder_of(pid: int) -> str:
    return f"{_boot_id()}:{pid}:{_start_time(pid)}"


def this_holder() -> str:
    """This process's name as a holder (computed once per process: a forked child is another holder)."""
    return _holder_of(os.getpid())


def holder_alive(holder: str) -> bool:
    """Whether the process `holder` names still runs on this host. A holder of another boot does not."""
    boot, pid, started = holder.rsplit(":", 2)
    if boot != _boot_id():
        return False
    if started == "?":
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return _start_time(int(pid)) == started
